//! Persistence: users, workers, requests and jobs, in an embedded SQLite database (one
//! coordinator) or PostgreSQL (several coordinators sharing it).
//!
//! The coordinator keeps live requests in memory for matching (horde-core's `Queue`); this crate
//! makes every accepted change durable before it is acknowledged, and loads the live state back
//! after a restart. It decides nothing: SQL here only stores and fetches.
//!
//! SQLite runs in WAL mode with `synchronous = NORMAL`: a committed transaction survives the
//! process being killed; `synchronous = FULL` (config) also survives power loss, at a cost.
//! PostgreSQL's durability is the server's. Each request row carries a version, and every
//! write of it is conditional on the version the writer read, so coordinators sharing
//! PostgreSQL never overwrite each other's changes (`StoreError::Conflict`).

mod accepted;
pub mod admin;
mod images;
mod invites;
mod ip_timeouts;
mod kinds;
mod lease;
pub mod ledger;
pub mod messages;
mod modes;
pub mod notify;
mod prompt_filters;
mod rate_windows;
pub mod ratings;
mod requests;
mod shared_keys;
mod sources;
pub mod stats;
pub mod styles;
pub mod teams;
mod users;
mod webhooks;
mod workers;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Connection, Executor, Row};
use std::path::Path;
use std::sync::{Arc, Once};
use std::time::Duration;

pub use kinds::StoredKind;
pub use lease::Lease;
pub use requests::SubmitEffects;
pub use users::NewUser;
pub use webhooks::WebhookDelivery;

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
    /// Another coordinator changed request {0} since this one read it: reload it and retry.
    #[error("request {0} was changed by another coordinator")]
    Conflict(uuid::Uuid),
    /// Another coordinator wrote worker {0}'s reputation since this one read it.
    #[error("the reputation of worker {0} was changed by another coordinator")]
    WorkerConflict(uuid::Uuid),
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

/// Which database engine a [`Store`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// An embedded SQLite file: one coordinator process.
    Sqlite,
    /// A PostgreSQL server: one or several coordinator processes.
    Postgres,
}

/// Where the database is: a SQLite file, or a PostgreSQL server's URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    SqliteFile(std::path::PathBuf),
    Postgres(String),
}

impl Location {
    /// A `postgres://` or `postgresql://` URL is PostgreSQL; anything else is a SQLite file
    /// path (a `sqlite://` prefix is allowed).
    pub fn parse(text: &str) -> Location {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            Location::Postgres(text.to_string())
        } else {
            let path = text.strip_prefix("sqlite://").unwrap_or(text);
            Location::SqliteFile(path.into())
        }
    }

    /// The location with any password replaced, for logs and messages.
    pub fn redacted(&self) -> String {
        match self {
            Location::SqliteFile(path) => path.display().to_string(),
            Location::Postgres(url) => redact_password(url),
        }
    }
}

fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((credentials, host)) => match credentials.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// The database handle; cheap to clone.
///
/// Every query is written once, for sqlx's `Any` driver, in the SQL that SQLite and PostgreSQL
/// share (`$N` placeholders, BIGINT flags, `DOUBLE PRECISION` casts); the schemas are twins
/// (`migrations/sqlite`, `migrations/postgres`).
///
/// On SQLite, writes go through one connection (`writer`): SQLite admits one writer at a
/// time, and writers queued in the pool wait their turn without the busy-retry sleeps (1, 2,
/// 5, 10 ... ms) that several writing connections cost each other. Reads use `pool`, which WAL
/// lets run beside the writer. On PostgreSQL both are the same pool, which arbitrates.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    writer: AnyPool,
    backend: Backend,
    /// SQLite: the background checkpointer, stopped when the last clone is dropped.
    _checkpointer: Option<Arc<Checkpointer>>,
}

/// The writer's own checkpoint threshold, in WAL pages: only a safety net. SQLite's default
/// (1 000 pages) made the committing writer copy the WAL into the database itself, 6 % of the
/// coordinator's time under load, with every request waiting behind it (BENCHMARKS.md).
const WRITER_AUTOCHECKPOINT_PAGES: u32 = 10_000;

/// How often the background checkpointer copies the WAL into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// A task that checkpoints the WAL from a reading connection (`PASSIVE`: it waits for no one),
/// off the writer's path; aborted on drop.
struct Checkpointer(tokio::task::JoinHandle<()>);

