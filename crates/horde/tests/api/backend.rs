//! Which database the suite runs against: a temporary SQLite file (the default), or, when
//! `HORDE_TEST_POSTGRES_URL` names a PostgreSQL server (`.ci/run` starts one), a new database
//! on that server for each test's data directory.
//!
//! Every coordinator a test starts for one data directory, in process or as a `horde`
//! subprocess, gets the same database: `HORDE_DATABASE__URL` is set for subprocesses, and
//! `database.url` in process.

use sqlx::{Connection, Row};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The PostgreSQL server the suite runs against, if any.
pub(crate) fn postgres_server() -> Option<String> {
    std::env::var("HORDE_TEST_POSTGRES_URL")
        .ok()
        .filter(|url| !url.is_empty())
}

/// The database URL of a data directory on PostgreSQL (created on first use), or `None` on
/// SQLite (the file `horde.sqlite` in the directory).
pub(crate) fn database_for(dir: &Path) -> Option<String> {
    static DATABASES: Mutex<Option<HashMap<PathBuf, String>>> = Mutex::new(None);
    let server = postgres_server()?;
    let mut databases = DATABASES.lock().unwrap();
    let databases = databases.get_or_insert_with(HashMap::new);
    if let Some(url) = databases.get(dir) {
        return Some(url.clone());
    }
    let name = format!("horde_test_{}", uuid::Uuid::new_v4().simple());
    // A thread of its own: callers may be inside a runtime, and may not be async.
    let url = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(horde_store::admin::create_postgres_database(&server, &name))
    })
    .join()
    .unwrap()
    .expect("a database created on the test PostgreSQL server");
    databases.insert(dir.to_path_buf(), url.clone());
    Some(url)
}

/// Everything the database of `dir` holds, as bytes to search: the SQLite file and its WAL, or
/// every row of every table of the PostgreSQL database as JSON text.
pub(crate) async fn stored_bytes(dir: &Path) -> Vec<u8> {
    let Some(url) = database_for(dir) else {
        let mut bytes = std::fs::read(dir.join("horde.sqlite")).unwrap();
        bytes.extend(std::fs::read(dir.join("horde.sqlite-wal")).unwrap_or_default());
        return bytes;
    };
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
    let tables: Vec<String> = sqlx::query(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap()
    .iter()
    .map(|row| row.get(0))
    .collect();
    assert!(tables.contains(&"users".to_string()), "tables: {tables:?}");
    let mut bytes = Vec::new();
    for table in tables {
        let sql = format!("SELECT row_to_json(t)::text FROM {table} t");
        for row in sqlx::query(&sql).fetch_all(&mut conn).await.unwrap() {
            bytes.extend(row.get::<String, _>(0).into_bytes());
        }
    }
    bytes
}

/// Runs `sqlite` or `postgres` (one or more statements, whichever the suite runs against) on
/// the database of `dir`, as an operator's `psql` or `sqlite3` would beside the coordinator.
pub(crate) async fn execute_beside(dir: &Path, sqlite: &str, postgres: &str) {
    sqlx::any::install_default_drivers();
    let (url, sql) = match database_for(dir) {
        Some(url) => (url, postgres),
        None => (
            format!("sqlite://{}", dir.join("horde.sqlite").display()),
            sqlite,
        ),
    };
    let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
}
