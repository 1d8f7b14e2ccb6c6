//! Interrogations from the client's side: accept, status, cancel (see `interrogations/mod.rs`).

use crate::clock::now;
use crate::error::{refused, ApiError, ApiResult};
use crate::lifecycle::{not_found, NewRequest};
use crate::requests::parse_request_id;
use crate::state::AppState;
use horde_api::interrogation::{
    makes_image, InterrogationAsyncResponse, InterrogationFormStatus, InterrogationRequest,
    InterrogationStatus,
};
use horde_api::Rc;
use horde_core::accounts::User;
use horde_core::alchemy::{self, Alchemy, AlchemyBody};
use horde_core::request::{JobState, LiveRequest};
use horde_core::request_rules::{self, PreparedSource};

impl AppState {
    /// Accepts an interrogation from `user`: its forms, its source image stored, its price.
    pub async fn accept_interrogation(
        &self,
        user: &User,
        body: InterrogationRequest,
    ) -> ApiResult<InterrogationAsyncResponse> {
        body.validate().map_err(ApiError::validation)?;
        self.refuse_in_maintenance().await?;
        let mut body = alchemy::normalise(body).map_err(refused)?;
        if let Some(url) = &body.webhook {
            self.check_webhook(url).await?;
        }
        let source = self.prepare_source_image(&body.source_image).await?;
        let size = source.as_ref().map(|s| (s.width, s.height));
        if size.is_none() && body.forms.iter().any(|f| makes_image(&f.name)) {
            return Err(ApiError::new(
                Rc::BadRequest,
                "A post-processor form needs the image itself (base64), not a URL: its result's size is checked against it.",
            ));
        }
        if let Some(prepared) = &source {
            body.source_image = request_rules::marker(prepared);
        }
        let body = AlchemyBody::accept(body, size);
        let forms = body.form_names.len() as u32;
        self.check_concurrency_of::<Alchemy>(user, forms)?;
        let price: f64 = body
            .form_names
            .iter()
            .map(|f| {
                let kudos = alchemy::form_kudos(f, body.image_tiles);
                alchemy::requester_charge(kudos, body.request.slow_workers)
            })
            .sum();
        let new = NewRequest::<Alchemy> {
            jobs: forms,
            body,
            base_seed: None,
            shared_key: None,
            batch_id: None,
            batch_index: 0,
        };
        let request = self.admit_with_source(user, new, source, now()).await?;
        let id = request.id;
        self.live_alchemy.insert(request);
        Ok(InterrogationAsyncResponse {
            id: id.to_string(),
            message: None,
            kudos: horde_core::pricing::reported_kudos(price),
        })
    }

    /// The source image, when sent inline, decoded and checked off the async threads (`None`
    /// for a URL).
    async fn prepare_source_image(&self, text: &str) -> ApiResult<Option<PreparedSource>> {
        let text = text.to_string();
        let prepared =
            tokio::task::spawn_blocking(move || request_rules::prepare_source_image(&text))
                .await
                .map_err(ApiError::internal)?;
        prepared.map_err(refused)
    }

    /// Numbers and commits an interrogation, its source image stored first (a failed commit
    /// leaves it to the orphan sweep, as image requests' sources).
    async fn admit_with_source(
        &self,
        user: &User,
        new: NewRequest<Alchemy>,
        source: Option<PreparedSource>,
        now: i64,
    ) -> ApiResult<LiveRequest<Alchemy>> {
        let Some(source) = source else {
            return self.admit(user, new, now).await;
        };
        let request = self.numbered(user, new, now);
        self.images
            .put_sources(request.id, std::slice::from_ref(&source), now)
            .await?;
        self.live_alchemy.commit_new(request).await
    }

    /// `GET /interrogate/status/{id}`: the state of the whole and of each form, with results.
    pub async fn interrogation_status(&self, id: &str) -> ApiResult<InterrogationStatus> {
        let id = parse_request_id(id)?;
        self.load_request::<Alchemy>(id).await?;
        let request = self
            .live_alchemy
            .read(|queue| queue.get(id).cloned())
            .ok_or_else(|| not_found(id))?;
        let request = self.fresh_copy(request).await?;
        let mut forms = Vec::with_capacity(request.body.form_names.len());
        for name in &request.body.form_names {
            forms.push(self.form_status(&request, name).await);
        }
        Ok(InterrogationStatus {
            state: overall_state(&request, &forms).into(),
            forms,
        })
    }

    /// Form `name` of `request` as the status lists it: its latest job's state and result.
    pub(crate) async fn form_status(
        &self,
        request: &LiveRequest<Alchemy>,
        name: &str,
    ) -> InterrogationFormStatus {
        let job = request.jobs.iter().rev().find(|j| j.model == name);
        let state = match job.map(|j| j.state) {
            Some(JobState::Processing) => "processing",
            Some(state) if state.is_finished() => "done",
            _ if request.faulted => "faulted",
            _ if request.cancelled => "cancelled",
            _ => "waiting",
        };
        let result = match job.filter(|j| j.state.is_finished()) {
            Some(job) if makes_image(name) => {
                let url = format!("{}/api/v2/images/{}.webp", self.public_url, job.id);
                Some(serde_json::json!({ name: url }))
            }
            Some(job) => self
                .images
                .read(job.id)
                .await
                .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok()),
            None => None,
        };
        InterrogationFormStatus {
            form: name.to_string(),
            state: state.into(),
            result,
            worker_id: job.map(|j| j.worker_id.to_string()),
            worker_name: job.map(|j| j.worker_name.clone()),
        }
    }

    /// Cancels an interrogation: no form is handed out any more, results stay. Answers the
    /// status as it was before, as the public horde does.
    pub async fn cancel_interrogation(&self, id: &str) -> ApiResult<InterrogationStatus> {
        let before = self.interrogation_status(id).await?;
        self.cancel::<Alchemy>(parse_request_id(id)?).await?;
        Ok(before)
    }
}

/// The whole's state (`Interrogation.get_status`): faulted when every form is, done when every
/// form is, processing while one is, waiting while one waits, else partial; cancelled once
/// cancelled and nothing more will come.
fn overall_state(
    request: &LiveRequest<Alchemy>,
    forms: &[InterrogationFormStatus],
) -> &'static str {
    let all = |state: &str| forms.iter().all(|f| f.state == state);
    let any = |state: &str| forms.iter().any(|f| f.state == state);
    if all("faulted") {
        "faulted"
    } else if all("done") {
        "done"
    } else if any("processing") {
        "processing"
    } else if request.cancelled {
        "cancelled"
    } else if any("waiting") {
        "waiting"
    } else {
        "partial"
    }
}
