//! Users and their keys (stored only as hashes).

use crate::ledger::{self, Kind, Posting, HORDE_ACCOUNT};
use crate::{flag, get_flag, Result, Store, StoreError};
use horde_core::accounts::{User, ANONYMOUS_USER_ID};
use sqlx::any::AnyRow;
use sqlx::Row;

/// A user about to be created.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub username: String,
    pub oauth_id: String,
    pub api_key_hash: String,
    pub moderator: bool,
    pub trusted: bool,
    pub kudos: f64,
    pub created: i64,
}

pub(crate) const USER_COLUMNS: &str =
    "id, username, oauth_id, kudos, moderator, trusted, flagged, customizer, vpn, service, \
    education, public_workers, concurrency, \
    worker_invited, usage_megapixelsteps, usage_requests, contributed_megapixelsteps, fulfilments, \
    usage_tokens, text_requests, contributed_tokens, text_fulfilments, \
    interrogation_requests, interrogation_fulfilments, \
    kudos_accumulated, evaluating_kudos, created, deleted_at, tier";

/// Accounts made without an OAuth identity get a `pseudo_…` id.
pub(crate) fn is_pseudonymous(oauth_id: &str) -> bool {
    oauth_id.starts_with("pseudo_")
}

pub(crate) fn user_from_row(row: &AnyRow) -> Result<User> {
    let oauth: String = row.try_get("oauth_id")?;
    Ok(User {
        id: row.try_get("id")?,
        username: row.try_get("username")?,
        kudos: row.try_get("kudos")?,
        moderator: get_flag(row, "moderator")?,
        trusted: get_flag(row, "trusted")?,
        flagged: get_flag(row, "flagged")?,
        customizer: get_flag(row, "customizer")?,
        vpn: get_flag(row, "vpn")?,
        service: get_flag(row, "service")?,
        education: get_flag(row, "education")?,
        public_workers: get_flag(row, "public_workers")?,
        pseudonymous: is_pseudonymous(&oauth),
        concurrency: row.try_get::<i64, _>("concurrency")? as u32,
        worker_invited: row.try_get::<i64, _>("worker_invited")? as u32,
        usage_megapixelsteps: row.try_get("usage_megapixelsteps")?,
        usage_requests: row.try_get::<i64, _>("usage_requests")? as u64,
        contributed_megapixelsteps: row.try_get("contributed_megapixelsteps")?,
        fulfilments: row.try_get::<i64, _>("fulfilments")? as u64,
        usage_tokens: row.try_get("usage_tokens")?,
        text_requests: row.try_get::<i64, _>("text_requests")? as u64,
        contributed_tokens: row.try_get("contributed_tokens")?,
        text_fulfilments: row.try_get::<i64, _>("text_fulfilments")? as u64,
        interrogation_requests: row.try_get::<i64, _>("interrogation_requests")? as u64,
        interrogation_fulfilments: row.try_get::<i64, _>("interrogation_fulfilments")? as u64,
        kudos_accumulated: row.try_get("kudos_accumulated")?,
        evaluating_kudos: row.try_get("evaluating_kudos")?,
        created: row.try_get("created")?,
        deleted_at: row.try_get("deleted_at")?,
        tier: row.try_get("tier")?,
    })
}

