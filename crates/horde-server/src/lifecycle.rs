//! A request's life in the coordinator, written once for every kind of work
//! ([`ServedKind`]): admitted to the queue, its jobs handed out and stored, results applied and
//! stored with their kudos, statistics and reputations, late jobs taken back, cancelled, and
//! removed once expired. Every change is made in memory holding the kind's write turn, stored,
//! and retried from the stored copy when another coordinator changed the row first
//! (`live_requests::retry_on_conflict`).
//!
//! What is not here is each kind's own: its wire types, the rules a request must pass before it
//! is admitted, the answer a pop gives a worker, and how a result is checked and kept (for
//! images: `requests.rs`, `jobs.rs`, `images.rs`).

use crate::clock::now;
use crate::error::{refused, ApiError, ApiResult};
use crate::kinds::ServedKind;
use crate::live_requests::{changed_too_often, retry_on_conflict, Attempt, WriteTurn};
use crate::state::AppState;
use crate::webhooks;
use crate::workers::WorkerEntry;
use horde_api::image::GenMetadata;
use horde_api::image::SubmitState;
use horde_api::Rc;
use horde_core::accounts::User;
use horde_core::alchemy::Alchemy;
use horde_core::deadline::load_allowance_secs;
use horde_core::request::{Job, JobState, LiveRequest, SubmitRefusal};
use horde_core::text::Text;
use horde_core::{pricing, Assignment, DeadlineTerms, Image, PopOutcome, Reputation, Standby};
use horde_store::{StoreError, SubmitEffects};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use uuid::Uuid;

/// A request that passed its kind's rules, before it is numbered and admitted.
pub struct NewRequest<K: ServedKind> {
    pub body: K::Body,
    /// The seed the requester set, if any (`JobKind::next_seed` derives each job's from it).
    pub base_seed: Option<u64>,
    /// How many jobs it asks for.
    pub jobs: u32,
    /// The shared key (hash) it was made with, whose budget pays for it too.
    pub shared_key: Option<String>,
    /// The batch of prompts it is a member of (`batches.rs`), if any.
    pub batch_id: Option<Uuid>,
    /// Its place in the batch's prompts (0 alone).
    pub batch_index: u32,
}

/// A worker's result for one job, as every kind submits it.
pub struct JobResult<'a> {
    pub job_id: Uuid,
    pub state: SubmitState,
    pub seed: Option<u64>,
    pub gen_metadata: Vec<GenMetadata>,
    /// The result's bytes, checked by the kind and staged under the job's id (committed with
    /// the job's change); `None` for a faulted job or one whose result was uploaded before.
    pub staged: Option<&'a Path>,
    /// The delivered text, for a kind whose reward depends on it (texts); `None` otherwise.
    pub text: Option<&'a str>,
}

/// Why a submission was not stored.
enum SubmitError {
    /// Another coordinator changed the request first: reload it and apply the result again.
    Conflict(Uuid),
    /// The database refused the write or could not be reached: the stored copy of request
    /// `.0` is put back in place of the local change, and the worker told.
    Failed(Uuid, ApiError),
    Api(ApiError),
}

impl From<ApiError> for SubmitError {
    fn from(error: ApiError) -> Self {
        SubmitError::Api(error)
    }
}

impl AppState {
    /// Numbers `new` (its place in the queue), charges its activation fee and stores it (many
    /// to a transaction: `group_commit`). The caller queues the stored request with
    /// `LiveRequests::insert` once it has answered what it needs from it.
    pub(crate) async fn admit<K: ServedKind>(
        &self,
        user: &User,
        new: NewRequest<K>,
        now: i64,
    ) -> ApiResult<LiveRequest<K>> {
        let request = self.numbered(user, new, now);
        K::live(self).commit_new(request).await
    }

