//! Image requests from the client's side: accept, check, status, cancel. Admitting, cancelling
//! and expiring a request are the same for every kind of work (`lifecycle.rs`); the rules an
//! image request must pass, its price, and its status are here.

use crate::clock::now;
use crate::error::{ApiError, ApiResult};
use crate::kinds::ServedKind;
use crate::lifecycle::{not_found, NewRequest};
use crate::shared_keys::check_shared_key_use;
use crate::state::AppState;
use base64::Engine;
use horde_api::image::{
    AsyncResponse, Generation, ImageRequest, RequestStatus, RequestStatusCheck, RequestWarning,
};
use horde_api::Rc;
use horde_core::accounts::User;
use horde_core::eta::{self, WorkerThroughput};
use horde_core::matching::{can_generate, fallback_model};
use horde_core::post_processing;
use horde_core::pricing;
use horde_core::quota::{self, Quota};
use horde_core::request::{Job, JobState, LiveRequest};
use horde_core::request_rules;
use horde_core::shared_key::SharedKey;
use horde_core::upfront;
use horde_core::Image;
use std::collections::BTreeSet;
use uuid::Uuid;

/// What `POST /generate/async` answers: accepted (202) or a dry run's price (200).
pub enum Accepted {
    Queued(AsyncResponse),
    DryRun(AsyncResponse),
}

/// A request that passed the rules of `/generate/async` ([`AppState::vet_request`]), normalised.
pub(crate) struct Vetted {
    pub body: ImageRequest,
    pub base_seed: Option<u64>,
    /// The `Downgraded` warning, when upfront kudos shrank it.
    pub downgraded: Option<RequestWarning>,
    /// The prompt filters rewrote its prompt.
    pub rewritten: bool,
}

/// `body` as a request not yet accepted, to ask whether some online worker could take it.
fn probe_request(user: &User, body: ImageRequest) -> LiveRequest {
    LiveRequest {
        id: Uuid::nil(),
        user_id: user.id,
        body,
        base_seed: None,
        created: now(),
        seq: 0,
        priority: user.queue_priority(),
        n_remaining: 1,
        jobs_total: 1,
        job_kudos: 0.0,
        consumed_kudos: 0.0,
        faulted: false,
        cancelled: false,
        can_pay_upfront: true,
        shared_key: None,
        expiry: i64::MAX,
        version: 0,
        batch_id: None,
        batch_index: 0,
        jobs: vec![],
    }
}

impl AppState {
    /// Accepts an image request from `user`, made with `shared_key` if it was one.
    pub async fn accept_request(
        &self,
        user: &User,
        shared_key: Option<&SharedKey>,
        body: ImageRequest,
    ) -> ApiResult<Accepted> {
        let (body, style) = self.apply_image_style(user, body).await?;
        let Vetted {
            body,
            base_seed,
            downgraded,
            rewritten,
        } = self.vet_request(user, shared_key, body, 0.0).await?;
        let sources = self.prepare_sources(&body).await?;
        if body.dry_run {
            let style_fee = style.as_ref().map_or(0.0, |s| s.fee());
            return Ok(Accepted::DryRun(AsyncResponse {
                id: None,
                kudos: pricing::projected_cost(&body, self.projected_family(&body)) + style_fee,
                message: None,
                warnings: post_processing::unavailable_warning(&body)
                    .into_iter()
                    .collect(),
            }));
        }
        self.check_concurrency(user, body.params.n)?;
        let now = now();
        self.check_quota(user, &body, now).await?;
        let new = NewRequest::<Image> {
            jobs: body.params.n,
            body,
            base_seed,
            shared_key: shared_key.map(|k| k.id_hash.clone()),
            batch_id: None,
            batch_index: 0,
        };
        let request = self.admit_with_sources(user, new, &sources, now).await?;
        let job_kudos = request.job_kudos;
        let possible = self.is_possible(&request);
        let fallback = self.fallback_notice(&request);
        let post_processing_warning = post_processing::unavailable_warning(&request.body);
        let id = request.id;
        self.live.insert(request);
        let style_warning = self.record_style_use(user, style, id).await;
        let mut response = AsyncResponse {
            id: Some(id.to_string()),
            kudos: pricing::reported_kudos(job_kudos),
            message: None,
            warnings: downgraded.into_iter().chain(style_warning).collect(),
        };
        response.warnings.extend(fallback);
        response.warnings.extend(post_processing_warning);
        if rewritten {
            response.warnings.push(RequestWarning {
                code: "PromptRewritten".into(),
                message: "The prompt matched this horde's prompt filters and was rewritten before it was queued.".into(),
            });
        }
        if !possible && !self.hides_reasons().await? {
            warn_no_worker(&mut response);
        }
        Ok(Accepted::Queued(response))
    }

