//! Storing newly accepted requests in batches (the group commit's transaction).
//!
//! Every statement costs a hand-off to the SQLite connection's thread, so a batch is written
//! with a handful of statements whatever its size: one multi-row insert of the requests, one
//! upsert of the day's quota usage, one read of the requesters' balances, one multi-row insert
//! of the activation fees' ledger rows, and one update of the balances. The write-off rule
//! (a debit never takes a balance below its floor) is applied request by request in memory, in
//! acceptance order, exactly as one transaction per request would.

use crate::ledger::{Kind, Posting, HORDE_ACCOUNT};
use crate::{to_json, Result};
use horde_core::accounts::{forgiven_debit, kudos_floor};
use horde_core::quota::day_of;
use horde_core::request::LiveRequest;
use sqlx::{QueryBuilder, Row, Sqlite, Transaction};
use std::collections::{BTreeMap, HashMap};

/// Rows per multi-row statement (SQLite allows 32 766 bound values).
const ROWS_PER_STATEMENT: usize = 500;

pub(crate) async fn insert_accepted(
    tx: &mut Transaction<'_, Sqlite>,
    requests: &[LiveRequest],
) -> Result<()> {
    for chunk in requests.chunks(ROWS_PER_STATEMENT) {
        insert_request_rows(tx, chunk).await?;
    }
    add_quota_usage(tx, requests).await?;
    charge_activation_fees(tx, requests).await
}

async fn insert_request_rows(tx: &mut Transaction<'_, Sqlite>, rows: &[LiveRequest]) -> Result<()> {
    let mut insert = QueryBuilder::<Sqlite>::new(
        "INSERT INTO requests (id, user_id, body, base_seed, created, seq, priority, n_remaining, \
         jobs_total, job_kudos, consumed_kudos, faulted, cancelled, expiry, can_pay_upfront, \
         shared_key) ",
    );
    insert.push_values(rows, |mut row, r| {
        row.push_bind(r.id.to_string())
            .push_bind(r.user_id)
            .push_bind(to_json(&r.body))
            .push_bind(r.base_seed.map(|s| s as i64))
            .push_bind(r.created)
            .push_bind(r.seq as i64)
            .push_bind(r.priority)
            .push_bind(i64::from(r.n_remaining))
            .push_bind(i64::from(r.jobs_total))
            .push_bind(r.job_kudos)
            .push_bind(r.consumed_kudos)
            .push_bind(r.faulted)
            .push_bind(r.cancelled)
            .push_bind(r.expiry)
            .push_bind(r.can_pay_upfront)
            .push_bind(r.shared_key.clone());
    });
    insert.build().execute(&mut **tx).await?;
    Ok(())
}

/// Adds the images and megapixelsteps requested to each requester's usage of the day.
async fn add_quota_usage(tx: &mut Transaction<'_, Sqlite>, requests: &[LiveRequest]) -> Result<()> {
    let mut usage: BTreeMap<(i64, i64), (i64, f64)> = BTreeMap::new();
    for r in requests {
        let entry = usage.entry((r.user_id, day_of(r.created))).or_default();
        entry.0 += i64::from(r.jobs_total);
        entry.1 += r.megapixelsteps_requested();
    }
    let rows: Vec<_> = usage.into_iter().collect();
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut upsert = QueryBuilder::<Sqlite>::new(
            "INSERT INTO quota_usage (user_id, day, images, megapixelsteps) ",
        );
        upsert.push_values(chunk, |mut row, ((user, day), (images, mps))| {
            row.push_bind(*user)
                .push_bind(*day)
                .push_bind(*images)
                .push_bind(*mps);
        });
        upsert.push(
            " ON CONFLICT(user_id, day) DO UPDATE SET images = images + excluded.images, \
             megapixelsteps = megapixelsteps + excluded.megapixelsteps",
        );
        upsert.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// The activation fee of each request: spent by the requester, burnt by the horde, written off
/// where it would take the requester below their floor; shared keys' budgets charged.
async fn charge_activation_fees(
    tx: &mut Transaction<'_, Sqlite>,
    requests: &[LiveRequest],
) -> Result<()> {
    let paying: Vec<&LiveRequest> = requests.iter().filter(|r| r.consumed_kudos > 0.0).collect();
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
async fn balances_and_floors(
    tx: &mut Transaction<'_, Sqlite>,
    paying: &[&LiveRequest],
) -> Result<HashMap<i64, (f64, f64)>> {
    let mut ids: Vec<i64> = paying.iter().map(|r| r.user_id).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut out = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(ROWS_PER_STATEMENT) {
        let mut select = QueryBuilder::<Sqlite>::new(
            "SELECT id, CAST(kudos AS REAL), oauth_id FROM users WHERE id IN (",
        );
        let mut list = select.separated(", ");
        for id in chunk {
            list.push_bind(*id);
        }
        select.push(")");
        for row in select.build().fetch_all(&mut **tx).await? {
            let id: i64 = row.try_get(0)?;
            let oauth: String = row.try_get(2)?;
            let floor = kudos_floor(id, crate::users::is_pseudonymous(&oauth));
            out.insert(id, (row.try_get(1)?, floor));
        }
    }
    Ok(out)
}