    /// `new` as a live request of `user`, numbered (its place in the queue) and with its
    /// activation fee, not yet stored.
    pub(crate) fn numbered<K: ServedKind>(
        &self,
        user: &User,
        new: NewRequest<K>,
        now: i64,
    ) -> LiveRequest<K> {
        let live = K::live(self);
        let job_kudos = K::job_kudos(&new.body);
        LiveRequest {
            // Time-ordered (UUIDv7, 74 random bits): new rows land at the end of the id index
            // instead of on a random page, which halves what each commit writes.
            id: Uuid::now_v7(),
            user_id: user.id,
            body: new.body,
            base_seed: new.base_seed,
            created: now,
            seq: live.next_seq(),
            priority: user.queue_priority(),
            n_remaining: new.jobs,
            jobs_total: new.jobs,
            job_kudos,
            consumed_kudos: pricing::ACTIVATION_FEE,
            faulted: false,
            cancelled: false,
            can_pay_upfront: user.trusted || user.kudos - user.min_kudos() >= job_kudos,
            shared_key: new.shared_key,
            expiry: now + self.config.requests.idle_expiry_secs,
            version: 0,
            batch_id: new.batch_id,
            batch_index: new.batch_index,
            jobs: vec![],
        }
    }

    /// The queue's pick of kind `K` for the worker of `entry`, noted in its standby state. With
    /// `share_passes` (the worker runs a prompt per job), requests that share the pick's pass
    /// join it (`Queue::add_companions`).
    pub(crate) fn pop_from_queue<K: ServedKind>(
        &self,
        entry: &WorkerEntry,
        now: i64,
        share_passes: bool,
    ) -> PopOutcome {
        let caps = K::caps(self, entry);
        let mut standby = self.standby_for::<K>(entry, &caps, now);
        let terms = DeadlineTerms {
            speed: entry.worker.reputation.recent_speed_mps,
            bounds: self.config.jobs.deadline_bounds(),
        };
        let outcome = K::live(self).change(|queue| {
            let name = &entry.worker.name;
            let mut rng = rand::rng();
            let mut outcome = queue.pop(&caps, name, now, terms, &mut standby, &mut rng);
            if let (true, PopOutcome::Assigned(assignment)) = (share_passes, &mut outcome) {
                queue.add_companions(assignment, &caps, name, now, terms, &mut rng);
            }
            if let PopOutcome::Assigned(assignment) = &mut outcome {
                let load_secs = entry.hardware.as_ref().map(|h| h.load_secs);
                let loaded = entry.loaded_models.as_deref();
                let allowance = load_allowance_secs(&assignment.model, loaded, load_secs);
                extend_deadlines(queue, assignment, allowance);
            }
            outcome
        });
        self.workers.change(|registry| {
            if let Some(live) = registry.get_mut(entry.worker.id) {
                live.waiting_since = match &outcome {
                    PopOutcome::Nothing(_) => live.waiting_since.or(Some(now)),
                    PopOutcome::Assigned(_) => None,
                };
            }
        });
        outcome
    }

    /// The more reliable workers waiting for work while `entry` (seen by matching as `caps`)
    /// pops, and, when it declared the models it holds, the waiting workers holding theirs
    /// (none when nothing waits in the queue, or routing by reliability is off).
    fn standby_for<K: ServedKind>(
        &self,
        entry: &WorkerEntry,
        caps: &K::Caps,
        now: i64,
    ) -> Standby<K> {
        let hold = self.config.workers.reliability_hold_secs;
        if hold <= 0 || K::live(self).waiting_count() == 0 {
            return Standby::none();
        }
        let rules = self.config.workers.reputation_rules();
        let loaded = entry.loaded_models.as_deref();
        let (better, holders) = self.workers.read(|registry| {
            let better =
                registry.standing_by_better_than(entry, now, hold, &rules, K::standby_caps);
            let holders = match loaded {
                Some(_) => registry.standing_by_holding(entry, now, hold, &rules, K::standby_caps),
                None => vec![],
            };
            (better, holders)
        });
        Standby::new(better, now, hold).with_holders(caps, loaded, holders)
    }

