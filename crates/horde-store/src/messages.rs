//! Messages to workers, kept after they expire so that `validity=expired` lists them.

use crate::{parse_uuid, Result, Store};
use horde_core::teams::WorkerMessage;
use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

fn message_from_row(row: &AnyRow) -> Result<WorkerMessage> {
    let worker_id: Option<String> = row.try_get("worker_id")?;
    Ok(WorkerMessage {
        id: parse_uuid(row.try_get("id")?)?,
        worker_id: worker_id.as_deref().map(parse_uuid).transpose()?,
        user_id: row.try_get("user_id")?,
        message: row.try_get("message")?,
        origin: row.try_get("origin")?,
        expiry: row.try_get("expiry")?,
        created: row.try_get("created")?,
    })
}

/// Which stored messages to list, newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageFilter {
    /// Only messages by this author.
    pub user_id: Option<i64>,
    /// Only messages to this worker.
    pub worker_id: Option<Uuid>,
    /// Only messages active (`Some(true)`) or expired (`Some(false)`) at `now`.
    pub active: Option<bool>,
    pub now: i64,
    pub offset: u32,
    pub limit: u32,
}

impl Store {
    pub async fn insert_worker_message(&self, m: &WorkerMessage) -> Result<()> {
        sqlx::query(
            "INSERT INTO worker_messages (id, worker_id, user_id, message, origin, expiry, created) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(m.id.to_string())
        .bind(m.worker_id.map(|w| w.to_string()))
        .bind(m.user_id)
        .bind(&m.message)
        .bind(&m.origin)
        .bind(m.expiry)
        .bind(m.created)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    pub async fn worker_message(&self, id: Uuid) -> Result<Option<WorkerMessage>> {
        let row = sqlx::query("SELECT * FROM worker_messages WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(message_from_row).transpose()
    }

    pub async fn delete_worker_message(&self, id: Uuid) -> Result<()> {
        sqlx::query("DELETE FROM worker_messages WHERE id = $1")
            .bind(id.to_string())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// The messages `filter` selects, newest first, one page of them.
    pub async fn worker_messages(&self, filter: &MessageFilter) -> Result<Vec<WorkerMessage>> {
        // Each condition is written so that an absent filter (a NULL parameter) passes: the
        // statement is the same whichever filters are set.
        let rows = sqlx::query(
            "SELECT * FROM worker_messages \
             WHERE ($1 IS NULL OR user_id = $1) AND ($2 IS NULL OR worker_id = $2) \
             AND ($3 IS NULL OR ($3 = 1 AND expiry > $4) OR ($3 = 0 AND expiry <= $4)) \
             ORDER BY created DESC, id LIMIT $5 OFFSET $6",
        )
        .bind(filter.user_id)
        .bind(filter.worker_id.map(|w| w.to_string()))
        .bind(filter.active.map(i64::from))
        .bind(filter.now)
        .bind(i64::from(filter.limit))
        .bind(i64::from(filter.offset))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(message_from_row).collect()
    }

    /// The messages to workers still active at `now`: what pops show.
    pub async fn active_worker_messages(&self, now: i64) -> Result<Vec<WorkerMessage>> {
        let rows = sqlx::query(
            "SELECT * FROM worker_messages WHERE worker_id IS NOT NULL AND expiry > $1 \
             ORDER BY created, id",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(message_from_row).collect()
    }
}