impl Checkpointer {
    fn start(pool: AnyPool) -> Checkpointer {
        Checkpointer(tokio::spawn(async move {
            loop {
                tokio::time::sleep(CHECKPOINT_EVERY).await;
                // A failed checkpoint is tried again at the next tick; the writer's own
                // threshold is the safety net.
                let _ = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                    .execute(&pool)
                    .await;
            }
        }))
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Connections to a PostgreSQL server per coordinator process.
const POSTGRES_CONNECTIONS: u32 = 16;

impl Store {
    /// Opens (creating a SQLite file if missing) the database and applies migrations.
    pub async fn open(location: &Location, durability: Durability) -> Result<Store> {
        static DRIVERS: Once = Once::new();
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        match location {
            Location::SqliteFile(path) => Store::open_sqlite(path, durability).await,
            Location::Postgres(url) => Store::open_postgres(url).await,
        }
    }

    async fn open_sqlite(path: &Path, durability: Durability) -> Result<Store> {
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let synchronous = match durability {
            Durability::Normal => "NORMAL",
            Durability::Full => "FULL",
        };
        let pragmas = format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous}; \
             PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;"
        );
        let options = |connections, extra: &str| {
            let pragmas = format!("{pragmas} {extra}");
            AnyPoolOptions::new()
                .max_connections(connections)
                .after_connect(move |conn, _| {
                    let pragmas = pragmas.clone();
                    Box::pin(async move {
                        conn.execute(pragmas.as_str()).await?;
                        Ok(())
                    })
                })
        };
        let writer_pragmas = format!("PRAGMA wal_autocheckpoint = {WRITER_AUTOCHECKPOINT_PAGES};");
        let writer = options(1, &writer_pragmas).connect(&url).await?;
        sqlx::migrate!("./migrations/sqlite").run(&writer).await?;
        let pool = options(4, "").connect(&url).await?;
        Ok(Store {
            _checkpointer: Some(Arc::new(Checkpointer::start(pool.clone()))),
            pool,
            writer,
            backend: Backend::Sqlite,
        })
    }