    /// The rules of `/generate/async` up to its price, on a request not yet accepted: bounds,
    /// request rules, webhook, models, normalisation, prompt filters, the post-processing
    /// fallback, upfront kudos (beyond `pending_debits`, what requests accepted with it will
    /// charge: a batch's earlier members) and the shared key's limits. A batch of prompts runs
    /// each member through it, so both paths refuse alike.
    pub(crate) async fn vet_request(
        &self,
        user: &User,
        shared_key: Option<&SharedKey>,
        body: ImageRequest,
        pending_debits: f64,
    ) -> ApiResult<Vetted> {
        body.validate().map_err(ApiError::validation)?;
        self.refuse_in_maintenance().await?;
        request_rules::check_with_webhook_policy(
            &body,
            user,
            self.config.requests.max_prompt_chars,
            &self.config.webhooks.policy(),
        )?;
        if let Some(url) = &body.webhook {
            self.check_webhook(url).await?;
        }
        self.check_request_models(&body)?;
        let reference = self.model_reference();
        request_rules::check_networks(&body, |model| reference.baseline_of(model))?;
        let (mut body, base_seed) = request_rules::normalise(body, user);
        let rewritten = self.screen_prompt(user, &mut body)?;
        self.apply_post_processing_fallback(user, &mut body);
        let downgraded = self.check_upfront(user, &mut body, pending_debits).await?;
        if let Some(key) = shared_key {
            check_shared_key_use(
                key,
                &body,
                pricing::projected_cost(&body, self.projected_family(&body)),
                now(),
            )?;
        }
        Ok(Vetted {
            body,
            base_seed,
            downgraded,
            rewritten,
        })
    }

    /// The public horde's upfront rule: a request that needs the kudos in hand is queued only
    /// when the user has them beyond their floor and their other unfinished requests; otherwise
    /// it is downgraded if it allows that (the warning says how), or refused.
    async fn check_upfront(
        &self,
        user: &User,
        body: &mut ImageRequest,
        pending_debits: f64,
    ) -> ApiResult<Option<RequestWarning>> {
        let capacity = self.capacity();
        let Some(reason) = upfront::upfront_reason(body, &capacity) else {
            return Ok(None);
        };
        // `user` may come from the cache of the last second: kudos in hand are read as stored.
        let user = &self
            .store
            .user_by_id(user.id)
            .await?
            .unwrap_or_else(|| user.clone());
        let available =
            user.kudos - user.min_kudos() - self.queued_debits(user.id) - pending_debits;
        let cost = pricing::projected_cost(body, self.projected_family(body));
        if cost <= available {
            return Ok(None);
        }
        if body.allow_downgrade {
            let (width, height, steps) = (body.params.width, body.params.height, body.params.steps);
            upfront::downgrade(body, &capacity);
            let still = upfront::upfront_reason(body, &capacity);
            if still.is_none()
                || pricing::projected_cost(body, self.projected_family(body)) <= available
            {
                let p = &body.params;
                return Ok(Some(RequestWarning {
                    code: "Downgraded".into(),
                    message: format!(
                        "Downgraded from {width}x{height}, {} steps to {}x{}, {} steps: {reason}, which needs {cost:.2} kudos upfront and you have {:.2} available.",
                        steps.unwrap_or_default(),
                        p.width,
                        p.height,
                        p.effective_steps(),
                        available.max(0.0)
                    ),
                }));
            }
        }
        Err(ApiError::new(
            Rc::KudosUpfront,
            format!(
                "This request needs its {cost:.2} kudos upfront because {reason}; you have {:.2} available. Lower it, or set allow_downgrade.",
                available.max(0.0)
            ),
        ))
    }

