//! Workers: registered on their first pop, updated on check-in and by their owner.

use crate::{flag, get_flag, parse_json, parse_uuid, to_json, Result, Store, StoreError};
use horde_core::accounts::Worker;
use horde_core::Reputation;
use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

const WORKER_COLUMNS: &str =
    "id, user_id, name, info, created, last_check_in, bridge_agent, threads, \
    max_pixels, nsfw, flags, maintenance, maintenance_msg, paused, kudos_generated, kudos_uptime, \
    fulfilments, megapixelsteps, uncompleted_jobs, uptime, jobs_faulted, jobs_cancelled, busy_secs, \
    recent_speed_mps, fault_streak, suspicion, suspicions, uptime_rewarded, reputation_version, \
    rating_raters, rating_points";

fn worker_from_row(row: &AnyRow) -> Result<Worker> {
    Ok(Worker {
        id: parse_uuid(row.try_get("id")?)?,
        user_id: row.try_get("user_id")?,
        name: row.try_get("name")?,
        info: row.try_get("info")?,
        created: row.try_get("created")?,
        last_check_in: row.try_get("last_check_in")?,
        bridge_agent: row.try_get("bridge_agent")?,
        threads: row.try_get::<i64, _>("threads")? as u32,
        max_pixels: row.try_get::<i64, _>("max_pixels")? as u64,
        nsfw: get_flag(row, "nsfw")?,
        flags: parse_json(row.try_get("flags")?)?,
        maintenance: get_flag(row, "maintenance")?,
        maintenance_msg: row.try_get("maintenance_msg")?,
        paused: get_flag(row, "paused")?,
        kudos_generated: row.try_get("kudos_generated")?,
        kudos_uptime: row.try_get("kudos_uptime")?,
        uptime: row.try_get::<i64, _>("uptime")? as u64,
        uptime_rewarded: row.try_get::<i64, _>("uptime_rewarded")? as u64,
        reputation: reputation_from_row(row)?,
    })
}

fn reputation_from_row(row: &AnyRow) -> Result<Reputation> {
    Ok(Reputation {
        completed: row.try_get::<i64, _>("fulfilments")? as u64,
        faulted: row.try_get::<i64, _>("jobs_faulted")? as u64,
        timed_out: row.try_get::<i64, _>("uncompleted_jobs")? as u64,
        cancelled: row.try_get::<i64, _>("jobs_cancelled")? as u64,
        megapixelsteps: row.try_get("megapixelsteps")?,
        busy_secs: row.try_get("busy_secs")?,
        recent_speed_mps: row.try_get("recent_speed_mps")?,
        fault_streak: row.try_get::<i64, _>("fault_streak")? as u32,
        suspicion: row.try_get::<i64, _>("suspicion")? as u32,
        suspicions: parse_json(row.try_get("suspicions")?)?,
        version: row.try_get::<i64, _>("reputation_version")? as u64,
        rating: horde_core::ratings::RatingSummary {
            raters: row.try_get::<i64, _>("rating_raters")? as u32,
            points: row.try_get("rating_points")?,
        },
    })
}

/// Writes a worker's whole reputation as version `r.version + 1`, if the stored one is still at
/// `r.version` (else another coordinator wrote it first: [`StoreError::WorkerConflict`]). The
/// caller holds the coordinator's write order, so the newest state is written last.
pub(crate) async fn write_reputation<'e, E>(
    executor: E,
    worker_id: Uuid,
    r: &Reputation,
) -> Result<()>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let written = sqlx::query(
        "UPDATE workers SET fulfilments = $1, jobs_faulted = $2, uncompleted_jobs = $3, jobs_cancelled = $4, \
         megapixelsteps = $5, busy_secs = $6, recent_speed_mps = $7, fault_streak = $8, suspicion = $9, \
         suspicions = $10, reputation_version = $11, rating_raters = $14, rating_points = $15 \
         WHERE id = $12 AND reputation_version = $13",
    )
    .bind(r.completed as i64)
    .bind(r.faulted as i64)
    .bind(r.timed_out as i64)
    .bind(r.cancelled as i64)
    .bind(r.megapixelsteps)
    .bind(r.busy_secs)
    .bind(crate::NullableF64(r.recent_speed_mps))
    .bind(i64::from(r.fault_streak))
    .bind(i64::from(r.suspicion))
    .bind(to_json(&r.suspicions))
    .bind(r.version as i64 + 1)
    .bind(worker_id.to_string())
    .bind(r.version as i64)
    .bind(i64::from(r.rating.raters))
    .bind(r.rating.points)
    .execute(executor)
    .await?;
    if written.rows_affected() == 0 {
        return Err(StoreError::WorkerConflict(worker_id));
    }
    Ok(())
}

