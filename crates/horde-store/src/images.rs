//! Finished images kept in the database, for coordinators sharing PostgreSQL: a worker may
//! upload to one coordinator and the client download from another. (A single coordinator on
//! SQLite keeps them as files beside the database; `horde-server`'s `ImageStore` chooses.)

use crate::{Result, Store};
use sqlx::Row;
use uuid::Uuid;

impl Store {
    /// Stores (or replaces) the image of a job.
    pub async fn put_image(&self, job_id: Uuid, bytes: &[u8], at: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO images (job_id, data, stored_at) VALUES ($1, $2, $3) \
             ON CONFLICT (job_id) DO UPDATE SET data = excluded.data, stored_at = excluded.stored_at",
        )
        .bind(job_id.to_string())
        .bind(bytes)
        .bind(at)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    pub async fn image(&self, job_id: Uuid) -> Result<Option<Vec<u8>>> {
        let row = sqlx::query("SELECT data FROM images WHERE job_id = $1")
            .bind(job_id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| Ok(row.try_get(0)?)).transpose()
    }

    pub async fn has_image(&self, job_id: Uuid) -> Result<bool> {
        let row = sqlx::query("SELECT 1 FROM images WHERE job_id = $1")
            .bind(job_id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    pub async fn delete_image(&self, job_id: Uuid) -> Result<()> {
        sqlx::query("DELETE FROM images WHERE job_id = $1")
            .bind(job_id.to_string())
            .execute(&self.writer)
            .await?;
        Ok(())
    }
}
