//! Telling the other coordinators that share a PostgreSQL database which requests changed.
//!
//! Every write to a request's row (accepted, jobs handed out, a result, a cancel, a take-back,
//! its removal) sends `NOTIFY horde_requests` with `id:version` of each request in the same
//! transaction, so PostgreSQL delivers it exactly when the change commits, in commit order.
//! Each coordinator listens (`horde-server`'s `cluster` module) and reloads the requests whose
//! stored version is newer than its copy; its own changes carry the version it already holds
//! and cost nothing. A removed request is announced with version -1. On SQLite (one process)
//! nothing is sent.

use crate::Result;
use sqlx::AnyConnection;
use std::collections::BTreeMap;
use uuid::Uuid;

/// The channel coordinators listen on.
pub const REQUESTS_CHANNEL: &str = "horde_requests";

/// Entries per notification (its payload must stay under PostgreSQL's 8000 bytes).
const ENTRIES_PER_NOTIFICATION: usize = 150;

/// The version announced for a removed request.
pub const REMOVED: i64 = -1;

pub(crate) async fn request_changed(
    conn: &mut AnyConnection,
    id: Uuid,
    version: i64,
) -> Result<()> {
    requests_changed(conn, &[(id, version)]).await
}

pub(crate) async fn requests_changed(
    conn: &mut AnyConnection,
    changes: &[(Uuid, i64)],
) -> Result<()> {
    if conn.backend_name() != "PostgreSQL" {
        return Ok(());
    }
    for chunk in changes.chunks(ENTRIES_PER_NOTIFICATION) {
        let payload = chunk
            .iter()
            .map(|(id, version)| format!("{id}:{version}"))
            .collect::<Vec<_>>()
            .join(",");
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(REQUESTS_CHANNEL)
            .bind(payload)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// A connection listening for the announcements of every coordinator sharing the database.
pub struct Listener {
    inner: sqlx::postgres::PgListener,
}

impl Listener {
    pub async fn connect(url: &str) -> Result<Listener> {
        let mut inner = sqlx::postgres::PgListener::connect(url).await?;
        inner.ignore_pool_close_event(true);
        inner.listen(REQUESTS_CHANNEL).await?;
        Ok(Listener { inner })
    }

    /// Waits for the next announcement, then takes every one already received with it:
    /// the newest announced version of each request (a removal wins). A lost connection is an
    /// error (announcements sent meanwhile are gone), not the silent reconnection of
    /// `PgListener::recv`: the caller reconnects and reloads.
    pub async fn next_batch(&mut self) -> Result<BTreeMap<Uuid, i64>> {
        let first = self.inner.try_recv().await?.ok_or_else(|| {
            sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the connection listening for announcements was lost",
            ))
        })?;
        let mut changes = BTreeMap::new();
        note(&mut changes, first.payload());
        while let Some(next) = self.inner.next_buffered() {
            note(&mut changes, next.payload());
        }
        Ok(changes)
    }
}

fn note(changes: &mut BTreeMap<Uuid, i64>, payload: &str) {
    for (id, version) in parse_payload(payload) {
        let entry = changes.entry(id).or_insert(version);
        if version == REMOVED || (*entry != REMOVED && version > *entry) {
            *entry = version;
        }
    }
}

/// The `(request, version)` entries of a notification's payload; malformed entries are
/// skipped.
pub fn parse_payload(payload: &str) -> Vec<(Uuid, i64)> {
    payload
        .split(',')
        .filter_map(|entry| {
            let (id, version) = entry.split_once(':')?;
            Some((Uuid::parse_str(id).ok()?, version.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_skip_garbage() {
        let a = Uuid::new_v4();
        let b = Uuid::new_v4();
        let payload = format!("{a}:3,garbage,{b}:-1,{a}:x");
        assert_eq!(parse_payload(&payload), vec![(a, 3), (b, REMOVED)]);
    }

    #[test]
    fn a_batch_keeps_the_newest_version_and_removals_win() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut changes = BTreeMap::new();
        note(&mut changes, &format!("{a}:2,{b}:5"));
        note(&mut changes, &format!("{a}:1,{b}:-1"));
        note(&mut changes, &format!("{b}:7"));
        assert_eq!(changes[&a], 2);
        assert_eq!(changes[&b], REMOVED);
    }
}
