//! The kinds of work this coordinator serves, and what each supplies to the services written
//! once for all of them.
//!
//! The queue, matching, deadlines and a request's lifecycle are generic in `horde-core`
//! (`horde_core::JobKind`), the request and job tables in `horde-store`
//! (`horde_store::StoredKind`). Here the coordinator's services around them are: storing a pop's
//! hand-out, applying and storing a result with its kudos and reputation, taking back late jobs,
//! and keeping several coordinators' copies in step (`jobs::lifecycle`, `cluster.rs`). What a
//! served kind adds is where its live requests are, how a worker looks to its matching, what a
//! job's reward is based on, and which speeds its results feed. The wire types, the request
//! rules and how a result is checked stay with the kind (for images: `requests.rs`, `jobs.rs`;
//! for texts: `texts/`).

use crate::lifecycle::JobResult;
use crate::live_requests::LiveRequests;
use crate::state::AppState;
use crate::workers::WorkerEntry;
use horde_api::webhook::{GenerationWebhook, WebhookBody};
use horde_api::webhook::{InterrogationFormWebhook, TextGenerationWebhook};
use horde_core::alchemy::{self, AlchemistCaps, Alchemy, AlchemyBody};
use horde_core::request::{Job, LiveRequest};
use horde_core::text::{pricing as text_pricing, Text, TextBody, TextWorkerCaps};
use horde_core::{pricing, Image};
use horde_store::StoredKind;
use std::future::Future;

/// A kind of work the coordinator serves (see the module documentation).
pub trait ServedKind: StoredKind {
    /// This kind's live requests.
    fn live(state: &AppState) -> &LiveRequests<Self>;

    /// The worker of `entry` as this kind's matching sees it.
    fn caps(state: &AppState, entry: &WorkerEntry) -> Self::Caps;

    /// The worker of `entry` as routing by reliability compares it with the one popping: its
    /// own declaration.
    fn standby_caps(entry: &WorkerEntry) -> Self::Caps;

    /// The kudos basis of one job of `request` run with `model`: the kind's job kudos with the
    /// model's multiplier. The worker's reward and the requester's charge are made of it.
    fn reward_basis(state: &AppState, request: &LiveRequest<Self>, model: &str) -> f64;

    /// What the worker of `worker` (`None`: no longer known) earns for delivering `result`,
    /// a job of `request` run with `model`.
    fn worker_reward(
        state: &AppState,
        request: &LiveRequest<Self>,
        model: &str,
        worker: Option<&WorkerEntry>,
        result: &JobResult<'_>,
    ) -> f64;

    /// Notes that `model` just did `work_per_sec` units of work a second, for the speeds the
    /// kind's wait estimates use.
    fn note_speed(state: &AppState, model: &str, now: i64, work_per_sec: f64);

    /// The URL a request's webhook calls go to, if it set one.
    fn webhook(body: &Self::Body) -> Option<&str>;

    /// The webhook call announcing finished `job` of `request` (the public horde's body for
    /// the kind).
    fn generation_webhook(
        state: &AppState,
        request: &LiveRequest<Self>,
        job: &Job,
    ) -> impl Future<Output = WebhookBody> + Send;
}

impl ServedKind for Image {
    fn live(state: &AppState) -> &LiveRequests<Image> {
        &state.live
    }

    fn caps(state: &AppState, entry: &WorkerEntry) -> horde_core::WorkerCaps {
        state.matching_view().caps(entry)
    }

    fn standby_caps(entry: &WorkerEntry) -> horde_core::WorkerCaps {
        entry.caps()
    }

    fn reward_basis(state: &AppState, request: &LiveRequest, model: &str) -> f64 {
        state.gen_kudos(request, model)
    }

    /// The basis with the bridge's multiplier (an unknown worker's: the lowest).
    fn worker_reward(
        state: &AppState,
        request: &LiveRequest,
        model: &str,
        worker: Option<&WorkerEntry>,
        _result: &JobResult<'_>,
    ) -> f64 {
        let multiplier = worker
            .map(|w| pricing::bridge_multiplier(&w.worker.bridge_agent))
            .unwrap_or(0.75);
        pricing::round2(Self::reward_basis(state, request, model) * multiplier)
    }

    /// Image speeds are kept in pixelsteps a second.
    fn note_speed(state: &AppState, model: &str, now: i64, megapixelsteps_per_sec: f64) {
        state
            .workers
            .record_speed(model, now, megapixelsteps_per_sec * 1e6);
    }

    fn webhook(body: &horde_api::image::ImageRequest) -> Option<&str> {
        body.webhook.as_deref()
    }