impl Store {
    /// Makes sure the anonymous user (id 0) exists with the given key hash.
    pub async fn ensure_anonymous(&self, key_hash: &str, now: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO users (id, username, oauth_id, api_key_hash, kudos, concurrency, created) \
             VALUES ($1, 'Anonymous', 'anon', $2, 0, 500, $3) \
             ON CONFLICT(id) DO UPDATE SET api_key_hash = excluded.api_key_hash",
        )
        .bind(ANONYMOUS_USER_ID)
        .bind(key_hash)
        .bind(now)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Creates a user; their starting kudos are a grant from the horde in the ledger.
    pub async fn create_user(&self, new: &NewUser) -> Result<User> {
        let mut tx = self.writer.begin().await?;
        let id: i64 = sqlx::query(
            "INSERT INTO users (username, oauth_id, api_key_hash, moderator, trusted, kudos, created) \
             VALUES ($1, $2, $3, $4, $5, 0, $6) RETURNING id",
        )
        .bind(&new.username)
        .bind(&new.oauth_id)
        .bind(&new.api_key_hash)
        .bind(flag(new.moderator))
        .bind(flag(new.trusted))
        .bind(new.created)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| StoreError::unique(e, "oauth id"))?
        .try_get(0)?;
        ledger::post(&mut tx, new.created, &grant(id, new.kudos, Kind::Grant)).await?;
        tx.commit().await?;
        self.user_by_id(id)
            .await?
            .ok_or_else(|| StoreError::Corrupt("user vanished after insert".into()))
    }

    pub async fn user_by_id(&self, id: i64) -> Result<Option<User>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    pub async fn user_by_key_hash(&self, hash: &str) -> Result<Option<User>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE api_key_hash = $1");
        let row = sqlx::query(&sql)
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    pub async fn user_by_oauth_id(&self, oauth_id: &str) -> Result<Option<User>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE oauth_id = $1");
        let row = sqlx::query(&sql)
            .bind(oauth_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    /// Replaces a user's key hash and roles and sets their balance (the test-user endpoint's
    /// "rotate" path); the change of balance is a grant in the ledger.
    pub async fn reset_user(
        &self,
        id: i64,
        key_hash: &str,
        moderator: bool,
        trusted: bool,
        kudos: f64,
        now: i64,
    ) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        let old: f64 = sqlx::query("SELECT kudos FROM users WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        sqlx::query(
            "UPDATE users SET api_key_hash = $1, moderator = $2, trusted = $3 WHERE id = $4",
        )
        .bind(key_hash)
        .bind(flag(moderator))
        .bind(flag(trusted))
        .bind(id)
        .execute(&mut *tx)
        .await?;
        ledger::post(&mut tx, now, &grant(id, kudos - old, Kind::Grant)).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Stores what `PUT /users/{id}` may change: name, roles, limits, tier (not the balance).
    pub async fn save_user_settings(&self, u: &User) -> Result<()> {
        sqlx::query(
            "UPDATE users SET username = $1, moderator = $2, trusted = $3, flagged = $4, customizer = $5, \
             vpn = $6, service = $7, education = $8, public_workers = $9, concurrency = $10, \
             worker_invited = $11, tier = $12 WHERE id = $13",
        )
        .bind(&u.username)
        .bind(flag(u.moderator))
        .bind(flag(u.trusted))
        .bind(flag(u.flagged))
        .bind(flag(u.customizer))
        .bind(flag(u.vpn))
        .bind(flag(u.service))
        .bind(flag(u.education))
        .bind(flag(u.public_workers))
        .bind(i64::from(u.concurrency))
        .bind(i64::from(u.worker_invited))
        .bind(&u.tier)
        .bind(u.id)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// An administrator's change of a balance: a grant from (or back to) the horde.
    pub async fn award_kudos(&self, user_id: i64, amount: f64, at: i64) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        ledger::post(&mut tx, at, &grant(user_id, amount, Kind::Grant)).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Kudos from the horde that an administrator awarded (`POST /kudos/award`), shown as
    /// `kudos_details.awarded` rather than as an operator's grant.
    pub async fn administrator_award(&self, user_id: i64, amount: f64, at: i64) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        ledger::post(&mut tx, at, &grant(user_id, amount, Kind::Award)).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Moves everything a user holds in escrow into their balance (they became trusted).
    pub async fn release_escrow(&self, user_id: i64, at: i64) -> Result<f64> {
        let mut tx = self.writer.begin().await?;
        let held: f64 = sqlx::query(
            "SELECT CAST(evaluating_kudos AS DOUBLE PRECISION) FROM users WHERE id = $1",
        )
        .bind(user_id)
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        if held != 0.0 {
            let out_of_escrow = Posting::new(user_id, -held, Kind::Release).in_escrow();
            let into_balance = Posting::new(user_id, held, Kind::Release);
            ledger::post(&mut tx, at, &[out_of_escrow, into_balance]).await?;
        }
        tx.commit().await?;
        Ok(held)
    }

    /// Replaces a user's API key (the old one stops working at once).
    pub async fn replace_key_hash(&self, user_id: i64, key_hash: &str) -> Result<()> {
        sqlx::query("UPDATE users SET api_key_hash = $1 WHERE id = $2")
            .bind(key_hash)
            .bind(user_id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    pub async fn user_count(&self) -> Result<i64> {
        Ok(sqlx::query("SELECT COUNT(*) FROM users")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?)
    }
}

/// A grant of `amount` from the horde to `user_id` (negative to take kudos away), posted as
/// `kind`.
fn grant(user_id: i64, amount: f64, kind: Kind) -> [Posting; 2] {
    [
        Posting {
            counterparty: Some(HORDE_ACCOUNT),
            ..Posting::new(user_id, amount, kind)
        },
        Posting {
            counterparty: Some(user_id),
            ..Posting::new(HORDE_ACCOUNT, -amount, kind)
        },
    ]
}