    async fn open_postgres(url: &str) -> Result<Store> {
        // One connection first: the pool retries a refused connection until its acquire
        // timeout and then reports only that it timed out, not why.
        sqlx::AnyConnection::connect(url).await?.close().await?;
        let pool = AnyPoolOptions::new()
            .max_connections(POSTGRES_CONNECTIONS)
            .acquire_timeout(Duration::from_secs(30))
            .connect(url)
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(Store {
            writer: pool.clone(),
            pool,
            backend: Backend::Postgres,
            _checkpointer: None,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The journal mode in force ("wal" after [`Store::open`]); PostgreSQL has its own
    /// write-ahead log and answers "wal" too.
    pub async fn journal_mode(&self) -> Result<String> {
        if self.backend == Backend::Postgres {
            return Ok("wal".into());
        }
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
        if let Some(row) = sqlx::query("SELECT value FROM settings WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?
        {
            return Ok(row.try_get("value")?);
        }
        let value = init();
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT(key) DO NOTHING",
        )
        .bind(key)
        .bind(&value)
        .execute(&self.writer)
        .await?;
        let row = sqlx::query("SELECT value FROM settings WHERE key = $1")
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

/// A 0/1 flag column (both schemas store flags as integers).
fn get_flag(row: &AnyRow, column: &str) -> Result<bool> {
    Ok(row.try_get::<i64, _>(column)? != 0)
}

/// A flag as bound to a 0/1 column.
fn flag(value: bool) -> i64 {
    i64::from(value)
}

/// A nullable `DOUBLE PRECISION` value, bound so that PostgreSQL receives a NULL of the right
/// type: sqlx 0.8's `Any` driver sends `Option::<f64>::None` as a NULL `real` (float4), which
/// PostgreSQL refuses for a float8 parameter ("incorrect binary data format"), and the
/// `Option::<f32>::None` as a NULL float8.
struct NullableF64(Option<f64>);

impl sqlx::Type<sqlx::Any> for NullableF64 {
    fn type_info() -> sqlx::any::AnyTypeInfo {
        <f64 as sqlx::Type<sqlx::Any>>::type_info()
    }
}

impl<'q> sqlx::Encode<'q, sqlx::Any> for NullableF64 {
    fn encode_by_ref(
        &self,
        buf: &mut <sqlx::Any as sqlx::Database>::ArgumentBuffer<'q>,
    ) -> std::result::Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        match self.0 {
            Some(value) => <f64 as sqlx::Encode<sqlx::Any>>::encode_by_ref(&value, buf),
            None => <Option<f32> as sqlx::Encode<sqlx::Any>>::encode_by_ref(&None, buf),
        }
    }
}

/// Writes the placeholders of generated statements (multi-row inserts, `IN` lists) as the
/// backend parses them fastest: `?` on SQLite, where a statement of thousands of named `$N`
/// parameters costs a lookup among all the names before it for each one (quadratic: a batch
/// of 500 requests took longer to prepare than to write), and `$1, $2, …` on PostgreSQL,
/// which has no other kind. Values are bound in the order the placeholders were written.
struct Placeholders {
    numbered: bool,
    written: usize,
}

impl Placeholders {
    fn new(backend: Backend) -> Placeholders {
        Placeholders {
            numbered: backend == Backend::Postgres,
            written: 0,
        }
    }

    /// For a statement run on `conn`.
    fn of(conn: &sqlx::AnyConnection) -> Placeholders {
        let backend = if conn.backend_name() == "PostgreSQL" {
            Backend::Postgres
        } else {
            Backend::Sqlite
        };
        Placeholders::new(backend)
    }

    /// The next placeholder.
    fn next(&mut self) -> String {
        let mut out = String::new();
        self.push_next(&mut out);
        out
    }

    fn push_next(&mut self, out: &mut String) {
        self.written += 1;
        if self.numbered {
            out.push('$');
            out.push_str(&self.written.to_string());
        } else {
            out.push('?');
        }
    }

    /// `a, b, c`: `count` placeholders.
    fn list(&mut self, count: usize) -> String {
        let mut out = String::with_capacity(count * 4);
        self.push_list(&mut out, count);
        out
    }

    fn push_list(&mut self, out: &mut String, count: usize) {
        for i in 0..count {
            if i > 0 {
                out.push_str(", ");
            }
            self.push_next(out);
        }
    }

    /// `(a, b), (c, d)`: a `VALUES` list of `rows` rows of `columns` values.
    fn rows(&mut self, rows: usize, columns: usize) -> String {
        let mut out = String::with_capacity(rows * (columns * 4 + 4));
        for row in 0..rows {
            if row > 0 {
                out.push_str(", ");
            }
            out.push('(');
            self.push_list(&mut out, columns);
            out.push(')');
        }
        out
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

#[cfg(test)]
mod placeholder_tests {
    use super::*;

    #[test]
    fn sqlite_gets_anonymous_placeholders_and_postgresql_numbered_ones() {
        let mut sqlite = Placeholders::new(Backend::Sqlite);
        assert_eq!(sqlite.rows(2, 2), "(?, ?), (?, ?)");
        let mut postgres = Placeholders::new(Backend::Postgres);
        assert_eq!(postgres.rows(2, 2), "($1, $2), ($3, $4)");
        assert_eq!(postgres.list(2), "$5, $6");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes reach the database file within a few of the checkpointer's ticks although they
    /// stay far below the writer's own checkpoint threshold: the background checkpointer
    /// copied them out of the WAL.
    #[tokio::test]
    async fn the_wal_is_checkpointed_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("horde.sqlite");
        let store = Store::open(&Location::SqliteFile(path.clone()), Durability::Normal)
            .await
            .unwrap();
        let before = std::fs::metadata(&path).unwrap().len();
        // About 2 MB of rows: some 500 pages, a twentieth of the writer's threshold.
        for i in 0..500 {
            store
                .setting_or_init(&format!("filler-{i}"), || "x".repeat(4000))
                .await
                .unwrap();
        }
        let grown = before + 1_500_000;
        let mut size = std::fs::metadata(&path).unwrap().len();
        for _ in 0..40 {
            if size >= grown {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            size = std::fs::metadata(&path).unwrap().len();
        }
        assert!(
            size >= grown,
            "the database file stayed at {size} bytes (from {before}): nothing checkpointed"
        );
        store.close().await;
    }
}
