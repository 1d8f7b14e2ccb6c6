//! The kudos ledger: every movement of kudos is an append-only row, written in the same
//! transaction as the balance it changes, so that balances can always be checked against it.
//!
//! Movements are double-entry: each group of postings sums to zero. The horde itself is the
//! account [`HORDE_ACCOUNT`]; it grants starting kudos and receives the burn (the part of a
//! requester's charge that is not paid to the worker).

use crate::{flag, Placeholders, Result, Store};
use horde_api::user::LedgerEntry;
use sqlx::Row;
use uuid::Uuid;

/// The horde's own account in the ledger (no user has this id).
pub const HORDE_ACCOUNT: i64 = -1;

/// What a posting is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Starting kudos of a new account, or a change an operator made to a balance.
    Grant,
    /// A requester paying for a delivered image.
    Spend,
    /// A worker's owner paid for a delivered image.
    Earn,
    /// What the horde keeps of a charge (negative when it pays a reward nobody was charged
    /// for, such as a censored image).
    Burn,
    /// Kudos given back to a requester.
    Refund,
    /// A user-to-user transfer (`POST /kudos/transfer`).
    Transfer,
    /// A debit below the balance floor, written off by the horde.
    Floor,
    /// A worker's owner paid for its time online.
    Uptime,
    /// Kudos leaving escrow for the balance (the owner became trusted).
    Release,
    /// Kudos an administrator awarded (`POST /kudos/award`): `kudos_details.awarded`.
    Award,
    /// A style's owner paid the style's fee by a requester using it: `kudos_details.styled`.
    Styled,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Grant => "grant",
            Kind::Spend => "spend",
            Kind::Earn => "earn",
            Kind::Burn => "burn",
            Kind::Refund => "refund",
            Kind::Transfer => "transfer",
            Kind::Floor => "floor",
            Kind::Uptime => "uptime",
            Kind::Release => "release",
            Kind::Award => "award",
            Kind::Styled => "styled",
        }
    }
}

/// One row to append.
#[derive(Debug, Clone)]
pub struct Posting {
    pub account: i64,
    pub amount: f64,
    pub kind: Kind,
    pub counterparty: Option<i64>,
    pub request_id: Option<Uuid>,
    pub job_id: Option<Uuid>,
    /// Held in the account's escrow (`evaluating_kudos`), not its balance.
    pub escrow: bool,
}

impl Posting {
    pub fn new(account: i64, amount: f64, kind: Kind) -> Posting {
        Posting {
            account,
            amount,
            kind,
            counterparty: None,
            request_id: None,
            job_id: None,
            escrow: false,
        }
    }

    /// This posting, held in escrow instead of the balance.
    pub fn in_escrow(self) -> Posting {
        Posting {
            escrow: true,
            ..self
        }
    }
}

/// An uptime payment: see [`Store::reward_uptime`].
#[derive(Debug, Clone, Copy)]
pub struct UptimeReward {
    pub worker_id: Uuid,
    pub owner_id: i64,
    pub kudos: f64,
    pub escrow: bool,
    /// Uptime (seconds) paid for before this payment.
    pub from: u64,
    /// Uptime paid for after it.
    pub until: u64,
    pub at: i64,
}

/// Sums of the ledger by kind: (users' accounts, the horde's account).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LedgerTotals {
    pub by_kind: std::collections::BTreeMap<String, (f64, f64)>,
}

impl LedgerTotals {
    /// The sum of `kind` on users' accounts.
    pub fn users(&self, kind: Kind) -> f64 {
        self.by_kind.get(kind.as_str()).map_or(0.0, |t| t.0)
    }
    /// The sum of `kind` on the horde's account.
    pub fn horde(&self, kind: Kind) -> f64 {
        self.by_kind.get(kind.as_str()).map_or(0.0, |t| t.1)
    }
}

/// A user whose balance is not the sum of their ledger rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Discrepancy {
    pub user_id: i64,
    pub balance: f64,
    pub ledger: f64,
    pub escrow: f64,
    pub escrow_ledger: f64,
}

/// Appends postings and applies them to the balances of the users they name (the horde
/// account has no balance row).
pub(crate) async fn post(
    conn: &mut sqlx::AnyConnection,
    at: i64,
    postings: &[Posting],
) -> Result<()> {
    let timed: Vec<(i64, Posting)> = postings.iter().map(|p| (at, p.clone())).collect();
    post_many(conn, &timed).await
}

