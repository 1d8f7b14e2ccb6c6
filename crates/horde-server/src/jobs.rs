//! Image jobs from the worker's side: pop, upload, submit. What is the same for every kind of
//! work (storing the hand-out, applying and storing a result, its kudos and reputation) is in
//! `lifecycle.rs`; here are the image path's own parts: the pop's wire answer, the upload URLs,
//! and checking a submitted image.

use crate::clock::now;
use crate::error::{ApiError, ApiResult};
use crate::images::{check_image, ImageRefusal};
use crate::lifecycle::{invalid_job, JobResult};
use crate::live_requests::{retry_on_conflict, Attempt, WriteTurn};
use crate::state::AppState;
use base64::Engine;
use horde_api::image::{JobPayload, PopRequest, PopResponse, SubmitRequest, SubmitResponse};
use horde_api::Rc;
use horde_core::accounts::User;
use horde_core::keys::{sign_upload, verify_upload};
use horde_core::request::{Job, JobState, LiveRequest};
use horde_core::{Assignment, Image, PopOutcome, SuspicionReason};
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
        control_strength: p.control_strength,
        image_is_control: p.image_is_control,
        return_control_map: p.return_control_map,
        facefixer_strength: p.facefixer_strength,
        loras: p.loras.clone(),
        tis: p.tis.clone(),
        special: p.special.clone(),
        use_nsfw_censor: !body.nsfw && body.censor_nsfw,
        ddim_steps: p.effective_steps(),
        n_iter: batch,
        prompts: None,
        seeds: None,
    }
}

impl AppState {
    pub async fn pop(&self, user: &User, pop: PopRequest) -> ApiResult<PopResponse> {
        crate::workers::refuse_flagged_owner(user)?;
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
        let name = pop.name.clone();
        let mut answer = self.pop_checked_in(user, pop).await?;
        answer.messages.extend(notice);
        answer.messages.extend(self.pop_messages(&name));
        Ok(answer)
    }

    async fn pop_checked_in(&self, user: &User, pop: PopRequest) -> ApiResult<PopResponse> {
        let entry = self
            .check_in(user, &pop, &horde_core::accounts::KindFlags::default())
            .await?;
        if entry.worker.paused {
            return Ok(PopResponse::empty(Default::default()));
        }
        self.refuse_suspended(&entry)?;
        let now = now();
        let turn = self.live.write_turn().await;
        // Another coordinator sharing the database may have taken the request first: its
        // stored copy is reloaded and the pop tried again.
        let (entry, turn) = (&entry, &turn);
        let share_passes = pop.batch_prompts && pop.amount > 1;
        let r2_source = pop.r2_source;
        let answer = retry_on_conflict(|| async move {
            match self.pop_from_queue::<Image>(entry, now, share_passes) {
                PopOutcome::Nothing(skipped) => {
                    crate::workers::refuse_in_maintenance(entry)?;
                    Ok(Attempt::Stored(PopResponse::empty(skipped)))
                }
                PopOutcome::Assigned(assignment) => {
                    let extra_slow = entry.worker.flags.extra_slow_worker;
                    Ok(self
                        .hand_out(turn, assignment, extra_slow, r2_source, now)
                        .await?)
                }
            }
        })
        .await?;
        Ok(answer.unwrap_or_else(|| PopResponse::empty(Default::default())))
    }

