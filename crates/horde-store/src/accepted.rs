//! Storing newly accepted requests in batches (the group commit's transaction).
//!
//! Every statement costs a hand-off to the SQLite connection's thread, so a batch is written
//! with a handful of statements whatever its size: one multi-row insert of the requests, one
//! upsert of the day's quota usage, one read of the requesters' balances, one multi-row insert
//! of the activation fees' ledger rows, and one update of the balances. The write-off rule
//! (a debit never takes a balance below its floor) is applied request by request in memory, in
//! acceptance order, exactly as one transaction per request would. The members of a batch of
//! prompts are stored by one call, so they are in the database all together or not at all.

use crate::kinds::StoredKind;
use crate::ledger::{Kind, Posting, HORDE_ACCOUNT};
use crate::{flag, Placeholders};
use crate::{to_json, Result};
use horde_core::accounts::{forgiven_debit, kudos_floor};
use horde_core::request::LiveRequest;
use sqlx::{Any, Row, Transaction};
use std::collections::HashMap;

/// Rows per multi-row statement (SQLite allows 32 766 bound values, PostgreSQL 65 535).
pub(crate) const ROWS_PER_STATEMENT: usize = 500;

pub(crate) async fn insert_accepted<K: StoredKind>(
    tx: &mut Transaction<'_, Any>,
    requests: &[LiveRequest<K>],
) -> Result<()> {
    for chunk in requests.chunks(ROWS_PER_STATEMENT) {
        insert_request_rows(tx, chunk).await?;
    }
    K::add_quota_usage(tx, requests).await?;
    charge_activation_fees(tx, requests).await?;
    let inserted: Vec<(uuid::Uuid, i64)> =
        requests.iter().map(|r| (r.id, r.version as i64)).collect();
    crate::notify::requests_changed(tx, &inserted).await
}

async fn insert_request_rows<K: StoredKind>(
    tx: &mut Transaction<'_, Any>,
    rows: &[LiveRequest<K>],
) -> Result<()> {
    let sql = format!(
        "INSERT INTO requests (id, kind, user_id, body, base_seed, created, seq, priority, \
         n_remaining, jobs_total, job_kudos, consumed_kudos, faulted, cancelled, expiry, \
         can_pay_upfront, shared_key, version, batch_id, batch_index) VALUES {}",
        Placeholders::of(tx).rows(rows.len(), 20)
    );
    let mut insert = sqlx::query(&sql);
    for r in rows {
        insert = insert
            .bind(r.id.to_string())
            .bind(K::NAME)
            .bind(r.user_id)
            .bind(to_json(&r.body))
            .bind(r.base_seed.map(|s| s as i64))
            .bind(r.created)
            .bind(r.seq as i64)
            .bind(r.priority)
            .bind(i64::from(r.n_remaining))
            .bind(i64::from(r.jobs_total))
            .bind(r.job_kudos)
            .bind(r.consumed_kudos)
            .bind(flag(r.faulted))
            .bind(flag(r.cancelled))
            .bind(r.expiry)
            .bind(flag(r.can_pay_upfront))
            .bind(r.shared_key.clone())
            .bind(r.version as i64)
            .bind(r.batch_id.map(|id| id.to_string()))
            .bind(r.batch_id.map(|_| i64::from(r.batch_index)));
    }
    insert.execute(&mut **tx).await?;
    Ok(())
}

/// The activation fee of each request: spent by the requester, burnt by the horde, written off
/// where it would take the requester below their floor; shared keys' budgets charged.
async fn charge_activation_fees<K: StoredKind>(
    tx: &mut Transaction<'_, Any>,
    requests: &[LiveRequest<K>],
) -> Result<()> {
    let paying: Vec<&LiveRequest<K>> = requests.iter().filter(|r| r.consumed_kudos > 0.0).collect();
    if paying.is_empty() {
        return Ok(());
    }
    let mut balances = balances_and_floors(tx, &paying).await?;
    let mut postings: Vec<(i64, Posting)> = Vec::with_capacity(paying.len() * 2);
    for r in &paying {
        let fee = r.consumed_kudos;
        let (balance, floor) = balances.get_mut(&r.user_id).expect("every payer was read");
        let forgiven = forgiven_debit(*balance, fee, *floor);
        *balance += forgiven - fee;
        let with = |account, amount, kind, counterparty| Posting {
            counterparty: Some(counterparty),
            request_id: Some(r.id),
            ..Posting::new(account, amount, kind)
        };
        postings.push((r.created, with(r.user_id, -fee, Kind::Spend, HORDE_ACCOUNT)));
        postings.push((r.created, with(HORDE_ACCOUNT, fee, Kind::Burn, r.user_id)));
        if forgiven > 0.0 {
            postings.push((
                r.created,
                with(r.user_id, forgiven, Kind::Floor, HORDE_ACCOUNT),
            ));
            postings.push((
                r.created,
                with(HORDE_ACCOUNT, -forgiven, Kind::Floor, r.user_id),
            ));
        }
        if let Some(key) = &r.shared_key {
            crate::shared_keys::charge_shared_key(tx, key, fee).await?;
        }
    }
    crate::ledger::post_many(tx, &postings).await
}

/// Each payer's balance and balance floor, read in one statement.
async fn balances_and_floors<K: StoredKind>(
    tx: &mut Transaction<'_, Any>,
    paying: &[&LiveRequest<K>],
) -> Result<HashMap<i64, (f64, f64)>> {
    let mut ids: Vec<i64> = paying.iter().map(|r| r.user_id).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut out = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "SELECT id, CAST(kudos AS DOUBLE PRECISION), oauth_id FROM users WHERE id IN ({})",
            Placeholders::of(tx).list(chunk.len())
        );
        let mut select = sqlx::query(&sql);
        for id in chunk {
            select = select.bind(*id);
        }
        for row in select.fetch_all(&mut **tx).await? {
            let id: i64 = row.try_get(0)?;
            let oauth: String = row.try_get(2)?;
            let floor = kudos_floor(id, crate::users::is_pseudonymous(&oauth));
            out.insert(id, (row.try_get(1)?, floor));
        }
    }
    Ok(out)
}