/// Appends postings, each with its own time, and applies them to the balances of the users
/// they name, in a few statements: one multi-row insert of the rows, and one update of each
/// changed balance column.
pub(crate) async fn post_many(
    conn: &mut sqlx::AnyConnection,
    postings: &[(i64, Posting)],
) -> Result<()> {
    /// Rows per statement: 8 bound values each, under SQLite's 32 766.
    const ROWS: usize = 500;
    let rows: Vec<&(i64, Posting)> = postings.iter().filter(|(_, p)| p.amount != 0.0).collect();
    for chunk in rows.chunks(ROWS) {
        let sql = format!(
            "INSERT INTO kudos_ledger (at, account, amount, kind, counterparty, request_id, job_id, \
             escrow) VALUES {}",
            Placeholders::of(conn).rows(chunk.len(), 8)
        );
        let mut insert = sqlx::query(&sql);
        for (at, p) in chunk {
            insert = insert
                .bind(*at)
                .bind(p.account)
                .bind(p.amount)
                .bind(p.kind.as_str())
                .bind(p.counterparty)
                .bind(p.request_id.map(|id| id.to_string()))
                .bind(p.job_id.map(|id| id.to_string()))
                .bind(flag(p.escrow));
        }
        insert.execute(&mut *conn).await?;
    }
    for (escrow, column) in [(false, "kudos"), (true, "evaluating_kudos")] {
        let mut changes: std::collections::BTreeMap<i64, f64> = Default::default();
        for (_, p) in &rows {
            if p.account != HORDE_ACCOUNT && p.escrow == escrow {
                *changes.entry(p.account).or_default() += p.amount;
            }
        }
        let changes: Vec<(i64, f64)> = changes.into_iter().collect();
        for chunk in changes.chunks(ROWS) {
            // CASE id WHEN a THEN b ... END WHERE id IN (a, c, ...)
            let mut marks = Placeholders::of(conn);
            let cases: String = chunk
                .iter()
                .map(|_| format!(" WHEN {} THEN {}", marks.next(), marks.next()))
                .collect();
            let ids = marks.list(chunk.len());
            let sql = format!(
                "UPDATE users SET {column} = {column} + CASE id{cases} END WHERE id IN ({ids})"
            );
            let mut update = sqlx::query(&sql);
            for (id, amount) in chunk {
                update = update.bind(*id).bind(*amount);
            }
            for (id, _) in chunk {
                update = update.bind(*id);
            }
            update.execute(&mut *conn).await?;
        }
    }
    Ok(())
}

/// Where a user's kudos came from and went, summed from their ledger rows.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct KudosFlows {
    /// Kudos sent to other users.
    pub gifted: f64,
    /// Kudos sent to education accounts.
    pub donated: f64,
    /// Kudos received from other users.
    pub received: f64,
    /// Starting kudos and changes operators made.
    pub admin: f64,
    /// Uptime rewards (paid out or in escrow) and administrators' awards.
    pub awarded: f64,
    /// Fees earned from others' use of one's styles.
    pub styled: f64,
}

