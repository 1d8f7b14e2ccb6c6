//! Leadership among coordinators sharing a PostgreSQL database: one of them runs the
//! background duties (deadlines, expiry), the others stand by.
//!
//! The leader holds a session-level advisory lock on a connection of its own. PostgreSQL
//! releases it when that connection ends, which is also when the process holding it dies (the
//! kernel closes its socket), so another coordinator takes over at its next attempt. On SQLite
//! there is one process, and it always leads.

use crate::{Backend, Result, Store};
use sqlx::{Acquire, AnyConnection, Connection, Row};

/// The advisory-lock key of the sweeper ("horde" in ASCII).
const SWEEPER_LOCK: i64 = 0x0068_6f72_6465;

/// Held leadership: a connection holding the lock (none on SQLite).
pub struct Lease {
    conn: Option<AnyConnection>,
}

impl Lease {
    /// Whether the lock is still held (its connection is alive).
    pub async fn is_held(&mut self) -> bool {
        match &mut self.conn {
            None => true,
            Some(conn) => conn.ping().await.is_ok(),
        }
    }
}

impl Store {
    /// Becomes the leader if no other coordinator is.
    pub async fn try_lead(&self) -> Result<Option<Lease>> {
        if self.backend == Backend::Sqlite {
            return Ok(Some(Lease { conn: None }));
        }
        let mut conn = self.pool.acquire().await?.detach();
        let held: bool = sqlx::query("SELECT pg_try_advisory_lock($1)")
            .bind(SWEEPER_LOCK)
            .fetch_one(conn.acquire().await?)
            .await?
            .try_get(0)?;
        if held {
            Ok(Some(Lease { conn: Some(conn) }))
        } else {
            let _ = conn.close().await;
            Ok(None)
        }
    }
}