    /// Online workers' threads and the waiting requests, for the upfront rules.
    fn capacity(&self) -> upfront::Capacity {
        let now = now();
        let active_image_threads = self.workers.read(|registry| {
            registry
                .online_image(now)
                .filter(|w| !w.worker.paused)
                .map(|w| u64::from(w.worker.threads.max(1)))
                .sum()
        });
        upfront::Capacity {
            active_image_threads,
            queued_requests: self.live.waiting_count(),
        }
    }

    /// What the user's unfinished requests will still charge.
    fn queued_debits(&self, user_id: i64) -> f64 {
        let model_reference = self.model_reference();
        self.undelivered_charges::<Image>(user_id, |r| {
            let per_image = r.job_kudos * model_reference.request_multiplier(&r.body);
            pricing::requester_charge(&r.body, per_image)
        })
    }

    /// What the user's unfinished requests of kind `K` will still charge, at `charge` a job.
    pub(crate) fn undelivered_charges<K: ServedKind>(
        &self,
        user_id: i64,
        charge: impl Fn(&LiveRequest<K>) -> f64,
    ) -> f64 {
        K::live(self).read(|queue| {
            queue
                .requests()
                .filter(|r| r.user_id == user_id && !r.is_done())
                .map(|r| {
                    let undelivered = r.n_remaining
                        + r.jobs
                            .iter()
                            .filter(|j| j.state == JobState::Processing)
                            .count() as u32;
                    f64::from(undelivered) * charge(r)
                })
                .sum()
        })
    }

    /// The operator's daily quota of the user's tier (images and megapixelsteps requested per
    /// UTC day), answered with 429 and `Retry-After` until the next day.
    pub(crate) async fn check_quota(
        &self,
        user: &User,
        body: &ImageRequest,
        now: i64,
    ) -> ApiResult<()> {
        let quota = self.config.quotas.for_user(user);
        if quota == Quota::default() {
            return Ok(());
        }
        let used = self.store.quota_usage(user.id, quota::day_of(now)).await?;
        let images = u64::from(body.params.n);
        let megapixelsteps = horde_core::work::megapixelsteps(&body.params, body.params.n);
        if quota.allows(&used, images, megapixelsteps) {
            return Ok(());
        }
        let wait = quota::secs_to_next_day(now);
        Err(ApiError::new(
            Rc::DailyQuotaExceeded,
            format!(
                "Daily quota reached: {} images and {:.1} megapixelsteps requested today of {} and {:.1} allowed (0: no limit). It renews in {wait} s, at {} (00:00 UTC).",
                used.images, used.megapixelsteps, quota.images_per_day, quota.megapixelsteps_per_day,
                crate::shared_keys::rfc3339(now + wait)
            ),
        )
        .retry_after(wait as u64))
    }

    /// The public horde's concurrency limit: images waiting for this user plus the new ones.
    pub(crate) fn check_concurrency(&self, user: &User, n: u32) -> ApiResult<()> {
        self.check_concurrency_of::<Image>(user, n)
    }

    /// The concurrency limit over the jobs of kind `K` waiting for this user and the new ones.
    pub(crate) fn check_concurrency_of<K: ServedKind>(&self, user: &User, n: u32) -> ApiResult<()> {
        let waiting = K::live(self).read(|queue| queue.waiting_images_of_user(user.id));
        if waiting + u64::from(n) > u64::from(user.concurrency) {
            return Err(ApiError::new(
                Rc::TooManyPrompts,
                format!(
                    "Parallel requests ({}) exceeded user limit ({}).",
                    waiting + u64::from(n),
                    user.concurrency
                ),
            ));
        }
        Ok(())
    }

    /// `post_processing_fallback`: the request's post-processors are set aside when they are
    /// what keeps every online worker from taking it (see `horde_core::post_processing`).
    fn apply_post_processing_fallback(&self, user: &User, body: &mut ImageRequest) {
        let blocking =
            body.post_processing_fallback && !body.params.post_processing.is_empty() && {
                let mut probe = probe_request(user, body.clone());
                let with_them = self.is_possible(&probe);
                probe.body.params.post_processing.clear();
                !with_them && self.is_possible(&probe)
            };
        post_processing::fall_back(body, blocking);
    }

    /// Whether some online worker could take this request.
    pub(crate) fn is_possible(&self, request: &LiveRequest) -> bool {
        let now = now();
        let view = self.matching_view();
        self.workers.read(|registry| {
            registry
                .online_image(now)
                .any(|w| !w.worker.paused && can_generate(request, &view.caps(w)).is_ok())
        })
    }