    /// The image as `/generate/status` gives it: a download URL for r2 requests, else the
    /// base64 WebP.
    async fn generation_webhook(state: &AppState, request: &LiveRequest, job: &Job) -> WebhookBody {
        let generation = state.generation(request, job).await;
        let request = request.id.to_string();
        WebhookBody::Generation(GenerationWebhook::of(
            generation, job.seed, request, job.reward,
        ))
    }
}

impl ServedKind for Text {
    fn live(state: &AppState) -> &LiveRequests<Text> {
        &state.live_text
    }

    fn caps(_state: &AppState, entry: &WorkerEntry) -> TextWorkerCaps {
        entry.text_caps()
    }

    fn standby_caps(entry: &WorkerEntry) -> TextWorkerCaps {
        entry.text_caps()
    }

    /// The job's kudos as priced at acceptance (the model's multiplier is in it already).
    fn reward_basis(_state: &AppState, request: &LiveRequest<Text>, _model: &str) -> f64 {
        request.job_kudos
    }

    /// The public horde's text reward: for the tokens delivered, by the model the worker ran
    /// (`text::pricing::worker_reward`).
    fn worker_reward(
        state: &AppState,
        request: &LiveRequest<Text>,
        model: &str,
        worker: Option<&WorkerEntry>,
        result: &JobResult<'_>,
    ) -> f64 {
        let reference = state.text_reference();
        let terms = text_pricing::RewardTerms {
            known_multiplier: reference.get(model).map(|_| reference.multiplier(model)),
            max_context_length: request.body.request.params.max_context_length,
            trusted: worker.is_some_and(|w| w.owner_trusted),
            validated_backend: worker.is_some_and(|w| {
                horde_core::text::kind::is_validated_backend(&w.worker.bridge_agent)
            }),
        };
        text_pricing::worker_reward(result.text.unwrap_or_default(), &terms)
    }

    /// Text speeds are kept in tokens a second.
    fn note_speed(state: &AppState, model: &str, now: i64, tokens_per_sec: f64) {
        state.workers.record_text_speed(model, now, tokens_per_sec);
    }

    fn webhook(body: &TextBody) -> Option<&str> {
        body.request.webhook.as_deref()
    }

    /// The text as `/generate/text/status` gives it.
    async fn generation_webhook(
        state: &AppState,
        request: &LiveRequest<Text>,
        job: &Job,
    ) -> WebhookBody {
        let generation = state.text_generation(job).await;
        WebhookBody::TextGeneration(TextGenerationWebhook::of(
            generation,
            job.id.to_string(),
            request.id.to_string(),
            job.reward,
        ))
    }
}

impl ServedKind for Alchemy {
    fn live(state: &AppState) -> &LiveRequests<Alchemy> {
        &state.live_alchemy
    }

    fn caps(_state: &AppState, entry: &WorkerEntry) -> AlchemistCaps {
        entry.alchemist_caps()
    }

    fn standby_caps(entry: &WorkerEntry) -> AlchemistCaps {
        entry.alchemist_caps()
    }

    /// The form's own kudos (`model` is the form's name).
    fn reward_basis(_state: &AppState, request: &LiveRequest<Alchemy>, form: &str) -> f64 {
        alchemy::form_kudos(form, request.body.image_tiles)
    }

    /// The form's kudos: alchemists are paid in full whatever their bridge (the public
    /// horde's 1.0 for alchemy).
    fn worker_reward(
        state: &AppState,
        request: &LiveRequest<Alchemy>,
        form: &str,
        _worker: Option<&WorkerEntry>,
        _result: &JobResult<'_>,
    ) -> f64 {
        Self::reward_basis(state, request, form)
    }

    /// Alchemy speeds are kept in forms a second.
    fn note_speed(state: &AppState, form: &str, now: i64, forms_per_sec: f64) {
        state.workers.record_alchemy_speed(form, now, forms_per_sec);
    }

    fn webhook(body: &AlchemyBody) -> Option<&str> {
        body.request.webhook.as_deref()
    }

    /// The form as `/interrogate/status` gives it, with the public horde's `request`, `id`
    /// and `kudos`.
    async fn generation_webhook(
        state: &AppState,
        request: &LiveRequest<Alchemy>,
        job: &Job,
    ) -> WebhookBody {
        let form = state.form_status(request, &job.model).await;
        WebhookBody::InterrogationForm(InterrogationFormWebhook {
            form,
            id: job.id.to_string(),
            request: request.id.to_string(),
            kudos: job.reward,
        })
    }
}
