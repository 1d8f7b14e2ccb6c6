//! Requests and their jobs, of every kind of work ([`StoredKind`]: a row names its kind). Each
//! acknowledged change is one transaction.

use crate::kinds::StoredKind;
use crate::ledger::{self, Kind, Posting, HORDE_ACCOUNT};
use crate::webhooks::WebhookDelivery;
use crate::workers::write_reputation;
use crate::{flag, get_flag, parse_json, parse_uuid, to_json, Result, Store, StoreError};
use horde_core::accounts::{forgiven_debit, kudos_floor};
use horde_core::pricing::split_reward;
use horde_core::quota::Usage;
use horde_core::request::{Job, JobState, LiveRequest};
use horde_core::{JobKind, Reputation};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use std::collections::HashMap;
use uuid::Uuid;

/// The money and statistics that move when a job's result is accepted.
#[derive(Debug, Clone)]
pub struct SubmitEffects {
    pub requester_id: i64,
    pub requester_charge: f64,
    pub worker_id: Uuid,
    pub worker_owner_id: i64,
    /// Untrusted owners get half of each reward in escrow (`horde_core::pricing::split_reward`).
    pub worker_owner_trusted: bool,
    pub reward: f64,
    /// The job's work in its kind's unit (megapixelsteps for images).
    pub work: f64,
    /// Unix seconds.
    pub at: i64,
    /// The shared key (hash) the request was made with, whose budget the charge also uses.
    pub shared_key: Option<String>,
}

impl SubmitEffects {
    /// The ledger rows of one delivered image: the requester spends the charge, the worker's
    /// owner earns the reward, the horde keeps the difference.
    pub fn postings(&self, request_id: Uuid, job_id: Uuid) -> Vec<Posting> {
        let with = |account, amount, kind, counterparty| Posting {
            counterparty: Some(counterparty),
            request_id: Some(request_id),
            job_id: Some(job_id),
            ..Posting::new(account, amount, kind)
        };
        let earned = |amount| with(self.worker_owner_id, amount, Kind::Earn, self.requester_id);
        let mut postings = vec![with(
            self.requester_id,
            -self.requester_charge,
            Kind::Spend,
            self.worker_owner_id,
        )];
        let split = split_reward(self.reward, self.worker_owner_trusted);
        postings.push(earned(split.balance));
        if !self.worker_owner_trusted {
            postings.push(earned(split.escrow).in_escrow());
        }
        postings.push(with(
            HORDE_ACCOUNT,
            self.requester_charge - self.reward,
            Kind::Burn,
            self.requester_id,
        ));
        postings
    }
}

/// Writes a request's counters, if its row is still at the version before `r.version`
/// (callers bump `version` with each change); else another coordinator changed the row first
/// and the write is refused with [`StoreError::Conflict`].
async fn write_request_state<K: JobKind>(
    tx: &mut Transaction<'_, Any>,
    r: &LiveRequest<K>,
) -> Result<()> {
    let written = sqlx::query(
        "UPDATE requests SET n_remaining = $1, jobs_total = $2, consumed_kudos = $3, faulted = $4, \
         cancelled = $5, expiry = $6, version = $7 WHERE id = $8 AND version = $9",
    )
    .bind(i64::from(r.n_remaining))
    .bind(i64::from(r.jobs_total))
    .bind(r.consumed_kudos)
    .bind(flag(r.faulted))
    .bind(flag(r.cancelled))
    .bind(r.expiry)
    .bind(r.version as i64)
    .bind(r.id.to_string())
    .bind(r.version as i64 - 1)
    .execute(&mut **tx)
    .await?;
    if written.rows_affected() == 0 {
        return Err(StoreError::Conflict(r.id));
    }
    crate::notify::request_changed(tx, r.id, r.version as i64).await
}