    /// Stores the jobs of `assignment` as handed out, with their request (whose idle expiry
    /// moves on); `Conflicted` when another coordinator changed the request first (the local
    /// copy is then reloaded, and the pop should be tried again).
    pub(crate) async fn store_hand_out<K: ServedKind>(
        &self,
        turn: &WriteTurn<'_>,
        assignment: &Assignment,
        now: i64,
    ) -> ApiResult<Attempt<LiveRequest<K>>> {
        let live = K::live(self);
        let idle_expiry = self.config.requests.idle_expiry_secs;
        let request = live
            .update(assignment.request_id, |r| {
                r.expiry = r.expiry.max(now + idle_expiry);
                r.version += 1;
                r.clone()
            })
            .ok_or_else(|| ApiError::internal("assigned request vanished"))?;
        let stored = self
            .metrics
            .time_commit(self.store.save_assignment(&request, &assignment.jobs))
            .await;
        match stored {
            Err(StoreError::Conflict(id)) => {
                self.resync_request_ordered::<K>(turn, id).await?;
                return Ok(Attempt::Conflicted);
            }
            Err(error) => {
                self.restore_after_failed_write::<K>(turn, request.id, [])
                    .await;
                return Err(error.into());
            }
            Ok(()) => {}
        }
        live.note_handed_out(&assignment.jobs, crate::clock::now_ms());
        self.metrics.jobs_handed_out(assignment.jobs.len());
        Ok(Attempt::Stored(request))
    }

    /// Applies a worker's result for a job of kind `K` and stores it with its effects (kudos,
    /// statistics, reputation), reloading and applying again when another coordinator changed
    /// the request first. The caller holds the kind's write turn and has checked and staged
    /// the result. Answers the worker's reward.
    pub(crate) async fn finish_job<K: ServedKind>(
        &self,
        turn: &WriteTurn<'_>,
        user: &User,
        result: &JobResult<'_>,
    ) -> ApiResult<f64> {
        retry_on_conflict(|| async move {
            let (request, job) = self.job_for_submit::<K>(user, result.job_id)?;
            match self.apply_result(result, &request, &job).await {
                Err(SubmitError::Conflict(id)) => {
                    self.reload_reputation(job.worker_id).await?;
                    self.resync_request_ordered::<K>(turn, id).await?;
                    Ok(Attempt::Conflicted)
                }
                Err(SubmitError::Failed(id, error)) => {
                    self.restore_after_failed_write::<K>(turn, id, [job.worker_id])
                        .await;
                    Err(error)
                }
                Err(SubmitError::Api(error)) => Err(error),
                Ok(reward) => Ok(Attempt::Stored(reward)),
            }
        })
        .await
        .and_then(|answer| answer.ok_or_else(|| changed_too_often("request")))
    }

