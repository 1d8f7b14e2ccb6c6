//! Persistence: users, workers, requests and jobs in an embedded SQLite database.
//!
//! The coordinator keeps live requests in memory for matching (horde-core's `Queue`); this crate
//! makes every accepted change durable before it is acknowledged, and loads the live state back
//! after a restart. It decides nothing: SQL here only stores and fetches.
//!
//! SQLite runs in WAL mode with `synchronous = NORMAL`: a committed transaction survives the
//! process being killed; `synchronous = FULL` (config) also survives power loss, at a cost.

mod accepted;
pub mod ledger;
mod prompt_filters;
mod requests;
mod shared_keys;
pub mod stats;
mod users;
mod workers;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

pub use requests::SubmitEffects;
pub use users::NewUser;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("a row with this {0} already exists")]
    Duplicate(&'static str),
}

impl StoreError {
    /// Maps a unique-constraint violation to [`StoreError::Duplicate`].
    fn unique(err: sqlx::Error, what: &'static str) -> StoreError {
        match &err {
            sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Duplicate(what),
            _ => StoreError::Database(err),
        }
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// How hard SQLite works to make a commit durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Survives the process being killed (WAL, synchronous NORMAL).
    #[default]
    Normal,
    /// Also survives power loss (synchronous FULL).
    Full,
}

/// The database handle; cheap to clone.
///
/// Writes go through one connection (`writer`): SQLite admits one writer at a time, and writers
/// queued in the pool wait their turn without the busy-retry sleeps (1, 2, 5, 10 ... ms) that
/// several writing connections cost each other. Reads use `pool`, which WAL lets run beside
/// the writer.
#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
    writer: SqlitePool,
}

impl Store {
    /// Opens (creating if missing) the database file and applies migrations.
    pub async fn open(path: &Path, durability: Durability) -> Result<Store> {
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match durability {
                Durability::Normal => SqliteSynchronous::Normal,
                Durability::Full => SqliteSynchronous::Full,
            })
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./migrations").run(&writer).await?;
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        Ok(Store { pool, writer })
    }

    /// The journal mode in force ("wal" after [`Store::open`]).
    pub async fn journal_mode(&self) -> Result<String> {
        let row = sqlx::query("PRAGMA journal_mode")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<String, _>(0)?)
    }

    /// A persistent setting, created with `init` the first time it is asked for.
    pub async fn setting_or_init(
        &self,
        key: &str,
        init: impl FnOnce() -> String,
    ) -> Result<String> {
        if let Some(row) = sqlx::query("SELECT value FROM settings WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?
        {
            return Ok(row.try_get("value")?);
        }
        let value = init();
        sqlx::query("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT(key) DO NOTHING")
            .bind(key)
            .bind(&value)
            .execute(&self.writer)
            .await?;
        let row = sqlx::query("SELECT value FROM settings WHERE key = ?")
            .bind(key)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("value")?)
    }

    pub async fn close(&self) {
        self.pool.close().await;
        self.writer.close().await;
    }
}

fn parse_uuid(text: &str) -> Result<uuid::Uuid> {
    uuid::Uuid::parse_str(text).map_err(|e| StoreError::Corrupt(format!("bad uuid {text}: {e}")))
}

fn parse_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("bad json: {e}")))
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("domain types serialise")
}