async fn insert_job(tx: &mut Transaction<'_, Any>, job: &Job) -> Result<()> {
    sqlx::query(
        "INSERT INTO jobs (id, request_id, worker_id, worker_name, model, seed, started, deadline, state) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(job.id.to_string())
    .bind(job.request_id.to_string())
    .bind(job.worker_id.to_string())
    .bind(&job.worker_name)
    .bind(&job.model)
    .bind(job.seed as i64)
    .bind(job.started)
    .bind(job.deadline)
    .bind(job.state.as_str())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn write_job_result(tx: &mut Transaction<'_, Any>, job: &Job) -> Result<()> {
    sqlx::query("UPDATE jobs SET state = $1, censored = $2, seed = $3, gen_metadata = $4, reward = $5 WHERE id = $6")
        .bind(job.state.as_str())
        .bind(flag(job.censored))
        .bind(job.seed as i64)
        .bind(to_json(&job.gen_metadata))
        .bind(job.reward)
        .bind(job.id.to_string())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn job_from_row(row: &AnyRow) -> Result<Job> {
    let state: String = row.try_get("state")?;
    Ok(Job {
        id: parse_uuid(row.try_get("id")?)?,
        request_id: parse_uuid(row.try_get("request_id")?)?,
        worker_id: parse_uuid(row.try_get("worker_id")?)?,
        worker_name: row.try_get("worker_name")?,
        model: row.try_get("model")?,
        seed: row.try_get::<i64, _>("seed")? as u64,
        started: row.try_get("started")?,
        deadline: row.try_get("deadline")?,
        state: JobState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("job state {state}")))?,
        censored: get_flag(row, "censored")?,
        gen_metadata: parse_json(row.try_get("gen_metadata")?)?,
        reward: row.try_get("reward")?,
    })
}

fn request_from_row<K: JobKind>(row: &AnyRow) -> Result<LiveRequest<K>> {
    Ok(LiveRequest {
        id: parse_uuid(row.try_get("id")?)?,
        user_id: row.try_get("user_id")?,
        body: parse_json(row.try_get("body")?)?,
        base_seed: row
            .try_get::<Option<i64>, _>("base_seed")?
            .map(|s| s as u64),
        created: row.try_get("created")?,
        seq: row.try_get::<i64, _>("seq")? as u64,
        priority: row.try_get("priority")?,
        n_remaining: row.try_get::<i64, _>("n_remaining")? as u32,
        jobs_total: row.try_get::<i64, _>("jobs_total")? as u32,
        job_kudos: row.try_get("job_kudos")?,
        consumed_kudos: row.try_get("consumed_kudos")?,
        faulted: get_flag(row, "faulted")?,
        cancelled: get_flag(row, "cancelled")?,
        expiry: row.try_get("expiry")?,
        can_pay_upfront: get_flag(row, "can_pay_upfront")?,
        shared_key: row.try_get("shared_key")?,
        version: row.try_get::<i64, _>("version")? as u64,
        batch_id: row
            .try_get::<Option<String>, _>("batch_id")?
            .map(|id| parse_uuid(&id))
            .transpose()?,
        batch_index: row.try_get::<Option<i64>, _>("batch_index")?.unwrap_or(0) as u32,
        jobs: vec![],
    })
}

impl Store {
    /// Stores an accepted request (its images count in the requester's usage when delivered),
    /// its day's quota usage, and its activation fee (`consumed_kudos` at acceptance).
    /// Stores newly accepted requests in one transaction (group commit: one commit for many
    /// requests accepted at the same moment).
    pub async fn insert_requests<K: StoredKind>(&self, requests: &[LiveRequest<K>]) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        crate::accepted::insert_accepted(&mut tx, requests).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Stores jobs handed out by a pop with the request's new counters.
    pub async fn save_assignment<K: StoredKind>(
        &self,
        r: &LiveRequest<K>,
        jobs: &[Job],
    ) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        write_request_state(&mut tx, r).await?;
        for job in jobs {
            insert_job(&mut tx, job).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Stores a job's result, the request's counters, the kudos and statistics it moves, the
    /// reputation of the job's worker as it now stands, and the webhook calls announcing it.
    pub async fn save_submit<K: StoredKind>(
        &self,
        r: &LiveRequest<K>,
        job: &Job,
        effects: Option<&SubmitEffects>,
        worker: Option<(Uuid, &Reputation)>,
        refund: f64,
        webhooks: &[WebhookDelivery],
    ) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        write_request_state(&mut tx, r).await?;
        write_job_result(&mut tx, job).await?;
        crate::webhooks::enqueue(&mut tx, webhooks).await?;
        if let Some((worker_id, reputation)) = worker {
            write_reputation(&mut *tx, worker_id, reputation).await?;
        }
        refund_fee(&mut tx, r, refund).await?;
        if let Some(e) = effects {
            K::record_delivered(&mut tx, job, e).await?;
            sqlx::query("UPDATE workers SET kudos_generated = kudos_generated + $1 WHERE id = $2")
                .bind(e.reward)
                .bind(e.worker_id.to_string())
                .execute(&mut *tx)
                .await?;
            if let Some(key) = &e.shared_key {
                crate::shared_keys::charge_shared_key(&mut tx, key, e.requester_charge).await?;
            }
            let (balance, floor) = balance_and_floor(&mut tx, e.requester_id).await?;
            ledger::post(&mut tx, e.at, &e.postings(r.id, job.id)).await?;
            let forgiven = forgiven_debit(balance, e.requester_charge, floor);
            write_off(&mut tx, e.requester_id, forgiven, r.id, Some(job.id), e.at).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Stores jobs taken back from late workers (their images back in the queue, or the request
    /// faulted), the request's counters, the workers' reputations, any refund and the webhook
    /// calls announcing it.
    pub async fn save_taken_back<K: StoredKind>(
        &self,
        r: &LiveRequest<K>,
        jobs: &[Job],
        workers: &[(Uuid, Reputation)],
        refund: f64,
        webhooks: &[WebhookDelivery],
    ) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        write_request_state(&mut tx, r).await?;
        for job in jobs {
            write_job_result(&mut tx, job).await?;
        }
        crate::webhooks::enqueue(&mut tx, webhooks).await?;
        for (worker_id, reputation) in workers {
            write_reputation(&mut *tx, *worker_id, reputation).await?;
        }
        refund_fee(&mut tx, r, refund).await?;
        tx.commit().await?;
        Ok(())
    }

    /// One stored request with its jobs, as [`Store::load_requests`] loads them (`None` once
    /// it is deleted): what another coordinator changed.
    pub async fn load_request<K: JobKind>(&self, id: Uuid) -> Result<Option<LiveRequest<K>>> {
        Ok(self.load_requests_by_id(&[id]).await?.pop())
    }

    /// Stored requests of kind `K` among `ids`, with their jobs (deleted ones, and those of
    /// other kinds, are missing).
    pub async fn load_requests_by_id<K: JobKind>(
        &self,
        ids: &[Uuid],
    ) -> Result<Vec<LiveRequest<K>>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let ids: Vec<String> = chunk.iter().map(Uuid::to_string).collect();
            let mut placeholders = crate::Placeholders::new(self.backend);
            let list = placeholders.list(ids.len());
            let kind = placeholders.next();
            let sql = format!("SELECT * FROM requests WHERE id IN ({list}) AND kind = {kind}");
            let mut query = sqlx::query(&sql);
            for id in &ids {
                query = query.bind(id);
            }
            let mut requests: Vec<LiveRequest<K>> = query
                .bind(K::NAME)
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(request_from_row)
                .collect::<Result<_>>()?;
            let sql =
                format!("SELECT * FROM jobs WHERE request_id IN ({list}) ORDER BY started, rowid");
            let mut query = sqlx::query(&sql);
            for id in &ids {
                query = query.bind(id);
            }
            let jobs = query.fetch_all(&self.pool).await?;
            attach_jobs(&mut requests, &jobs)?;
            out.extend(requests);
        }
        Ok(out)
    }

    /// The stored version of request `id` (`None` once it is deleted): one look at its row,
    /// to tell whether a local copy is behind.
    pub async fn request_version(&self, id: Uuid) -> Result<Option<u64>> {
        let row = sqlx::query("SELECT version FROM requests WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| Ok(row.try_get::<i64, _>(0)? as u64))
            .transpose()
    }

    /// The request a job belongs to, if the job is stored.
    pub async fn request_id_of_job(&self, job_id: Uuid) -> Result<Option<Uuid>> {
        let row = sqlx::query("SELECT request_id FROM jobs WHERE id = $1")
            .bind(job_id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| parse_uuid(row.try_get(0)?)).transpose()
    }

    /// What `user_id` requested on UTC day `day`.
    pub async fn quota_usage(&self, user_id: i64, day: i64) -> Result<Usage> {
        let row = sqlx::query(
            "SELECT images, CAST(megapixelsteps AS DOUBLE PRECISION), texts, \
             CAST(tokens AS DOUBLE PRECISION) FROM quota_usage WHERE user_id = $1 AND day = $2",
        )
        .bind(user_id)
        .bind(day)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(row) => Usage {
                images: row.try_get::<i64, _>(0)? as u64,
                megapixelsteps: row.try_get(1)?,
                texts: row.try_get::<i64, _>(2)? as u64,
                tokens: row.try_get(3)?,
            },
            None => Usage::default(),
        })
    }

    /// Stores a request's counters (after a cancel, for instance), the reputations it changed
    /// and the webhook calls announcing it.
    pub async fn save_request_state<K: JobKind>(
        &self,
        r: &LiveRequest<K>,
        workers: &[(Uuid, Reputation)],
        webhooks: &[WebhookDelivery],
    ) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        write_request_state(&mut tx, r).await?;
        crate::webhooks::enqueue(&mut tx, webhooks).await?;
        for (worker_id, reputation) in workers {
            write_reputation(&mut *tx, *worker_id, reputation).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every stored request of kind `K` with its jobs: the kind's live state after a restart.
    pub async fn load_requests<K: JobKind>(&self) -> Result<Vec<LiveRequest<K>>> {
        let rows = sqlx::query("SELECT * FROM requests WHERE kind = $1 ORDER BY seq")
            .bind(K::NAME)
            .fetch_all(&self.pool)
            .await?;
        let mut requests: Vec<LiveRequest<K>> =
            rows.iter().map(request_from_row).collect::<Result<_>>()?;
        let job_rows = sqlx::query(
            "SELECT * FROM jobs WHERE request_id IN (SELECT id FROM requests WHERE kind = $1) \
             ORDER BY started, rowid",
        )
        .bind(K::NAME)
        .fetch_all(&self.pool)
        .await?;
        attach_jobs(&mut requests, &job_rows)?;
        Ok(requests)
    }

    /// Removes a request and its jobs.
    pub async fn delete_request(&self, id: Uuid) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        sqlx::query("DELETE FROM requests WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        crate::notify::request_changed(&mut tx, id, crate::notify::REMOVED).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Kudos charged to all stored requests (activation fees and delivered images).
    pub async fn charged_kudos(&self) -> Result<f64> {
        Ok(sqlx::query(
            "SELECT CAST(COALESCE(SUM(consumed_kudos), 0) AS DOUBLE PRECISION) FROM requests",
        )
        .fetch_one(&self.pool)
        .await?
        .try_get(0)?)
    }

    /// Active requests of a user (n still waiting or in flight), for the concurrency limit.
    pub async fn request_count(&self) -> Result<i64> {
        Ok(sqlx::query("SELECT COUNT(*) FROM requests")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?)
    }
}

/// Puts each job row under its request (rows of other requests are ignored).
fn attach_jobs<K: JobKind>(requests: &mut [LiveRequest<K>], job_rows: &[AnyRow]) -> Result<()> {
    let index: HashMap<Uuid, usize> = requests
        .iter()
        .enumerate()
        .map(|(i, r)| (r.id, i))
        .collect();
    for row in job_rows {
        let job = job_from_row(row)?;
        if let Some(&i) = index.get(&job.request_id) {
            requests[i].jobs.push(job);
        }
    }
    Ok(())
}

/// Gives a faulted request's activation fee back (`refund` 0: nothing).
async fn refund_fee<K: JobKind>(
    tx: &mut Transaction<'_, Any>,
    r: &LiveRequest<K>,
    refund: f64,
) -> Result<()> {
    if refund <= 0.0 {
        return Ok(());
    }
    let with = |account, amount, counterparty| Posting {
        counterparty: Some(counterparty),
        request_id: Some(r.id),
        ..Posting::new(account, amount, Kind::Refund)
    };
    let postings = [
        with(r.user_id, refund, HORDE_ACCOUNT),
        with(HORDE_ACCOUNT, -refund, r.user_id),
    ];
    ledger::post(tx, r.created, &postings).await
}

/// A user's balance and balance floor, read inside a transaction.
async fn balance_and_floor(tx: &mut Transaction<'_, Any>, user_id: i64) -> Result<(f64, f64)> {
    let row =
        sqlx::query("SELECT CAST(kudos AS DOUBLE PRECISION), oauth_id FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_one(&mut **tx)
            .await?;
    let oauth: String = row.try_get(1)?;
    let floor = kudos_floor(user_id, crate::users::is_pseudonymous(&oauth));
    Ok((row.try_get(0)?, floor))
}

/// Writes off `forgiven` kudos of a debit that went below the requester's floor.
async fn write_off(
    tx: &mut Transaction<'_, Any>,
    user_id: i64,
    forgiven: f64,
    request_id: Uuid,
    job_id: Option<Uuid>,
    at: i64,
) -> Result<()> {
    if forgiven <= 0.0 {
        return Ok(());
    }
    let with = |account, amount, counterparty| Posting {
        counterparty: Some(counterparty),
        request_id: Some(request_id),
        job_id,
        ..Posting::new(account, amount, Kind::Floor)
    };
    let postings = [
        with(user_id, forgiven, HORDE_ACCOUNT),
        with(HORDE_ACCOUNT, -forgiven, user_id),
    ];
    ledger::post(tx, at, &postings).await
}