    /// One attempt of [`AppState::finish_job`].
    async fn apply_result<K: ServedKind>(
        &self,
        result: &JobResult<'_>,
        request: &LiveRequest<K>,
        job: &Job,
    ) -> Result<f64, SubmitError> {
        let worker = self.workers.get(job.worker_id);
        let reward = if result.state == SubmitState::Faulted {
            0.0
        } else {
            K::worker_reward(self, request, &job.model, worker.as_ref(), result)
        };
        let now = now();
        let retention = self.config.requests.retention_secs;
        let applied = K::live(self).update(request.id, |r| {
            let before_done = r.is_done();
            let applied = r
                .apply_submit(
                    result.job_id,
                    result.state,
                    result.seed,
                    result.gen_metadata.clone(),
                    reward,
                    self.config.jobs.max_restarts,
                )
                .cloned();
            let mut refund = 0.0;
            if let Ok(job) = &applied {
                if job.state.is_finished() && !job.censored {
                    let charge = K::requester_charge(&r.body, K::reward_basis(self, r, &job.model));
                    r.consumed_kudos = pricing::consumed_after(r.consumed_kudos, charge);
                }
                refund = r.refund_if_faulted_unserved(pricing::ACTIVATION_FEE);
                if r.is_done() {
                    r.expiry = now + retention;
                }
                r.version += 1;
            }
            (applied, r.clone(), refund, before_done)
        });
        let Some((applied, updated, refund, before_done)) = applied else {
            return Err(invalid_job(&result.job_id.to_string()).into());
        };
        let job = applied.map_err(refused)?;
        if let Some(staged) = result.staged {
            self.images.commit(staged, job.id).await?;
        }
        let effects = job
            .state
            .is_finished()
            .then(|| self.submit_effects(&updated, &job, worker.as_ref()));
        let webhooks = webhooks::deliveries_for(self, before_done, &updated, Some(&job)).await;
        let job_secs = self.job_secs::<K>(&job, now);
        let reputation = self.record_result(&job, job_secs, effects.as_ref(), now);
        let stored = self
            .metrics
            .time_commit(self.store.save_submit(
                &updated,
                &job,
                effects.as_ref(),
                reputation.as_ref().map(|r| (job.worker_id, r)),
                refund,
                &webhooks,
            ))
            .await;
        match stored {
            Err(StoreError::Conflict(_) | StoreError::WorkerConflict(_)) => {
                return Err(SubmitError::Conflict(updated.id))
            }
            Err(error) => return Err(SubmitError::Failed(updated.id, error.into())),
            Ok(()) => {}
        }
        self.metrics.job_finished(job.state);
        self.webhooks.stored(&webhooks);
        if let Some(reputation) = &reputation {
            self.note_reputations_stored([(job.worker_id, reputation)]);
        }
        if let Some(e) = &effects {
            K::note_speed(self, &job.model, now, e.work / job_secs.max(1.0));
        }
        Ok(job.reward)
    }

    /// How long `job` took, in seconds: from the millisecond it was handed out, or from its
    /// stored start (whole seconds) after a restart.
    fn job_secs<K: ServedKind>(&self, job: &Job, now: i64) -> f64 {
        match K::live(self).take_handed_out(job.id) {
            Some(at) => crate::clock::now_ms().saturating_sub(at) as f64 / 1000.0,
            None => (now - job.started) as f64,
        }
    }

    /// The request and job of kind `K` a submission names, checking the submitter owns the
    /// job's worker and the job still waits for its result.
    pub(crate) fn job_for_submit<K: ServedKind>(
        &self,
        user: &User,
        job_id: Uuid,
    ) -> ApiResult<(LiveRequest<K>, Job)> {
        let (request, job) = K::live(self)
            .read(|queue| {
                let request = queue.request_of_job(job_id)?;
                Some((request.clone(), request.job(job_id)?.clone()))
            })
            .ok_or_else(|| invalid_job(&job_id.to_string()))?;
        let owner = self
            .workers
            .read(|registry| registry.get(job.worker_id).map(|w| w.worker.user_id));
        if owner != Some(user.id) {
            return Err(ApiError::new(
                Rc::WrongCredentials,
                "Wrong credentials to submit as this worker.",
            ));
        }
        match job.state {
            JobState::Processing => Ok((request, job)),
            JobState::Faulted => Err(refused(SubmitRefusal::Aborted)),
            _ => Err(refused(SubmitRefusal::Duplicate)),
        }
    }

    /// The kudos and statistics a delivered job moves.
    fn submit_effects<K: ServedKind>(
        &self,
        request: &LiveRequest<K>,
        job: &Job,
        worker: Option<&WorkerEntry>,
    ) -> SubmitEffects {
        SubmitEffects {
            requester_id: request.user_id,
            requester_charge: if job.censored {
                0.0
            } else {
                K::requester_charge(&request.body, K::reward_basis(self, request, &job.model))
            },
            worker_id: job.worker_id,
            worker_owner_id: worker.map(|w| w.worker.user_id).unwrap_or_default(),
            worker_owner_trusted: worker.is_some_and(|w| w.owner_trusted),
            reward: job.reward,
            work: K::work(&request.body, 1),
            at: now(),
            shared_key: request.shared_key.clone(),
        }
    }