    pub async fn check_request(&self, id: &str) -> ApiResult<RequestStatusCheck> {
        let id = parse_request_id(id)?;
        self.load_request::<Image>(id).await?;
        let (snapshot, position, wait) = self.queue_standing(id)?;
        Ok(self.status_check(&snapshot, position, wait))
    }

    /// A copy of the request, its place among the waiting ones, and the estimated seconds
    /// until its last image is done (`None` when no online worker can serve it).
    fn queue_standing(&self, id: Uuid) -> ApiResult<(LiveRequest, usize, Option<f64>)> {
        /// Requests ahead looked at for the estimate; beyond that the wait is long anyway.
        const MAX_AHEAD: usize = 1000;
        let mut workers = self.worker_throughputs();
        self.add_in_flight_work(&mut workers);
        self.live.read(|queue| {
            let request = queue.get(id).ok_or_else(|| not_found(id))?;
            let position = queue.position(id);
            let wait = eta::estimate_wait_secs(&queue.waiting_up_to(id, MAX_AHEAD), &workers);
            Ok((request.clone(), position, wait))
        })
    }

    /// What is left of the jobs each worker holds: a job's megapixelsteps less what the
    /// worker's speed has done of it since it was handed out.
    fn add_in_flight_work(&self, workers: &mut [WorkerThroughput]) {
        let now_ms = crate::clock::now_ms();
        self.live.for_each_in_flight(|job, request, started_ms| {
            let Some(w) = workers
                .iter_mut()
                .find(|w| w.caps.worker_id == job.worker_id)
            else {
                return;
            };
            let elapsed = now_ms.saturating_sub(started_ms) as f64 / 1000.0;
            let left = horde_core::work::megapixelsteps(&request.body.params, 1) - w.mps * elapsed;
            w.in_flight_mps += left.max(0.0);
        });
    }

    /// Every online, unpaused worker with its measured throughput (recent speed × threads; the
    /// horde's average speed, else 1 megapixelstep/s, before its first job).
    fn worker_throughputs(&self) -> Vec<WorkerThroughput> {
        let now = now();
        let view = self.matching_view();
        let average = self.workers.speeds(|s| s.all_models_average(now)) / 1e6;
        let unmeasured = if average > 0.0 { average } else { 1.0 };
        self.workers.read(|registry| {
            registry
                .online_image(now)
                .filter(|w| !w.worker.paused)
                .map(|w| {
                    let speed = w.worker.reputation.recent_speed_mps.unwrap_or(unmeasured);
                    WorkerThroughput {
                        caps: view.caps(w),
                        mps: speed * f64::from(w.worker.threads.max(1)),
                        in_flight_mps: 0.0,
                    }
                })
                .collect()
        })
    }

    fn status_check(
        &self,
        request: &LiveRequest,
        position: usize,
        wait_secs: Option<f64>,
    ) -> RequestStatusCheck {
        let counts = request.counts();
        let wait_time = if counts.waiting == 0 {
            0
        } else {
            wait_secs.map_or(0, |secs| secs.ceil() as i64)
        };
        RequestStatusCheck {
            finished: counts.finished,
            processing: counts.processing,
            restarted: counts.restarted,
            waiting: counts.waiting,
            done: counts.done,
            faulted: counts.faulted,
            wait_time,
            queue_position: position as i64,
            kudos: pricing::reported_kudos(request.consumed_kudos),
            is_possible: counts.processing > 0 || counts.done || self.is_possible(request),
            warnings: self
                .fallback_warnings(request)
                .into_iter()
                .chain(post_processing::unavailable_warning(&request.body))
                .collect(),
        }
    }

    /// `ModelFallback` warnings: the models that ran in place of the requested ones, and while
    /// images wait, the stand-ins online workers would use.
    fn fallback_warnings(&self, request: &LiveRequest) -> Vec<RequestWarning> {
        if !request.body.allow_model_fallback {
            return vec![];
        }
        let asked = request.body.models.join(", ");
        let ran: BTreeSet<&str> = request
            .jobs
            .iter()
            .filter(|j| !request.body.models.contains(&j.model))
            .map(|j| j.model.as_str())
            .collect();
        let mut warnings: Vec<RequestWarning> = ran
            .into_iter()
            .map(|model| RequestWarning {
                code: "ModelFallback".into(),
                message: format!(
                    "Generated with {model} in place of {asked}: no online worker served them."
                ),
            })
            .collect();
        if request.n_remaining > 0 {
            warnings.extend(self.fallback_notice(request));
        }
        warnings
    }

