//! Requests' source images kept in the database, for coordinators sharing PostgreSQL (a worker
//! may pop the request from another coordinator than the one that accepted it). A single
//! coordinator on SQLite keeps them as files; `horde-server`'s `ImageStore` chooses.
//!
//! They are written before their request's row, so a crash in between leaves a row no request
//! names: [`Store::delete_orphan_sources`] removes those once they are old enough that no
//! acceptance can still be committing them.

use crate::{Result, Store};
use sqlx::Row;
use uuid::Uuid;

impl Store {
    /// Stores (or replaces) the sources of a request not yet committed, `(role, WebP)` each,
    /// in one transaction.
    pub async fn put_sources(
        &self,
        request_id: Uuid,
        sources: &[(String, &[u8])],
        at: i64,
    ) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        for (role, bytes) in sources {
            sqlx::query(
                "INSERT INTO source_images (request_id, role, data, stored_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (request_id, role) DO UPDATE SET data = excluded.data, stored_at = excluded.stored_at",
            )
            .bind(request_id.to_string())
            .bind(role)
            .bind(*bytes)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// One source of a request, if stored.
    pub async fn source(&self, request_id: Uuid, role: &str) -> Result<Option<Vec<u8>>> {
        let row = sqlx::query("SELECT data FROM source_images WHERE request_id = $1 AND role = $2")
            .bind(request_id.to_string())
            .bind(role)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| Ok(row.try_get(0)?)).transpose()
    }

    /// Removes every source of a request.
    pub async fn delete_sources(&self, request_id: Uuid) -> Result<()> {
        sqlx::query("DELETE FROM source_images WHERE request_id = $1")
            .bind(request_id.to_string())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Removes sources stored before `before` whose request is not stored (a crash came
    /// between writing them and committing the request); returns how many.
    pub async fn delete_orphan_sources(&self, before: i64) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM source_images WHERE stored_at < $1 \
             AND NOT EXISTS (SELECT 1 FROM requests WHERE requests.id = source_images.request_id)",
        )
        .bind(before)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected())
    }

    /// Whether a request (of any kind) is stored.
    pub async fn request_exists(&self, request_id: Uuid) -> Result<bool> {
        let row = sqlx::query("SELECT 1 FROM requests WHERE id = $1")
            .bind(request_id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }
}