    /// Enters a submitted job in its worker's reputation (and its reward in the worker's
    /// earnings); returns the reputation to store, or `None` for an unknown worker.
    fn record_result(
        &self,
        job: &Job,
        job_secs: f64,
        effects: Option<&SubmitEffects>,
        now: i64,
    ) -> Option<Reputation> {
        let rules = self.config.workers.reputation_rules();
        self.workers.change(|registry| {
            let entry = registry.get_mut(job.worker_id)?;
            let rules = match entry.worker.flags.text {
                Some(_) => rules.for_text(),
                None => rules,
            };
            let reputation = &mut entry.worker.reputation;
            let raised = match effects {
                Some(e) => {
                    entry.worker.kudos_generated += e.reward;
                    reputation.record_completed(e.work, job_secs, now, &rules)
                }
                None if job.state == JobState::Faulted => reputation.record_faulted(now, &rules),
                None => None,
            };
            if let Some(reason) = raised {
                tracing::warn!(worker = %entry.worker.name, ?reason, suspicion = reputation.suspicion, "worker suspected");
            }
            Some(reputation.clone())
        })
    }

    /// Takes back the jobs of every kind whose deadline passed (the sweeper calls this);
    /// returns how many.
    pub async fn take_back_late_jobs(&self, now: i64) -> ApiResult<usize> {
        Ok(self.take_back_late_jobs_of::<Image>(now).await?
            + self.take_back_late_jobs_of::<Text>(now).await?
            + self.take_back_late_jobs_of::<Alchemy>(now).await?)
    }

    /// Takes back jobs of kind `K` whose deadline passed: their work goes back to the queue
    /// (or the request faults after too many), the change is stored, and the late workers are
    /// counted.
    async fn take_back_late_jobs_of<K: ServedKind>(&self, now: i64) -> ApiResult<usize> {
        let live = K::live(self);
        let turn = live.write_turn().await;
        // Each request with late jobs, as it stands after all of them were taken back.
        let taken: Vec<(LiveRequest<K>, Vec<Job>, f64, bool)> = live.change(|queue| {
            let done_before: HashSet<Uuid> = queue
                .in_flight()
                .filter(|(_, r)| r.is_done())
                .map(|(_, r)| r.id)
                .collect();
            let mut late: BTreeMap<Uuid, Vec<Uuid>> = BTreeMap::new();
            for (request_id, job_id) in
                queue.take_back_late_jobs(now, self.config.jobs.max_restarts)
            {
                late.entry(request_id).or_default().push(job_id);
            }
            late.into_iter()
                .filter_map(|(request_id, job_ids)| {
                    let (request, refund) = queue.update(request_id, |r| {
                        r.version += 1;
                        let refund = r.refund_if_faulted_unserved(pricing::ACTIVATION_FEE);
                        (r.clone(), refund)
                    })?;
                    let jobs = job_ids
                        .iter()
                        .filter_map(|id| request.job(*id).cloned())
                        .collect();
                    let before_done = done_before.contains(&request_id);
                    Some((request, jobs, refund, before_done))
                })
                .collect()
        });
        let mut count = 0;
        for (request, jobs, refund, before_done) in &taken {
            let reputations = self.count_timed_out(request.id, jobs);
            let webhooks = webhooks::deliveries_for(self, *before_done, request, None).await;
            let stored = self
                .metrics
                .time_commit(self.store.save_taken_back(
                    request,
                    jobs,
                    &reputations,
                    *refund,
                    &webhooks,
                ))
                .await;
            match stored {
                // Another coordinator changed it first; its stored copy decides next time.
                Err(StoreError::Conflict(_) | StoreError::WorkerConflict(_)) => {
                    for (worker_id, _) in &reputations {
                        self.reload_reputation(*worker_id).await?;
                    }
                    self.resync_request_ordered::<K>(&turn, request.id).await?;
                }
                // The database refused: this request stays as stored, its late jobs are taken
                // back at the next sweep; the other requests' take-backs go on.
                Err(error) => {
                    tracing::error!(request = %request.id, %error, "could not store jobs taken back");
                    let workers: Vec<Uuid> = reputations.iter().map(|(id, _)| *id).collect();
                    self.restore_after_failed_write::<K>(&turn, request.id, workers)
                        .await;
                }
                Ok(()) => {
                    self.note_reputations_stored(reputations.iter().map(|(id, r)| (*id, r)));
                    self.metrics.jobs_taken_back(jobs.len());
                    self.webhooks.stored(&webhooks);
                    count += jobs.len();
                }
            }
        }
        Ok(count)
    }