impl Store {
    /// The transfers, grants and awards in `user_id`'s ledger.
    pub async fn kudos_flows(&self, user_id: i64) -> Result<KudosFlows> {
        // Kudos sent to an education account count as donated, as on the public horde.
        let rows = sqlx::query(
            "SELECT l.kind, \
             CAST(COALESCE(SUM(CASE WHEN l.amount > 0 THEN l.amount END), 0) AS DOUBLE PRECISION), \
             CAST(COALESCE(SUM(CASE WHEN l.amount < 0 AND COALESCE(u.education, 0) = 0 \
                 THEN -l.amount END), 0) AS DOUBLE PRECISION), \
             CAST(COALESCE(SUM(CASE WHEN l.amount < 0 AND u.education = 1 \
                 THEN -l.amount END), 0) AS DOUBLE PRECISION) \
             FROM kudos_ledger l LEFT JOIN users u ON u.id = l.counterparty \
             WHERE l.account = $1 AND l.kind IN ('transfer', 'grant', 'uptime', 'award', 'styled') GROUP BY l.kind",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        let mut flows = KudosFlows::default();
        for row in rows {
            let kind: String = row.try_get(0)?;
            let (inflow, outflow, to_education): (f64, f64, f64) =
                (row.try_get(1)?, row.try_get(2)?, row.try_get(3)?);
            match kind.as_str() {
                "transfer" => {
                    (flows.received, flows.gifted, flows.donated) = (inflow, outflow, to_education)
                }
                "grant" => flows.admin = inflow - outflow - to_education,
                "styled" => flows.styled = inflow - outflow - to_education,
                // Uptime and awards both show as `awarded`, as on the public horde.
                _ => flows.awarded += inflow - outflow - to_education,
            }
        }
        Ok(flows)
    }

    /// The newest `limit` rows of `account`'s ledger with an id below `before`, newest first.
    pub async fn ledger_entries(
        &self,
        account: i64,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<LedgerEntry>> {
        let rows = sqlx::query(
            "SELECT id, at, CAST(amount AS DOUBLE PRECISION), kind, counterparty, request_id, escrow \
             FROM kudos_ledger WHERE account = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
        )
        .bind(account)
        .bind(before.unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(LedgerEntry {
                    id: row.try_get(0)?,
                    at: row.try_get(1)?,
                    amount: row.try_get(2)?,
                    kind: row.try_get(3)?,
                    counterparty: row.try_get(4)?,
                    request_id: row.try_get(5)?,
                    escrow: row.try_get::<i64, _>(6)? != 0,
                })
            })
            .collect()
    }

    /// Users whose balance differs from the sum of their ledger rows by more than rounding.
    pub async fn ledger_discrepancies(&self) -> Result<Vec<Discrepancy>> {
        let rows = sqlx::query(
            "SELECT u.id, CAST(u.kudos AS DOUBLE PRECISION), \
             CAST(COALESCE(SUM(CASE WHEN l.escrow = 0 THEN l.amount END), 0) AS DOUBLE PRECISION), \
             CAST(u.evaluating_kudos AS DOUBLE PRECISION), \
             CAST(COALESCE(SUM(CASE WHEN l.escrow = 1 THEN l.amount END), 0) AS DOUBLE PRECISION) \
             FROM users u LEFT JOIN kudos_ledger l ON l.account = u.id GROUP BY u.id",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut off = Vec::new();
        for row in rows {
            let d = Discrepancy {
                user_id: row.try_get(0)?,
                balance: row.try_get(1)?,
                ledger: row.try_get(2)?,
                escrow: row.try_get(3)?,
                escrow_ledger: row.try_get(4)?,
            };
            if (d.balance - d.ledger).abs() > 1e-6 || (d.escrow - d.escrow_ledger).abs() > 1e-6 {
                off.push(d);
            }
        }
        Ok(off)
    }

    /// The sums of the postings of each kind, on users' accounts and on the horde's.
    pub async fn ledger_totals(&self) -> Result<LedgerTotals> {
        let rows = sqlx::query(
            "SELECT kind, \
             CAST(COALESCE(SUM(CASE WHEN account <> $1 THEN amount END), 0) AS DOUBLE PRECISION), \
             CAST(COALESCE(SUM(CASE WHEN account = $2 THEN amount END), 0) AS DOUBLE PRECISION) \
             FROM kudos_ledger GROUP BY kind ORDER BY kind",
        )
        .bind(HORDE_ACCOUNT)
        .bind(HORDE_ACCOUNT)
        .fetch_all(&self.pool)
        .await?;
        let by_kind = rows
            .iter()
            .map(|r| Ok((r.try_get(0)?, (r.try_get(1)?, r.try_get(2)?))))
            .collect::<Result<_>>()?;
        Ok(LedgerTotals { by_kind })
    }

    /// When `from` last transferred kudos to `to`, if ever (unix seconds).
    pub async fn last_transfer(&self, from: i64, to: i64) -> Result<Option<i64>> {
        Ok(sqlx::query(
            "SELECT MAX(at) FROM kudos_ledger WHERE account = $1 AND counterparty = $2 \
             AND kind = 'transfer' AND amount < 0",
        )
        .bind(from)
        .bind(to)
        .fetch_one(&self.pool)
        .await?
        .try_get(0)?)
    }

    /// Pays a worker's owner for its uptime from `reward.from` to `reward.until` (in escrow
    /// for untrusted owners) and records it on the worker, unless that uptime was paid
    /// already (by another coordinator sharing the database): then nothing moves and the
    /// answer is `false`.
    pub async fn reward_uptime(&self, reward: &UptimeReward) -> Result<bool> {
        let UptimeReward {
            worker_id,
            owner_id,
            kudos,
            escrow,
            from,
            until,
            at,
        } = *reward;
        let mut tx = self.writer.begin().await?;
        let paid = sqlx::query(
            "UPDATE workers SET kudos_uptime = kudos_uptime + $1, uptime_rewarded = $2 \
             WHERE id = $3 AND uptime_rewarded = $4",
        )
        .bind(kudos)
        .bind(until as i64)
        .bind(worker_id.to_string())
        .bind(from as i64)
        .execute(&mut *tx)
        .await?;
        if paid.rows_affected() == 0 {
            return Ok(false);
        }
        let to_owner = Posting {
            counterparty: Some(HORDE_ACCOUNT),
            ..Posting::new(owner_id, kudos, Kind::Uptime)
        };
        let to_owner = if escrow {
            to_owner.in_escrow()
        } else {
            to_owner
        };
        let from_horde = Posting {
            counterparty: Some(owner_id),
            ..Posting::new(HORDE_ACCOUNT, -kudos, Kind::Uptime)
        };
        post(&mut tx, at, &[to_owner, from_horde]).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Moves `amount` from one user to another, in one transaction.
    pub async fn transfer_kudos(&self, from: i64, to: i64, amount: f64, at: i64) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        let out = Posting {
            counterparty: Some(to),
            ..Posting::new(from, -amount, Kind::Transfer)
        };
        let into = Posting {
            counterparty: Some(from),
            ..Posting::new(to, amount, Kind::Transfer)
        };
        post(&mut tx, at, &[out, into]).await?;
        tx.commit().await?;
        Ok(())
    }
}
