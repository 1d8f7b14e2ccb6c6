//! Users and their keys (stored only as hashes).

use crate::{Result, Store, StoreError};
use horde_core::accounts::{User, ANONYMOUS_USER_ID};
use sqlx::sqlite::SqliteRow;
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

const USER_COLUMNS: &str =
    "id, username, oauth_id, kudos, moderator, trusted, flagged, concurrency, \
    worker_invited, usage_megapixelsteps, usage_requests, contributed_megapixelsteps, fulfilments, \
    kudos_accumulated, created";

fn user_from_row(row: &SqliteRow) -> Result<User> {
    let oauth: String = row.try_get("oauth_id")?;
    Ok(User {
        id: row.try_get("id")?,
        username: row.try_get("username")?,
        kudos: row.try_get("kudos")?,
        moderator: row.try_get("moderator")?,
        trusted: row.try_get("trusted")?,
        flagged: row.try_get("flagged")?,
        pseudonymous: oauth.starts_with("pseudo_"),
        concurrency: row.try_get::<i64, _>("concurrency")? as u32,
        worker_invited: row.try_get::<i64, _>("worker_invited")? as u32,
        usage_megapixelsteps: row.try_get("usage_megapixelsteps")?,
        usage_requests: row.try_get::<i64, _>("usage_requests")? as u64,
        contributed_megapixelsteps: row.try_get("contributed_megapixelsteps")?,
        fulfilments: row.try_get::<i64, _>("fulfilments")? as u64,
        kudos_accumulated: row.try_get("kudos_accumulated")?,
        created: row.try_get("created")?,
    })
}

impl Store {
    /// Makes sure the anonymous user (id 0) exists with the given key hash.
    pub async fn ensure_anonymous(&self, key_hash: &str, now: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO users (id, username, oauth_id, api_key_hash, kudos, concurrency, created) \
             VALUES (?, 'Anonymous', 'anon', ?, 0, 500, ?) \
             ON CONFLICT(id) DO UPDATE SET api_key_hash = excluded.api_key_hash",
        )
        .bind(ANONYMOUS_USER_ID)
        .bind(key_hash)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn create_user(&self, new: &NewUser) -> Result<User> {
        let id: i64 = sqlx::query(
            "INSERT INTO users (username, oauth_id, api_key_hash, moderator, trusted, kudos, created) \
             VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(&new.username)
        .bind(&new.oauth_id)
        .bind(&new.api_key_hash)
        .bind(new.moderator)
        .bind(new.trusted)
        .bind(new.kudos)
        .bind(new.created)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| StoreError::unique(e, "oauth id"))?
        .try_get(0)?;
        self.user_by_id(id)
            .await?
            .ok_or_else(|| StoreError::Corrupt("user vanished after insert".into()))
    }

    pub async fn user_by_id(&self, id: i64) -> Result<Option<User>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    pub async fn user_by_key_hash(&self, hash: &str) -> Result<Option<User>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE api_key_hash = ?");
        let row = sqlx::query(&sql)
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    pub async fn user_by_oauth_id(&self, oauth_id: &str) -> Result<Option<User>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE oauth_id = ?");
        let row = sqlx::query(&sql)
            .bind(oauth_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    /// Replaces a user's key hash and roles (the test-user endpoint's "rotate" path).
    pub async fn reset_user(
        &self,
        id: i64,
        key_hash: &str,
        moderator: bool,
        trusted: bool,
        kudos: f64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE users SET api_key_hash = ?, moderator = ?, trusted = ?, kudos = ? WHERE id = ?",
        )
        .bind(key_hash)
        .bind(moderator)
        .bind(trusted)
        .bind(kudos)
        .bind(id)
        .execute(&self.pool)
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