    /// After a write of request `id` failed for another reason than a conflict (the database
    /// refused it or could not be reached), puts the stored copy back in place of the local
    /// change, and the stored reputations of `workers`. Left alone, the local copy would hold
    /// jobs never stored under a version the database never had: a pop would skip the images
    /// it thinks handed out, and another coordinator's change announced with that same version
    /// would be taken for this one, leaving the copy behind for good.
    pub(crate) async fn restore_after_failed_write<K: ServedKind>(
        &self,
        turn: &WriteTurn<'_>,
        id: Uuid,
        workers: impl IntoIterator<Item = Uuid>,
    ) {
        for worker_id in workers {
            if let Err(error) = self.reload_reputation(worker_id).await {
                tracing::error!(worker = %worker_id, error = ?error.body, "could not reload a reputation after a failed write");
            }
        }
        if let Err(error) = self.resync_request_ordered::<K>(turn, id).await {
            tracing::error!(request = %id, error = ?error.body, "could not reload a request after a failed write");
        }
    }

    /// Enters the late `jobs` of request `request_id` in their workers' reputations; returns
    /// the reputations to store, one per worker.
    fn count_timed_out(&self, request_id: Uuid, jobs: &[Job]) -> Vec<(Uuid, Reputation)> {
        let mut reputations: Vec<(Uuid, Reputation)> = vec![];
        for job in jobs {
            tracing::warn!(job = %job.id, worker = %job.worker_name, request = %request_id, "job deadline passed; taken back");
            let reputation = self.workers.change(|registry| {
                let entry = registry.get_mut(job.worker_id)?;
                entry.worker.reputation.record_timed_out();
                Some(entry.worker.reputation.clone())
            });
            if let Some(reputation) = reputation {
                reputations.retain(|(id, _)| *id != job.worker_id);
                reputations.push((job.worker_id, reputation));
            }
        }
        reputations
    }

    /// Cancels request `request_id` of kind `K`: nothing more is handed out, finished results
    /// stay, jobs in flight may still finish and are paid; their workers' reputations count
    /// the cancel.
    pub(crate) async fn cancel<K: ServedKind>(&self, request_id: Uuid) -> ApiResult<()> {
        let now = now();
        let retention = self.config.requests.retention_secs;
        let live = K::live(self);
        let turn = &live.write_turn().await;
        self.load_request_ordered::<K>(turn, request_id).await?;
        let stored = retry_on_conflict(|| async move {
            let (updated, was_cancelled, before_done) = live
                .update(request_id, |r| {
                    let was_cancelled = r.cancelled;
                    let before_done = r.is_done();
                    r.cancel();
                    if r.is_done() {
                        r.expiry = now + retention;
                    }
                    r.version += 1;
                    (r.clone(), was_cancelled, before_done)
                })
                .ok_or_else(|| not_found(request_id))?;
            let interrupted = if was_cancelled {
                vec![]
            } else {
                self.count_cancelled_jobs(&updated)
            };
            let webhooks = webhooks::deliveries_for(self, before_done, &updated, None).await;
            let stored = self
                .metrics
                .time_commit(
                    self.store
                        .save_request_state(&updated, &interrupted, &webhooks),
                )
                .await;
            match stored {
                // Another coordinator changed the request (or a worker's reputation) first:
                // cancel the stored copy.
                Err(StoreError::Conflict(_) | StoreError::WorkerConflict(_)) => {
                    for (worker_id, _) in &interrupted {
                        self.reload_reputation(*worker_id).await?;
                    }
                    self.resync_request_ordered::<K>(turn, request_id).await?;
                    Ok(Attempt::Conflicted)
                }
                Err(error) => {
                    let workers: Vec<Uuid> = interrupted.iter().map(|(id, _)| *id).collect();
                    self.restore_after_failed_write::<K>(turn, request_id, workers)
                        .await;
                    Err(error.into())
                }
                Ok(()) => {
                    self.note_reputations_stored(interrupted.iter().map(|(id, r)| (*id, r)));
                    self.webhooks.stored(&webhooks);
                    Ok(Attempt::Stored(()))
                }
            }
        })
        .await?;
        stored.ok_or_else(|| changed_too_often("request"))
    }

