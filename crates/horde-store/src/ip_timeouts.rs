//! IP timeouts, address suspicion and workers' addresses, shared by every coordinator on the
//! database (each reads the timeouts through a short cache: horde-server `operations`).
//!
//! Addresses and blocks are stored as horde-core's canonical text (`ip_timeouts::Network`), so
//! one address is one row however it was written.

use crate::{Result, Store};
use sqlx::Row;

impl Store {
    /// Times `network` out until `expires_ms` (unix ms). `extend_only`: a timeout already
    /// ending later is kept (a blocked prompt never shortens a moderator's timeout); otherwise
    /// the new end replaces the old one (a moderator's decision).
    pub async fn put_ip_timeout(
        &self,
        network: &str,
        expires_ms: i64,
        extend_only: bool,
    ) -> Result<()> {
        let sql = if extend_only {
            "INSERT INTO ip_timeouts (network, expires_ms) VALUES ($1, $2) \
             ON CONFLICT (network) DO UPDATE SET expires_ms = CASE \
             WHEN excluded.expires_ms > ip_timeouts.expires_ms THEN excluded.expires_ms \
             ELSE ip_timeouts.expires_ms END"
        } else {
            "INSERT INTO ip_timeouts (network, expires_ms) VALUES ($1, $2) \
             ON CONFLICT (network) DO UPDATE SET expires_ms = excluded.expires_ms"
        };
        sqlx::query(sql)
            .bind(network)
            .bind(expires_ms)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Lifts `network`'s timeout and forgets its suspicion; whether there was a timeout.
    pub async fn delete_ip_timeout(&self, network: &str) -> Result<bool> {
        let mut tx = self.writer.begin().await?;
        let done = sqlx::query("DELETE FROM ip_timeouts WHERE network = $1")
            .bind(network)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM ip_suspicion WHERE subject = $1")
            .bind(network)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    /// The timeouts that have not ended at `now_ms`: (network, expires_ms), by network.
    pub async fn live_ip_timeouts(&self, now_ms: i64) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT network, expires_ms FROM ip_timeouts WHERE expires_ms > $1 ORDER BY network",
        )
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// Forgets timeouts and suspicion that ended before `now_ms`.
    pub async fn prune_ip_timeouts(&self, now_ms: i64) -> Result<()> {
        for sql in [
            "DELETE FROM ip_timeouts WHERE expires_ms <= $1",
            "DELETE FROM ip_suspicion WHERE expires_ms <= $1",
        ] {
            sqlx::query(sql).bind(now_ms).execute(&self.writer).await?;
        }
        Ok(())
    }

    /// Raises `subject`'s suspicion by one, remembered until `expires_ms` (a suspicion that
    /// had ended starts again from one); returns the suspicion before this one. One atomic
    /// upsert, so coordinators raising it at once each count.
    pub async fn raise_ip_suspicion(
        &self,
        subject: &str,
        now_ms: i64,
        expires_ms: i64,
    ) -> Result<u32> {
        let row = sqlx::query(
            "INSERT INTO ip_suspicion (subject, suspicion, expires_ms) VALUES ($1, 1, $2) \
             ON CONFLICT (subject) DO UPDATE SET suspicion = CASE \
             WHEN ip_suspicion.expires_ms > $3 THEN ip_suspicion.suspicion + 1 ELSE 1 END, \
             expires_ms = excluded.expires_ms RETURNING suspicion",
        )
        .bind(subject)
        .bind(expires_ms)
        .bind(now_ms)
        .fetch_one(&self.writer)
        .await?;
        Ok((row.try_get::<i64, _>(0)? - 1).max(0) as u32)
    }

    /// Records the address worker `worker_id` popped from.
    pub async fn save_worker_address(
        &self,
        worker_id: &str,
        ipaddr: &str,
        now_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO worker_addresses (worker_id, ipaddr, seen_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (worker_id) DO UPDATE SET ipaddr = excluded.ipaddr, \
             seen_ms = excluded.seen_ms",
        )
        .bind(worker_id)
        .bind(ipaddr)
        .bind(now_ms)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// The address worker `worker_id` last popped from, if it ever popped.
    pub async fn worker_address(&self, worker_id: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT ipaddr FROM worker_addresses WHERE worker_id = $1")
            .bind(worker_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok(r.try_get(0)?)).transpose()
    }
}
