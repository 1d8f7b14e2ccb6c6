//! Jobs from the worker's side: pop, upload, submit.

use crate::clock::now;
use crate::error::{refused, ApiError, ApiResult};
use crate::images::{check_image, ImageRefusal};
use crate::live_requests::{changed_too_often, retry_on_conflict, Attempt, WriteTurn};
use crate::state::AppState;
use base64::Engine;
use horde_api::image::{JobPayload, PopRequest, PopResponse, SubmitRequest, SubmitResponse};
use horde_api::Rc;
use horde_core::accounts::User;
use horde_core::keys::{sign_upload, verify_upload};
use horde_core::request::{Job, JobState, LiveRequest, SubmitRefusal};
use horde_core::{
    pricing, Assignment, DeadlineTerms, PopOutcome, Reputation, Standby, SuspicionReason,
};
use horde_store::{StoreError, SubmitEffects};
use std::collections::BTreeMap;

use uuid::Uuid;

fn payload_of(request: &LiveRequest, first: &Job, batch: u32) -> JobPayload {
    let body = &request.body;
    let p = &body.params;
    JobPayload {
        prompt: body.prompt.clone(),
        sampler_name: p.sampler_name,
        cfg_scale: p.cfg_scale,
        denoising_strength: p.denoising_strength,
        hires_fix_denoising_strength: p.hires_fix_denoising_strength,
        seed: first.seed.to_string(),
        height: p.height,
        width: p.width,
        seed_variation: p.seed_variation,
        post_processing: p.post_processing.clone(),
        karras: p.karras,
        tiling: p.tiling,
        hires_fix: p.hires_fix,
        clip_skip: p.clip_skip,
        control_type: p.control_type,
        image_is_control: p.image_is_control,
        return_control_map: p.return_control_map,
        facefixer_strength: p.facefixer_strength,
        loras: p.loras.clone(),
        tis: p.tis.clone(),
        special: p.special.clone(),
        use_nsfw_censor: !body.nsfw && body.censor_nsfw,
        ddim_steps: p.effective_steps(),
        n_iter: batch,
    }
}

impl AppState {
    pub async fn pop(&self, user: &User, pop: PopRequest) -> ApiResult<PopResponse> {
        if user.flagged {
            return Err(ApiError::new(
                Rc::WorkerFlaggedMaintenance,
                "Your account is flagged: your workers cannot take jobs.",
            ));
        }
        pop.validate().map_err(ApiError::validation)?;
        let (servable, ignored) = self.servable_models(user, &pop.models);
        if servable.is_empty() {
            return Err(ApiError::new(
                Rc::UnsupportedModel,
                format!(
                    "This horde cannot accept workers serving only unrecognised models ({}); serve models of its reference, or ask for the customizer role.",
                    ignored.join(", ")
                ),
            ));
        }
        let pop = PopRequest {
            models: servable,
            ..pop
        };
        let notice = ignored_models_notice(&ignored);
        let mut answer = self.pop_checked_in(user, pop).await?;
        answer.messages.extend(notice);
        Ok(answer)
    }

    async fn pop_checked_in(&self, user: &User, pop: PopRequest) -> ApiResult<PopResponse> {
        let entry = self.check_in(user, &pop).await?;
        if entry.worker.paused {
            return Ok(PopResponse::empty(Default::default()));
        }
        let reputation = &entry.worker.reputation;
        if reputation.is_suspended(&self.config.workers.reputation_rules()) {
            return Err(ApiError::new(
                Rc::WorkerFlaggedMaintenance,
                format!(
                    "This worker is suspended: its suspicion is {} (threshold {}). See \
                     /api/v2/workers/{} for the reasons; a moderator must clear it.",
                    reputation.suspicion, self.config.workers.suspicion_threshold, entry.worker.id
                ),
            ));
        }
        let now = now();
        let turn = self.live.write_turn().await;
        // Another coordinator sharing the database may have taken the request first: its
        // stored copy is reloaded and the pop tried again.
        let (entry, turn) = (&entry, &turn);
        let answer = retry_on_conflict(|| async move {
            match self.pop_from_queue(entry, now) {
                PopOutcome::Nothing(skipped) => {
                    if entry.worker.maintenance {
                        let msg = entry.worker.maintenance_msg.clone().unwrap_or_else(|| {
                            "This worker has been put into maintenance mode by its owner.".into()
                        });
                        return Err(ApiError::new(Rc::WorkerMaintenance, msg));
                    }
                    Ok(Attempt::Stored(PopResponse::empty(skipped)))
                }
                PopOutcome::Assigned(assignment) => {
                    let extra_slow = entry.worker.flags.extra_slow_worker;
                    Ok(self.hand_out(turn, assignment, extra_slow, now).await?)
                }
            }
        })
        .await?;
        Ok(answer.unwrap_or_else(|| PopResponse::empty(Default::default())))
    }

