//! Creating a PostgreSQL database for a new horde, for the test suite and the benchmark
//! harness (each run gets a database of its own on one server).

use crate::Result;
use sqlx::{Connection, Executor};

/// Creates a new, empty database named `name` on the server of `server_url` (a URL naming
/// any existing database the role may connect to); returns the URL of the new database.
pub async fn create_postgres_database(server_url: &str, name: &str) -> Result<String> {
    sqlx::any::install_default_drivers();
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !valid {
        return Err(crate::StoreError::Corrupt(format!(
            "{name:?} is not a plain database name"
        )));
    }
    let mut conn = sqlx::AnyConnection::connect(server_url).await?;
    conn.execute(format!("CREATE DATABASE {name}").as_str())
        .await?;
    let _ = conn.close().await;
    Ok(with_database(server_url, name))
}

/// `server_url` with its database name replaced by `name`.
pub fn with_database(server_url: &str, name: &str) -> String {
    let (base, query) = server_url
        .split_once('?')
        .map_or((server_url, None), |(b, q)| (b, Some(q)));
    let prefix = match base.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('/') {
            Some((authority, _)) => format!("{scheme}://{authority}"),
            None => base.to_string(),
        },
        None => base.to_string(),
    };
    match query {
        Some(query) => format!("{prefix}/{name}?{query}"),
        None => format!("{prefix}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_name_is_replaced_or_added() {
        let cases = [
            (
                "postgres://h@127.0.0.1:5432/postgres",
                "postgres://h@127.0.0.1:5432/x",
            ),
            (
                "postgres://h@127.0.0.1:5432",
                "postgres://h@127.0.0.1:5432/x",
            ),
            (
                "postgres://h:p@host/db?sslmode=disable",
                "postgres://h:p@host/x?sslmode=disable",
            ),
        ];
        for (server, expected) in cases {
            assert_eq!(with_database(server, "x"), expected);
        }
    }
}
