//! Text requests from the client's side: accept, status, cancel (see `texts/mod.rs`).

use crate::clock::now;
use crate::error::{refused, ApiError, ApiResult};
use crate::lifecycle::{not_found, NewRequest};
use crate::requests::{parse_request_id, warn_no_worker};
use crate::shared_keys::check_shared_key_text_use;
use crate::state::AppState;
use horde_api::image::{AsyncResponse, RequestStatusCheck};
use horde_api::text::{TextGeneration, TextRequest, TextRequestStatus};
use horde_api::Rc;
use horde_core::accounts::User;
use horde_core::pricing;
use horde_core::quota::{self, Quota};
use horde_core::request::{Job, LiveRequest};
use horde_core::shared_key::SharedKey;
use horde_core::text::kind::{can_serve, estimate_wait_secs, UNMEASURED_TOKENS_PER_SEC};
use horde_core::text::rules::{self, TextCapacity};
use horde_core::text::{Text, TextBody};
use horde_core::JobKind;

/// What `POST /generate/text/async` answers: accepted (202) or a dry run's price (200).
pub enum TextAccepted {
    Queued(AsyncResponse),
    DryRun(AsyncResponse),
}

impl AppState {
    /// Accepts a text request from `user`, made with `shared_key` if it was one.
    pub async fn accept_text_request(
        &self,
        user: &User,
        shared_key: Option<&SharedKey>,
        body: TextRequest,
    ) -> ApiResult<TextAccepted> {
        self.refuse_in_maintenance().await?;
        let (body, style) = self.apply_text_style(user, body).await?;
        let body = self.vet_text_request(user, shared_key, body).await?;
        let n = body.request.params.n;
        if body.request.dry_run {
            return Ok(TextAccepted::DryRun(AsyncResponse {
                id: None,
                kudos: pricing::reported_kudos(Text::job_kudos(&body) * f64::from(n))
                    + style.as_ref().map_or(0.0, |s| s.fee()),
                message: None,
                warnings: vec![],
            }));
        }
        self.check_concurrency_of::<Text>(user, n)?;
        let now = now();
        self.check_text_quota(user, &body, now).await?;
        let new = NewRequest::<Text> {
            jobs: n,
            body,
            base_seed: None,
            shared_key: shared_key.map(|k| k.id_hash.clone()),
            batch_id: None,
            batch_index: 0,
        };
        let request = self.admit(user, new, now).await?;
        let possible = self.text_is_possible(&request);
        let id = request.id;
        let job_kudos = request.job_kudos;
        self.live_text.insert(request);
        let style_warning = self.record_style_use(user, style, id).await;
        let mut response = AsyncResponse {
            id: Some(id.to_string()),
            kudos: pricing::reported_kudos(job_kudos * f64::from(n)),
            message: None,
            warnings: style_warning.into_iter().collect(),
        };
        if !possible && !self.hides_reasons().await? {
            warn_no_worker(&mut response);
        }
        Ok(TextAccepted::Queued(response))
    }

    /// The rules of `/generate/text/async` up to its price: bounds, the text rules with the
    /// operator's limits and the models, the webhook's address, the softprompt, upfront kudos
    /// (downgrading when allowed) and the shared key's limits. Answers the body as queued,
    /// priced by the text model reference of now.
    async fn vet_text_request(
        &self,
        user: &User,
        shared_key: Option<&SharedKey>,
        mut body: TextRequest,
    ) -> ApiResult<TextBody> {
        body.validate().map_err(ApiError::validation)?;
        let reference = self.text_reference();
        let limits = self.config.text.limits();
        rules::check(
            &body,
            user,
            &limits,
            &reference,
            &self.config.webhooks.policy(),
        )
        .map_err(refused)?;
        if let Some(url) = &body.webhook {
            self.check_webhook(url).await?;
        }
        let offered = self.offered_softprompts();
        rules::check_softprompt(&body, offered.iter().map(String::as_str)).map_err(refused)?;
        rules::normalise(&mut body);
        let available = self.available_for_text(user).await?;
        rules::apply_upfront(&mut body, available, &self.text_capacity(), &reference)
            .map_err(refused)?;
        let body = TextBody::accept(body, &reference);
        if let Some(key) = shared_key {
            let p = &body.request.params;
            let cost = Text::job_kudos(&body) * f64::from(p.n);
            check_shared_key_text_use(key, p.max_length, cost, now())?;
        }
        Ok(body)
    }

    /// The softprompts the online text workers offer.
    fn offered_softprompts(&self) -> Vec<String> {
        self.workers.read(|registry| {
            registry
                .online_text(now())
                .filter_map(|e| e.worker.flags.text.as_ref())
                .flat_map(|t| t.softprompts.iter().cloned())
                .collect()
        })
    }

    /// Kudos the user holds beyond their floor and what their unfinished text requests will
    /// still charge (read as stored: the cached user may be a second old).
    async fn available_for_text(&self, user: &User) -> ApiResult<f64> {
        let user = self
            .store
            .user_by_id(user.id)
            .await?
            .unwrap_or_else(|| user.clone());
        let queued = self
            .undelivered_charges::<Text>(user.id, |r| Text::requester_charge(&r.body, r.job_kudos));
        Ok(user.kudos - user.min_kudos() - queued)
    }