    /// Enters the jobs of `request` still in flight as cancelled in their workers' reputations;
    /// returns the reputations to store.
    fn count_cancelled_jobs<K: ServedKind>(
        &self,
        request: &LiveRequest<K>,
    ) -> Vec<(Uuid, Reputation)> {
        self.workers.change(|registry| {
            let mut changed: Vec<(Uuid, Reputation)> = vec![];
            for job in request
                .jobs
                .iter()
                .filter(|j| j.state == JobState::Processing)
            {
                if let Some(entry) = registry.get_mut(job.worker_id) {
                    entry.worker.reputation.record_cancelled();
                    changed.retain(|(id, _)| *id != job.worker_id);
                    changed.push((job.worker_id, entry.worker.reputation.clone()));
                }
            }
            changed
        })
    }

    /// Removes requests of every kind whose time is up and nothing of which is in flight;
    /// returns how many.
    pub async fn sweep_expired(&self, now: i64) -> ApiResult<usize> {
        let removed = self.sweep_expired_of::<Image>(now).await?
            + self.sweep_expired_of::<Text>(now).await?
            + self.sweep_expired_of::<Alchemy>(now).await?;
        self.images.sweep_orphan_sources(&self.store, now).await;
        Ok(removed)
    }

    /// [`AppState::sweep_expired`] for the requests of kind `K`, with their kept results.
    async fn sweep_expired_of<K: ServedKind>(&self, now: i64) -> ApiResult<usize> {
        let live = K::live(self);
        let _turn = live.write_turn().await;
        let expired: Vec<LiveRequest<K>> = live.change(|queue| {
            let ids: Vec<Uuid> = queue
                .expired(now)
                .into_iter()
                .filter(|id| {
                    queue
                        .get(*id)
                        .is_some_and(|r| r.jobs.iter().all(|j| j.state != JobState::Processing))
                })
                .collect();
            ids.into_iter().filter_map(|id| queue.remove(id)).collect()
        });
        for request in &expired {
            self.store.delete_request(request.id).await?;
            for job in &request.jobs {
                self.images.remove(job.id).await;
            }
            self.images.remove_sources(request.id).await;
        }
        Ok(expired.len())
    }
}

/// Moves the deadline of every job of `assignment` (and of its companions) `secs` later, in the
/// queue and in the assignment: the time the worker needs to load the model first.
fn extend_deadlines<K: ServedKind>(
    queue: &mut crate::live_requests::QueueChange<'_, K>,
    assignment: &mut Assignment,
    secs: i64,
) {
    if secs == 0 {
        return;
    }
    let ids: HashSet<Uuid> = assignment.jobs.iter().map(|j| j.id).collect();
    queue.update(assignment.request_id, |r| {
        for job in r.jobs.iter_mut().filter(|j| ids.contains(&j.id)) {
            job.deadline += secs;
        }
    });
    for job in &mut assignment.jobs {
        job.deadline += secs;
    }
    for companion in &mut assignment.companions {
        extend_deadlines(queue, companion, secs);
    }
}

/// The answer for a job this coordinator does not hold in flight.
pub(crate) fn invalid_job(id: &str) -> ApiError {
    ApiError::new(
        Rc::InvalidJobID,
        format!("Processing Generation with ID {id} does not exist."),
    )
}

/// The answer for a request that is not live.
pub(crate) fn not_found(id: Uuid) -> ApiError {
    ApiError::new(
        Rc::RequestNotFound,
        format!("Request with ID '{id}' not found."),
    )
}