    /// The queue's pick for the worker of `entry`, noted in its standby state.
    fn pop_from_queue(&self, entry: &crate::workers::WorkerEntry, now: i64) -> PopOutcome {
        let mut standby = self.standby_for(entry, now);
        let terms = DeadlineTerms {
            speed: entry.worker.reputation.recent_speed_mps,
            bounds: self.config.jobs.deadline_bounds(),
        };
        let caps = self.matching_view().caps(entry);
        let outcome = self.live.change(|queue| {
            let name = &entry.worker.name;
            queue.pop(&caps, name, now, terms, &mut standby, &mut rand::rng())
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

    /// The more reliable workers waiting for work while `entry` pops (none when nothing waits
    /// in the queue, or routing by reliability is off).
    fn standby_for(&self, entry: &crate::workers::WorkerEntry, now: i64) -> Standby {
        let hold = self.config.workers.reliability_hold_secs;
        if hold <= 0 || self.live.waiting_count() == 0 {
            return Standby::none();
        }
        let rules = self.config.workers.reputation_rules();
        let better = self
            .workers
            .read(|registry| registry.standing_by_better_than(entry, now, hold, &rules));
        Standby::new(better, now, hold)
    }

    /// Stores the assignment and answers it; `Conflicted` when another coordinator changed
    /// the request first (the local copy is then reloaded, and the pop should be tried again).
    async fn hand_out(
        &self,
        turn: &WriteTurn<'_>,
        assignment: Assignment,
        extra_slow: bool,
        now: i64,
    ) -> ApiResult<Attempt<PopResponse>> {
        let idle_expiry = self.config.requests.idle_expiry_secs;
        let request = self
            .live
            .update(assignment.request_id, |r| {
                r.expiry = r.expiry.max(now + idle_expiry);
                r.version += 1;
                r.clone()
            })
            .ok_or_else(|| ApiError::internal("assigned request vanished"))?;
        match self.store.save_assignment(&request, &assignment.jobs).await {
            Err(StoreError::Conflict(id)) => {
                self.resync_request_ordered(turn, id).await?;
                return Ok(Attempt::Conflicted);
            }
            other => other?,
        }
        self.live
            .note_handed_out(&assignment.jobs, crate::clock::now_ms());
        let first = &assignment.jobs[0];
        let ids: Vec<String> = assignment.jobs.iter().map(|j| j.id.to_string()).collect();
        // Upload URLs whatever `r2` the request had, as the public pop: `r2` decides only how
        // the client gets the images.
        let uploads: Vec<String> = assignment
            .jobs
            .iter()
            .map(|j| self.upload_url(j.id, now))
            .collect();
        let baseline = self.model_reference().baseline_of(&assignment.model);
        let ttl = horde_core::ttl::job_ttl_secs(&request.body.params, &baseline, extra_slow);
        let payload = payload_of(&request, first, assignment.jobs.len() as u32);
        Ok(Attempt::Stored(PopResponse {
            payload: serde_json::to_value(payload).map_err(ApiError::internal)?,
            id: Some(first.id.to_string()),
            ids,
            skipped: Default::default(),
            model: Some(assignment.model),
            source_image: request.body.source_image.clone(),
            source_processing: request.body.source_processing,
            source_mask: request.body.source_mask.clone(),
            extra_source_images: request.body.extra_source_images.clone(),
            r2_upload: uploads.first().cloned(),
            r2_uploads: uploads,
            messages: vec![],
            ttl: Some(ttl),
        }))
    }

    /// A signed, expiring URL where the worker PUTs the image of `job_id`.
    fn upload_url(&self, job_id: Uuid, now: i64) -> String {
        let expires = now + self.config.requests.upload_url_ttl_secs;
        let sig = sign_upload(&self.upload_secret, &job_id.to_string(), expires);
        format!(
            "{}/api/v2/uploads/{job_id}?expires={expires}&sig={sig}",
            self.public_url
        )
    }

    /// Stores an image PUT to an upload URL: signature, expiry, single use, size and format
    /// are all checked.
    pub async fn upload(
        &self,
        job_id: &str,
        expires: i64,
        sig: &str,
        bytes: Vec<u8>,
    ) -> ApiResult<()> {
        let job_id =
            Uuid::parse_str(job_id).map_err(|_| ApiError::new(Rc::InvalidJobID, "Unknown job."))?;
        if !verify_upload(&self.upload_secret, &job_id.to_string(), expires, sig) {
            return Err(ApiError::new(
                Rc::Forbidden,
                "This upload URL is not valid.",
            ));
        }
        if expires < now() {
            return Err(ApiError::new(Rc::Forbidden, "This upload URL has expired."));
        }
        if bytes.len() > self.config.api.max_image_bytes {
            return Err(ApiError::new(
                Rc::PayloadTooLarge,
                "The image is too large.",
            ));
        }
        let in_flight = self.live.read(|queue| {
            let r = queue.request_of_job(job_id)?;
            let job = r.job(job_id)?;
            (job.state == JobState::Processing).then(|| (r.clone(), job.worker_id))
        });
        let Some((request, worker_id)) = in_flight else {
            return Err(ApiError::new(
                Rc::InvalidJobID,
                "This job is not waiting for an image.",
            ));
        };
        if self.images.exists(job_id).await? {
            return Err(ApiError::new(
                Rc::UploadAlreadyUsed,
                "This upload URL was already used.",
            ));
        }
        let bytes = match checked_result(&request, bytes).await {
            Ok(bytes) => bytes,
            Err((error, reason)) => {
                let turn = self.live.write_turn().await;
                self.record_suspicion(&turn, worker_id, reason, now())
                    .await?;
                return Err(error);
            }
        };
        let staged = self.images.stage(job_id, &bytes).await?;
        if self.images.exists(job_id).await? {
            self.images.discard(&staged).await;
            return Err(ApiError::new(
                Rc::UploadAlreadyUsed,
                "This upload URL was already used.",
            ));
        }
        let committed = self.images.commit(&staged, job_id).await;
        self.images.discard(&staged).await;
        committed
    }

    pub async fn submit(&self, user: &User, submit: SubmitRequest) -> ApiResult<SubmitResponse> {
        submit.validate().map_err(ApiError::validation)?;
        let job_id = Uuid::parse_str(&submit.id).map_err(|_| invalid_job(&submit.id))?;
        let turn = self.live.write_turn().await;
        self.load_request_of_job_ordered(&turn, job_id).await?;
        let (request, job) = self.job_for_submit(user, job_id)?;
        let faulted = submit.state == horde_api::image::SubmitState::Faulted;
        let staged = if faulted {
            None
        } else {
            match self
                .stage_result(&request, job_id, submit.generation.as_deref())
                .await
            {
                Ok(staged) => staged,
                Err(StageError::Refused(error)) => return Err(error),
                Err(StageError::Suspicious(error, reason)) => {
                    self.record_suspicion(&turn, job.worker_id, reason, now())
                        .await?;
                    return Err(error);
                }
            }
        };
        // Another coordinator sharing the database may change the request meanwhile (another
        // of its jobs handed out or finished): the stored copy is reloaded and the result
        // applied to it.
        let (submit, staged_path, turn) = (&submit, staged.as_deref(), &turn);
        let outcome = retry_on_conflict(|| async move {
            let (request, job) = self.job_for_submit(user, job_id)?;
            match self.apply_submit(submit, &request, &job, staged_path).await {
                Err(SubmitError::Conflict(id)) => {
                    self.reload_reputation(job.worker_id).await?;
                    self.resync_request_ordered(turn, id).await?;
                    Ok(Attempt::Conflicted)
                }
                Err(SubmitError::Api(error)) => Err(error),
                Ok(answer) => Ok(Attempt::Stored(answer)),
            }
        })
        .await
        .and_then(|answer| answer.ok_or_else(|| changed_too_often("request")));
        // Whatever is still staged was refused (a committed image is no longer there).
        if let Some(staged) = &staged {
            self.images.discard(staged).await;
        }
        outcome
    }

    /// Applies a checked submission to the request and stores it with its effects (kudos,
    /// statistics, reputation).
    async fn apply_submit(
        &self,
        submit: &SubmitRequest,
        request: &LiveRequest,
        job: &Job,
        staged: Option<&std::path::Path>,
    ) -> Result<SubmitResponse, SubmitError> {
        let job_id = job.id;
        let worker = self.workers.get(job.worker_id);
        let multiplier = worker
            .as_ref()
            .map(|w| pricing::bridge_multiplier(&w.worker.bridge_agent))
            .unwrap_or(0.75);
        let reward = if submit.state == horde_api::image::SubmitState::Faulted {
            0.0
        } else {
            pricing::round2(self.gen_kudos(request, &job.model) * multiplier)
        };
        let now = now();
        let retention = self.config.requests.retention_secs;
        let applied = self.live.update(request.id, |r| {
            let result = r
                .apply_submit(
                    job_id,
                    submit.state,
                    submit.seed,
                    submit.gen_metadata.clone(),
                    reward,
                    self.config.jobs.max_restarts,
                )
                .cloned();
            let mut refund = 0.0;
            if let Ok(job) = &result {
                if job.state.is_finished() && !job.censored {
                    let gen_kudos = self.gen_kudos(r, &job.model);
                    let charge = pricing::requester_charge(&r.body, gen_kudos);
                    r.consumed_kudos = pricing::consumed_after(r.consumed_kudos, charge);
                }
                refund = r.refund_if_faulted_unserved(pricing::ACTIVATION_FEE);
                if r.is_done() {
                    r.expiry = now + retention;
                }
                r.version += 1;
            }
            (result, r.clone(), refund)
        });
        let Some((result, updated, refund)) = applied else {
            return Err(invalid_job(&submit.id).into());
        };
        let job = result.map_err(refused)?;
        if let Some(staged) = staged {
            self.images.commit(staged, job_id).await?;
        }
        let effects = job
            .state
            .is_finished()
            .then(|| self.submit_effects(&updated, &job, worker.as_ref()));
        let job_secs = self.job_secs(&job, now);
        let reputation = self.record_result(&job, job_secs, effects.as_ref(), now);
        match self
            .store
            .save_submit(
                &updated,
                &job,
                effects.as_ref(),
                reputation.as_ref().map(|r| (job.worker_id, r)),
                refund,
            )
            .await
        {
            Err(StoreError::Conflict(_) | StoreError::WorkerConflict(_)) => {
                return Err(SubmitError::Conflict(updated.id))
            }
            other => other.map_err(ApiError::from)?,
        }
        if let Some(reputation) = &reputation {
            self.note_reputations_stored([(job.worker_id, reputation)]);
        }
        if let Some(e) = &effects {
            self.workers
                .record_speed(&job.model, now, e.megapixelsteps * 1e6 / job_secs.max(1.0));
        }
        Ok(SubmitResponse { reward: job.reward })
    }

    /// How long `job` took, in seconds: from the millisecond it was handed out, or from its
    /// stored start (whole seconds) after a restart.
    fn job_secs(&self, job: &Job, now: i64) -> f64 {
        match self.live.take_handed_out(job.id) {
            Some(at) => crate::clock::now_ms().saturating_sub(at) as f64 / 1000.0,
            None => (now - job.started) as f64,
        }
    }

    /// The request and job a submission names, checking the submitter owns the job's worker.
    fn job_for_submit(&self, user: &User, job_id: Uuid) -> ApiResult<(LiveRequest, Job)> {
        let (request, job) = self
            .live
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

    /// Checks and stages the image of a submission: inline base64, or the file uploaded
    /// beforehand when `generation` is "R2".
    async fn stage_result(
        &self,
        request: &LiveRequest,
        job_id: Uuid,
        generation: Option<&str>,
    ) -> Result<Option<std::path::PathBuf>, StageError> {
        let generation = generation.unwrap_or("R2");
        if generation == "R2" {
            if !self
                .images
                .exists(job_id)
                .await
                .map_err(StageError::Refused)?
            {
                return Err(StageError::Refused(ApiError::new(Rc::ImageValidationFailed, format!("No image was uploaded for job {job_id}: PUT the WebP to the pop's r2_upload URL for this job before submitting \"R2\", or submit the image itself, base64-encoded, as `generation`."))));
            }
            return Ok(None);
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(generation.trim())
            .map_err(|_| {
                StageError::Suspicious(
                    ApiError::new(
                        Rc::ImageValidationFailed,
                        "generation is neither \"R2\" nor valid base64.",
                    ),
                    SuspicionReason::UndecodableImage,
                )
            })?;
        if bytes.len() > self.config.api.max_image_bytes {
            return Err(StageError::Refused(ApiError::new(
                Rc::PayloadTooLarge,
                "The image is too large.",
            )));
        }
        let bytes = checked_result(request, bytes)
            .await
            .map_err(|(error, reason)| StageError::Suspicious(error, reason))?;
        let staged = self.images.stage(job_id, &bytes).await;
        staged.map(Some).map_err(StageError::Refused)
    }

    /// Adds one suspicion to a worker and stores its reputation.
    async fn record_suspicion(
        &self,
        turn: &WriteTurn<'_>,
        worker_id: Uuid,
        reason: SuspicionReason,
        now: i64,
    ) -> ApiResult<()> {
        let stored = self
            .change_reputation_ordered(turn, worker_id, |r| r.suspect(reason, now))
            .await?;
        if let Some(reputation) = stored {
            tracing::warn!(worker = %worker_id, ?reason, suspicion = reputation.suspicion, "worker suspected");
        }
        Ok(())
    }

    fn submit_effects(
        &self,
        request: &LiveRequest,
        job: &Job,
        worker: Option<&crate::workers::WorkerEntry>,
    ) -> SubmitEffects {
        let megapixelsteps = horde_core::work::megapixelsteps(&request.body.params, 1);
        SubmitEffects {
            requester_id: request.user_id,
            requester_charge: if job.censored {
                0.0
            } else {
                pricing::requester_charge(&request.body, self.gen_kudos(request, &job.model))
            },
            worker_id: job.worker_id,
            worker_owner_id: worker.map(|w| w.worker.user_id).unwrap_or_default(),
            worker_owner_trusted: worker.is_some_and(|w| w.owner_trusted),
            reward: job.reward,
            megapixelsteps,
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
    ) -> Option<horde_core::Reputation> {
        let rules = self.config.workers.reputation_rules();
        self.workers.change(|registry| {
            let entry = registry.get_mut(job.worker_id)?;
            let reputation = &mut entry.worker.reputation;
            let raised = match effects {
                Some(e) => {
                    entry.worker.kudos_generated += e.reward;
                    reputation.record_completed(e.megapixelsteps, job_secs, now, &rules)
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
}

/// Why a submitted image was not staged.
enum StageError {
    /// Refused without judging the worker (nothing uploaded yet, too large, disk trouble).
    Refused(ApiError),
    /// Refused, and the worker is suspected for it (garbage or the wrong size).
    Suspicious(ApiError, SuspicionReason),
}

/// Checks a finished image against the sizes the request allows, from its header before any
/// pixel is decoded (`images::check_image`).
async fn checked_result(
    request: &LiveRequest,
    bytes: Vec<u8>,
) -> Result<Vec<u8>, (ApiError, SuspicionReason)> {
    check_image(bytes, request.body.params.output_sizes())
        .await
        .map_err(|refusal| match refusal {
            ImageRefusal::Undecodable(e) => (e, SuspicionReason::UndecodableImage),
            ImageRefusal::WrongSize(e) => (e, SuspicionReason::WrongImageSize),
        })
}

impl AppState {
    /// Takes back jobs whose deadline passed (the sweeper calls this): their images go back to
    /// the queue, the change is stored, and the late workers are counted.
    pub async fn take_back_late_jobs(&self, now: i64) -> ApiResult<usize> {
        let turn = self.live.write_turn().await;
        // Each request with late jobs, as it stands after all of them were taken back.
        let taken: Vec<(LiveRequest, Vec<Job>, f64)> = self.live.change(|queue| {
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
                    Some((request, jobs, refund))
                })
                .collect()
        });
        let mut count = 0;
        for (request, jobs, refund) in &taken {
            let mut reputations: Vec<(Uuid, Reputation)> = vec![];
            for job in jobs {
                tracing::warn!(job = %job.id, worker = %job.worker_name, request = %request.id, "job deadline passed; taken back");
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
            match self
                .store
                .save_taken_back(request, jobs, &reputations, *refund)
                .await
            {
                // Another coordinator changed it first; its stored copy decides next time.
                Err(StoreError::Conflict(_) | StoreError::WorkerConflict(_)) => {
                    for (worker_id, _) in &reputations {
                        self.reload_reputation(*worker_id).await?;
                    }
                    self.resync_request_ordered(&turn, request.id).await?;
                }
                other => {
                    other?;
                    self.note_reputations_stored(reputations.iter().map(|(id, r)| (*id, r)));
                    count += jobs.len();
                }
            }
        }
        Ok(count)
    }
}

/// Why a submission was not stored.
enum SubmitError {
    /// Another coordinator changed the request first: reload it and apply the result again.
    Conflict(Uuid),
    Api(ApiError),
}

impl From<ApiError> for SubmitError {
    fn from(error: ApiError) -> Self {
        SubmitError::Api(error)
    }
}

/// The pop answer's message to a worker that offered models this horde does not serve.
fn ignored_models_notice(ignored: &[String]) -> Option<serde_json::Value> {
    (!ignored.is_empty()).then(|| {
        serde_json::json!({
            "id": Uuid::new_v4().to_string(),
            "message": format!(
                "These models are not in this horde's model reference and were ignored: {}.",
                ignored.join(", ")
            ),
            "origin": "horde",
            "expiry": serde_json::Value::Null,
        })
    })
}

fn invalid_job(id: &str) -> ApiError {
    ApiError::new(
        Rc::InvalidJobID,
        format!("Processing Generation with ID {id} does not exist."),
    )
}