    /// The online text workers' threads and the waiting text requests (the upfront rule).
    fn text_capacity(&self) -> TextCapacity {
        let now = now();
        let text_threads = self.workers.read(|registry| {
            registry
                .online_text(now)
                .filter(|w| !w.worker.paused)
                .map(|w| u64::from(w.worker.threads.max(1)))
                .sum()
        });
        TextCapacity {
            text_threads,
            queued_text_requests: self.live_text.waiting_count(),
        }
    }

    /// The operator's daily quota of texts and tokens (429 with `Retry-After` until the next
    /// UTC day).
    async fn check_text_quota(&self, user: &User, body: &TextBody, now: i64) -> ApiResult<()> {
        let quota = self.config.quotas.for_user(user);
        if quota == Quota::default() {
            return Ok(());
        }
        let used = self.store.quota_usage(user.id, quota::day_of(now)).await?;
        let texts = u64::from(body.request.params.n);
        let tokens = Text::work(body, body.request.params.n);
        if quota.allows_text(&used, texts, tokens) {
            return Ok(());
        }
        let wait = quota::secs_to_next_day(now);
        Err(ApiError::new(
            Rc::DailyQuotaExceeded,
            format!(
                "Daily quota reached: {} texts and {:.0} tokens requested today of {} and {:.0} allowed (0: no limit). It renews in {wait} s, at {} (00:00 UTC).",
                used.texts, used.tokens, quota.texts_per_day, quota.tokens_per_day,
                crate::shared_keys::rfc3339(now + wait)
            ),
        )
        .retry_after(wait as u64))
    }

    /// Whether some online text worker could take this request.
    fn text_is_possible(&self, request: &LiveRequest<Text>) -> bool {
        self.workers.read(|registry| {
            registry
                .online_text(now())
                .any(|w| !w.worker.paused && can_serve(request, &w.text_caps()).is_ok())
        })
    }

    /// `GET /generate/text/status/{id}`: the light status with the finished texts.
    pub async fn text_request_status(&self, id: &str) -> ApiResult<TextRequestStatus> {
        let id = parse_request_id(id)?;
        self.load_request::<Text>(id).await?;
        let (request, position, tokens_ahead) = self.live_text.read(|queue| {
            let request = queue.get(id).ok_or_else(|| not_found(id))?;
            let ahead: f64 = queue
                .waiting_up_to(id, 1000)
                .iter()
                .map(|r| Text::work(&r.body, r.n_remaining))
                .sum();
            Ok::<_, ApiError>((request.clone(), queue.position(id), ahead))
        })?;
        let request = self.fresh_copy(request).await?;
        let check = self.text_status_check(&request, position, tokens_ahead);
        let mut generations = Vec::new();
        for job in request.jobs.iter().filter(|j| j.state.is_finished()) {
            generations.push(self.text_generation(job).await);
        }
        Ok(TextRequestStatus { check, generations })
    }

    fn text_status_check(
        &self,
        request: &LiveRequest<Text>,
        position: usize,
        tokens_ahead: f64,
    ) -> RequestStatusCheck {
        let counts = request.counts();
        let wait_time = match counts.waiting {
            0 => 0,
            _ => estimate_wait_secs(tokens_ahead, &self.text_worker_speeds())
                .map_or(0, |secs| secs.ceil() as i64),
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
            is_possible: counts.processing > 0 || counts.done || self.text_is_possible(request),
            warnings: vec![],
        }
    }

    /// Each online text worker's tokens a second (its speed × threads).
    fn text_worker_speeds(&self) -> Vec<f64> {
        self.workers.read(|registry| {
            registry
                .online_text(now())
                .filter(|w| !w.worker.paused)
                .map(|w| {
                    let speed = w
                        .worker
                        .reputation
                        .recent_speed_mps
                        .unwrap_or(UNMEASURED_TOKENS_PER_SEC);
                    speed * f64::from(w.worker.threads.max(1))
                })
                .collect()
        })
    }

    /// A finished text job as an entry of the status's `generations` (and of its webhook).
    pub(crate) async fn text_generation(&self, job: &Job) -> TextGeneration {
        let text = match self.images.read(job.id).await {
            Some(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            None => String::new(),
        };
        TextGeneration {
            text,
            seed: job.seed as i64,
            worker_id: job.worker_id.to_string(),
            worker_name: job.worker_name.clone(),
            model: job.model.clone(),
            state: job.state.as_str().to_string(),
            gen_metadata: job.gen_metadata.clone(),
        }
    }

    /// Cancels a text request: nothing more is handed out, finished texts stay. Answers the
    /// status as it was before the cancel, as the public horde does.
    pub async fn cancel_text_request(&self, id: &str) -> ApiResult<TextRequestStatus> {
        let before = self.text_request_status(id).await?;
        self.cancel::<Text>(parse_request_id(id)?).await?;
        Ok(before)
    }
}