    /// The `ModelFallback` warning for a request none of whose models an online worker
    /// serves, naming the stand-ins online workers would use; `None` if there are none.
    fn fallback_notice(&self, request: &LiveRequest) -> Option<RequestWarning> {
        if !request.body.allow_model_fallback {
            return None;
        }
        let view = self.matching_view();
        if request.body.models.iter().any(|m| view.is_served(m)) {
            return None;
        }
        let stand_ins: BTreeSet<String> = self.workers.read(|registry| {
            registry
                .online_image(now())
                .filter(|w| !w.worker.paused)
                .map(|w| view.caps(w))
                .filter(|caps| can_generate(request, caps).is_ok())
                .filter_map(|caps| fallback_model(request, &caps))
                .collect()
        });
        if stand_ins.is_empty() {
            return None;
        }
        Some(RequestWarning {
            code: "ModelFallback".into(),
            message: format!(
                "No online worker serves {}; the images may be made with {} (same baseline), as this request allows model fallback.",
                request.body.models.join(", "),
                stand_ins.into_iter().collect::<Vec<_>>().join(", ")
            ),
        })
    }

    pub async fn request_status(&self, id: &str) -> ApiResult<RequestStatus> {
        let id = parse_request_id(id)?;
        self.load_request::<Image>(id).await?;
        let (snapshot, position, wait) = self.queue_standing(id)?;
        let snapshot = self.fresh_copy(snapshot).await?;
        let check = self.status_check(&snapshot, position, wait);
        let mut generations = Vec::new();
        for job in snapshot.jobs.iter().filter(|j| j.state.is_finished()) {
            generations.push(self.generation(&snapshot, job).await);
        }
        Ok(RequestStatus {
            check,
            generations,
            shared: false,
        })
    }

    /// A finished job as an entry of the status's `generations` (and of the event stream).
    pub(crate) async fn generation(&self, request: &LiveRequest, job: &Job) -> Generation {
        Generation {
            img: self.image_reference(request, job.id).await,
            seed: job.seed.to_string(),
            worker_id: job.worker_id.to_string(),
            worker_name: job.worker_name.clone(),
            model: job.model.clone(),
            id: job.id.to_string(),
            censored: job.censored,
            gen_metadata: job.gen_metadata.clone(),
            state: job.state.as_str().to_string(),
        }
    }

    /// A download URL for r2 requests, the base64 WebP otherwise, "N/A" if the file is gone.
    async fn image_reference(&self, request: &LiveRequest, job_id: Uuid) -> String {
        if request.body.r2 {
            return format!("{}/api/v2/images/{job_id}.webp", self.public_url);
        }
        match self.images.read(job_id).await {
            Some(bytes) => base64::engine::general_purpose::STANDARD.encode(bytes),
            None => "N/A".to_string(),
        }
    }

    /// Cancels a request: nothing more is handed out, finished images stay, jobs in flight may
    /// still finish and are paid. Answers the status as it was before the cancel, as the public
    /// horde does (so an untouched request answers `done: false`; `check` says done after).
    pub async fn cancel_request(&self, id: &str) -> ApiResult<RequestStatus> {
        let before = self.request_status(id).await?;
        self.cancel::<Image>(parse_request_id(id)?).await?;
        Ok(before)
    }
}

/// Tells the requester no online worker can take the request yet (the public horde's
/// message, and our warning).
pub(crate) fn warn_no_worker(response: &mut AsyncResponse) {
    let message =
        "No available workers can fulfil this request. It will wait until one joins.".to_string();
    response.warnings.push(RequestWarning {
        code: "NoAvailableWorker".into(),
        message: message.clone(),
    });
    response.message = Some(message);
}

pub(crate) fn parse_request_id(id: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(id).map_err(|_| {
        ApiError::new(
            Rc::RequestNotFound,
            format!("Request with ID '{id}' not found."),
        )
    })
}
