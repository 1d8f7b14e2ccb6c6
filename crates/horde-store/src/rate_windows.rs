//! Rate-limit windows counted in PostgreSQL, so that coordinators sharing it enforce one
//! limit together. One atomic upsert per hit (`INSERT … ON CONFLICT … RETURNING`): no
//! read-then-write race between coordinators. The table is UNLOGGED: counters of windows of
//! seconds to hours are not worth a WAL write, and a crash only forgets them.

use crate::{Result, Store};
use sqlx::Row;

impl Store {
    /// Counts one hit on `key` in the window starting at `window_start` (unix ms); returns the
    /// hits in that window, this one included.
    pub async fn hit_rate_window(&self, key: &str, window_start: u64) -> Result<u64> {
        let row = sqlx::query(
            "INSERT INTO rate_windows (key, window_start, hits) VALUES ($1, $2, 1) \
             ON CONFLICT (key, window_start) DO UPDATE SET hits = rate_windows.hits + 1 \
             RETURNING hits",
        )
        .bind(key)
        .bind(window_start as i64)
        .fetch_one(&self.writer)
        .await?;
        Ok(row.try_get::<i64, _>(0)? as u64)
    }

    /// Forgets windows that started before `before` (unix ms).
    pub async fn prune_rate_windows(&self, before: u64) -> Result<u64> {
        let done = sqlx::query("DELETE FROM rate_windows WHERE window_start < $1")
            .bind(before as i64)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected())
    }
}