impl Store {
    pub async fn insert_worker(&self, w: &Worker) -> Result<()> {
        sqlx::query(
            "INSERT INTO workers (id, user_id, name, info, created, last_check_in, bridge_agent, threads, \
             max_pixels, nsfw, flags) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(w.id.to_string())
        .bind(w.user_id)
        .bind(&w.name)
        .bind(&w.info)
        .bind(w.created)
        .bind(w.last_check_in)
        .bind(&w.bridge_agent)
        .bind(i64::from(w.threads))
        .bind(w.max_pixels as i64)
        .bind(flag(w.nsfw))
        .bind(to_json(&w.flags))
        .execute(&self.writer)
        .await
        .map_err(|e| StoreError::unique(e, "worker name"))?;
        Ok(())
    }

    /// Stores what a worker declared at check-in.
    pub async fn save_check_in(&self, w: &Worker) -> Result<()> {
        sqlx::query(
            "UPDATE workers SET last_check_in = $1, bridge_agent = $2, threads = $3, max_pixels = $4, nsfw = $5, \
             flags = $6, uptime = $7 WHERE id = $8",
        )
        .bind(w.last_check_in)
        .bind(&w.bridge_agent)
        .bind(i64::from(w.threads))
        .bind(w.max_pixels as i64)
        .bind(flag(w.nsfw))
        .bind(to_json(&w.flags))
        .bind(w.uptime as i64)
        .bind(w.id.to_string())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Stores the owner-editable fields.
    pub async fn save_worker_settings(&self, w: &Worker) -> Result<()> {
        sqlx::query(
            "UPDATE workers SET name = $1, info = $2, maintenance = $3, maintenance_msg = $4, paused = $5 WHERE id = $6",
        )
        .bind(&w.name)
        .bind(&w.info)
        .bind(flag(w.maintenance))
        .bind(&w.maintenance_msg)
        .bind(flag(w.paused))
        .bind(w.id.to_string())
        .execute(&self.writer)
        .await
        .map_err(|e| StoreError::unique(e, "worker name"))?;
        Ok(())
    }

    /// Stores a worker's reputation on its own (a moderator's clearance, a refused image).
    pub async fn save_reputation(&self, worker_id: Uuid, r: &Reputation) -> Result<()> {
        write_reputation(&self.writer, worker_id, r).await
    }

    pub async fn worker_by_id(&self, id: uuid::Uuid) -> Result<Option<Worker>> {
        let sql = format!("SELECT {WORKER_COLUMNS} FROM workers WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(worker_from_row).transpose()
    }

    pub async fn worker_by_name(&self, name: &str) -> Result<Option<Worker>> {
        let sql = format!("SELECT {WORKER_COLUMNS} FROM workers WHERE name = $1");
        let row = sqlx::query(&sql)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(worker_from_row).transpose()
    }

    /// Workers that checked in at or after `since` (unix seconds).
    pub async fn workers_seen_since(&self, since: i64) -> Result<Vec<Worker>> {
        let sql =
            format!("SELECT {WORKER_COLUMNS} FROM workers WHERE last_check_in >= $1 ORDER BY name");
        let rows = sqlx::query(&sql).bind(since).fetch_all(&self.pool).await?;
        rows.iter().map(worker_from_row).collect()
    }

    /// Stores the hardware worker `id` last reported (`None`: it reports none).
    pub async fn save_worker_hardware(
        &self,
        id: Uuid,
        hardware: Option<&horde_api::worker::WorkerHardware>,
    ) -> Result<()> {
        sqlx::query("UPDATE workers SET hardware = $1 WHERE id = $2")
            .bind(hardware.map(to_json))
            .bind(id.to_string())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// The hardware worker `id` last reported, if any.
    pub async fn worker_hardware(
        &self,
        id: Uuid,
    ) -> Result<Option<horde_api::worker::WorkerHardware>> {
        let row = sqlx::query("SELECT hardware FROM workers WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        let text: Option<String> = match row {
            Some(row) => row.try_get("hardware")?,
            None => None,
        };
        text.as_deref().map(parse_json).transpose()
    }

    /// Every worker's last reported hardware (workers that reported none are left out).
    pub async fn all_worker_hardware(
        &self,
    ) -> Result<Vec<(Uuid, horde_api::worker::WorkerHardware)>> {
        let rows = sqlx::query("SELECT id, hardware FROM workers WHERE hardware IS NOT NULL")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let id = parse_uuid(row.try_get("id")?)?;
                let text: String = row.try_get("hardware")?;
                Ok((id, parse_json(&text)?))
            })
            .collect()
    }

    pub async fn worker_ids_of_user(&self, user_id: i64) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT id FROM workers WHERE user_id = $1 ORDER BY created")
            .bind(user_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<String, _>(0)?))
            .collect()
    }
}
