//! Teams, the team each worker is in, and deleting a worker (which leaves its team and its
//! messages with it, and is refused while a stored job still names it).

use crate::{parse_uuid, Result, Store, StoreError};
use horde_core::teams::Team;
use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

fn team_from_row(row: &AnyRow) -> Result<Team> {
    Ok(Team {
        id: parse_uuid(row.try_get("id")?)?,
        name: row.try_get("name")?,
        info: row.try_get("info")?,
        owner_id: row.try_get("owner_id")?,
        created: row.try_get("created")?,
    })
}

/// What deleting a worker did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerDeletion {
    Deleted,
    /// No such worker is stored.
    Unknown,
    /// A stored job still names it (until its request is removed): nothing was deleted.
    Referenced,
}

impl Store {
    /// Stores a new team ([`StoreError::Duplicate`] when its name is taken).
    pub async fn insert_team(&self, team: &Team) -> Result<()> {
        sqlx::query(
            "INSERT INTO teams (id, name, info, owner_id, created) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(team.id.to_string())
        .bind(&team.name)
        .bind(&team.info)
        .bind(team.owner_id)
        .bind(team.created)
        .execute(&self.writer)
        .await
        .map_err(|e| StoreError::unique(e, "team name"))?;
        Ok(())
    }

    /// Stores a team's name and info ([`StoreError::Duplicate`] when the name is taken).
    pub async fn save_team(&self, team: &Team) -> Result<()> {
        sqlx::query("UPDATE teams SET name = $1, info = $2 WHERE id = $3")
            .bind(&team.name)
            .bind(&team.info)
            .bind(team.id.to_string())
            .execute(&self.writer)
            .await
            .map_err(|e| StoreError::unique(e, "team name"))?;
        Ok(())
    }

    pub async fn team(&self, id: Uuid) -> Result<Option<Team>> {
        let row = sqlx::query("SELECT * FROM teams WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(team_from_row).transpose()
    }

    /// Every team, by name.
    pub async fn teams(&self) -> Result<Vec<Team>> {
        let rows = sqlx::query("SELECT * FROM teams ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(team_from_row).collect()
    }

    /// Deletes a team; its workers are in no team afterwards.
    pub async fn delete_team(&self, id: Uuid) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        sqlx::query("UPDATE workers SET team_id = NULL WHERE team_id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM teams WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Puts a worker in `team` (`None`: in no team).
    pub async fn set_worker_team(&self, worker_id: Uuid, team: Option<Uuid>) -> Result<()> {
        sqlx::query("UPDATE workers SET team_id = $1 WHERE id = $2")
            .bind(team.map(|t| t.to_string()))
            .bind(worker_id.to_string())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Each worker that is in a team, with its team.
    pub async fn worker_teams(&self) -> Result<Vec<(Uuid, Team)>> {
        let rows = sqlx::query(
            "SELECT w.id AS worker_id, t.id, t.name, t.info, t.owner_id, t.created \
             FROM workers w JOIN teams t ON t.id = w.team_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((parse_uuid(row.try_get("worker_id")?)?, team_from_row(row)?)))
            .collect()
    }

    /// Deletes a worker and the messages to it, unless a stored job still names it.
    pub async fn delete_worker(&self, id: Uuid) -> Result<WorkerDeletion> {
        let id = id.to_string();
        let mut tx = self.writer.begin().await?;
        let jobs: i64 = sqlx::query("SELECT COUNT(*) FROM jobs WHERE worker_id = $1")
            .bind(&id)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        if jobs > 0 {
            return Ok(WorkerDeletion::Referenced);
        }
        sqlx::query("DELETE FROM worker_messages WHERE worker_id = $1")
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        let deleted = sqlx::query("DELETE FROM workers WHERE id = $1")
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        if deleted.rows_affected() == 0 {
            return Ok(WorkerDeletion::Unknown);
        }
        tx.commit().await?;
        Ok(WorkerDeletion::Deleted)
    }
}