    /// Stores the assignment and answers it (source images as URLs for an `r2_source`
    /// worker); `Conflicted` when another coordinator changed the request first (the local copy
    /// is then reloaded, and the pop should be tried again).
    async fn hand_out(
        &self,
        turn: &WriteTurn<'_>,
        assignment: Assignment,
        extra_slow: bool,
        r2_source: bool,
        now: i64,
    ) -> ApiResult<Attempt<PopResponse>> {
        // The companions were assigned in the local copy too: put them back as stored unless
        // the first request's hand-out was (then answer its conflict, or its error).
        let request = match self.store_hand_out::<Image>(turn, &assignment, now).await {
            Ok(Attempt::Stored(request)) => request,
            unstored => {
                self.resync_companions(turn, &assignment.companions).await?;
                return unstored.map(|_| Attempt::Conflicted);
            }
        };
        let companions = self.store_companions(turn, &assignment, now).await?;
        let first = &assignment.jobs[0];
        let jobs = crate::batches::pass_jobs(&assignment, &companions);
        let ids: Vec<String> = jobs.iter().map(|j| j.id.to_string()).collect();
        // Upload URLs whatever `r2` the request had, as the public pop: `r2` decides only how
        // the client gets the images.
        let uploads: Vec<String> = jobs.iter().map(|j| self.upload_url(j.id, now)).collect();
        let baseline = self.model_reference().baseline_of(&assignment.model);
        let ttl = horde_core::ttl::job_ttl_secs(&request.body.params, &baseline, extra_slow);
        let mut payload = payload_of(&request, first, jobs.len() as u32);
        crate::batches::add_member_prompts(&mut payload, &request, &assignment, &companions);
        let sources = self.pop_sources(&request, r2_source, now).await;
        Ok(Attempt::Stored(PopResponse {
            payload: serde_json::to_value(payload).map_err(ApiError::internal)?,
            id: Some(first.id.to_string()),
            ids,
            skipped: Default::default(),
            model: Some(assignment.model),
            source_image: sources.source_image,
            source_processing: request.body.source_processing,
            source_mask: sources.source_mask,
            extra_source_images: sources.extra_source_images,
            r2_upload: uploads.first().cloned(),
            r2_uploads: uploads,
            messages: vec![],
            ttl: Some(ttl),
        }))
    }

    /// A signed, expiring URL where the worker PUTs the image of `job_id`.
    pub(crate) fn upload_url(&self, job_id: Uuid, now: i64) -> String {
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
        let Some((allowed, worker_id)) = self.awaiting_image(job_id) else {
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
        let bytes = match checked_image(allowed, bytes).await {
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

    /// The sizes the image of in-flight job `job_id` may have, and its worker: an image job's,
    /// or a post-processor form's; `None` when no such job waits for an image.
    fn awaiting_image(&self, job_id: Uuid) -> Option<(Vec<(u32, u32)>, Uuid)> {
        let image = self.live.read(|queue| {
            let r = queue.request_of_job(job_id)?;
            let job = r.job(job_id)?;
            (job.state == JobState::Processing)
                .then(|| (r.body.params.output_sizes(), job.worker_id))
        });
        image.or_else(|| {
            self.live_alchemy.read(|queue| {
                let r = queue.request_of_job(job_id)?;
                let job = r.job(job_id)?;
                let waits = job.state == JobState::Processing
                    && horde_api::interrogation::makes_image(&job.model);
                waits
                    .then(|| r.body.result_sizes())
                    .flatten()
                    .map(|sizes| (sizes, job.worker_id))
            })
        })
    }

    pub async fn submit(&self, user: &User, submit: SubmitRequest) -> ApiResult<SubmitResponse> {
        submit.validate().map_err(ApiError::validation)?;
        let job_id = Uuid::parse_str(&submit.id).map_err(|_| invalid_job(&submit.id))?;
        let turn = self.live.write_turn().await;
        self.load_request_of_job_ordered::<Image>(&turn, job_id)
            .await?;
        let (request, job) = self.job_for_submit::<Image>(user, job_id)?;
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
        let result = JobResult {
            job_id,
            state: submit.state,
            seed: submit.seed,
            gen_metadata: submit.gen_metadata,
            staged: staged.as_deref(),
            text: None,
        };
        let outcome = self
            .finish_job::<Image>(&turn, user, &result)
            .await
            .map(|reward| SubmitResponse { reward });
        // Whatever is still staged was refused (a committed image is no longer there).
        if let Some(staged) = &staged {
            self.images.discard(staged).await;
        }
        outcome
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
    checked_image(request.body.params.output_sizes(), bytes).await
}

/// Checks an image against the `allowed` sizes, judging the worker when it is refused.
async fn checked_image(
    allowed: Vec<(u32, u32)>,
    bytes: Vec<u8>,
) -> Result<Vec<u8>, (ApiError, SuspicionReason)> {
    check_image(bytes, allowed)
        .await
        .map_err(|refusal| match refusal {
            ImageRefusal::Undecodable(e) => (e, SuspicionReason::UndecodableImage),
            ImageRefusal::WrongSize(e) => (e, SuspicionReason::WrongImageSize),
        })
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
