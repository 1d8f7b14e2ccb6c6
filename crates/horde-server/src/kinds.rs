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
//! rules and how a result is checked stay with the kind (for images: `requests.rs`,
//! `jobs::image`).

use crate::live_requests::LiveRequests;
use crate::state::AppState;
use crate::workers::WorkerEntry;
use horde_api::webhook::{GenerationWebhook, WebhookBody};
use horde_core::request::{Job, LiveRequest};
use horde_core::Image;
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
