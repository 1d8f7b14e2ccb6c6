//! The bodies a request's webhook URL is POSTed.
//!
//! [`GenerationWebhook`], once per finished image, is the public AI Horde's body field for field:
//! `ImageProcessingGeneration.get_details` in Haidra-Org/AI-Horde
//! `horde/classes/stable/processing_generation.py` (`img`, `seed`, `worker_id`, `worker_name`,
//! `model`, `id`, `censored`, `gen_metadata`), to which `ProcessingGeneration.send_webhook` in
//! `horde/classes/base/processing_generation.py` adds `request` (the request's id), `id` and
//! `worker_id` as strings, and `kudos` (the generation's reward). Unlike `/generate/status`,
//! the seed is a JSON number there, and so here.
//!
//! [`RequestFinishedWebhook`] is ours: once when the whole request is done, faulted or
//! cancelled, so a client need not count images to know it has them all.
//!
//! [`TextGenerationWebhook`] is the public horde's call for a finished text.
//!
//! [`InterrogationFormWebhook`] is the public horde's call for a finished interrogation form.
//!
//! All go out as a [`WebhookBody`], which adds an `event` field: `"generation"`,
//! `"text_generation"`, `"interrogation_form"` or `"request_finished"`. The public body has none; receivers written for it read the keys they
//! know and ignore the others (a Python dict, pydantic's default `extra = "ignore"`, serde
//! without `deny_unknown_fields`), so the extra key breaks none of them, and it lets a receiver
//! of both tell them apart from the body alone (the sender repeats it in a header, for routing
//! before parsing). [`GenerationWebhook`] itself parses the public horde's body, `event` or not.
//!
//! How a body is signed, identified and retried is horde-core's `webhook` module.

use crate::image::{GenMetadata, Generation};
use crate::interrogation::InterrogationFormStatus;
use crate::text::TextGeneration;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A webhook call's body, tagged with its `event`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum WebhookBody {
    /// One image of the request finished (the public horde's call).
    Generation(GenerationWebhook),
    /// One text of a text request finished (the public horde's call for texts).
    TextGeneration(TextGenerationWebhook),
    /// One form of an interrogation finished (the public horde's call for alchemy).
    InterrogationForm(InterrogationFormWebhook),
    /// The whole request ended (ours).
    RequestFinished(RequestFinishedWebhook),
}

impl WebhookBody {
    /// The body's `event` value, for the event header.
    pub fn event(&self) -> &'static str {
        match self {
            WebhookBody::Generation(_) => "generation",
            WebhookBody::TextGeneration(_) => "text_generation",
            WebhookBody::InterrogationForm(_) => "interrogation_form",
            WebhookBody::RequestFinished(_) => "request_finished",
        }
    }

    /// The request the call is about.
    pub fn request_id(&self) -> &str {
        match self {
            WebhookBody::Generation(body) => &body.request,
            WebhookBody::TextGeneration(body) => &body.request,
            WebhookBody::InterrogationForm(body) => &body.request,
            WebhookBody::RequestFinished(body) => &body.request,
        }
    }
}

/// The secret that signs a user's webhook calls (`X-Horde-Signature: sha256=<HMAC-SHA256 of
/// the body with this secret, hex>`), for the user themself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WebhookSecret {
    pub webhook_secret: String,
}

/// One finished image, as the public horde POSTs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GenerationWebhook {
    /// A download URL (r2 requests) or the base64 WebP (r2: false), as in `/generate/status`.
    pub img: String,
    /// The seed the image was made with (a number here, a string in `/generate/status`).
    #[serde(default)]
    pub seed: Option<u64>,
    pub worker_id: String,
    pub worker_name: String,
    pub model: String,
    /// The generation's id (as `id` in `/generate/status`).
    pub id: String,
    pub censored: bool,
    #[serde(default)]
    pub gen_metadata: Vec<GenMetadata>,
    /// The request's id, as returned by `/generate/async`.
    pub request: String,
    /// What the image cost (the worker's reward).
    pub kudos: f64,
}

impl GenerationWebhook {
    /// The call announcing `generation` (as `/generate/status` lists it) of `request`, whose
    /// seed is `seed` and whose reward is `kudos`: the public horde's `get_details` plus
    /// `request` and `kudos`.
    pub fn of(generation: Generation, seed: u64, request: String, kudos: f64) -> Self {
        GenerationWebhook {
            img: generation.img,
            seed: Some(seed),
            worker_id: generation.worker_id,
            worker_name: generation.worker_name,
            model: generation.model,
            id: generation.id,
            censored: generation.censored,
            gen_metadata: generation.gen_metadata,
            request,
            kudos,
        }
    }
}

/// One finished text, as the public horde POSTs it (`TextProcessingGeneration.get_details`
/// with `request` and `kudos`): the entry of `/generate/text/status`'s `generations`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TextGenerationWebhook {
    #[serde(flatten)]
    pub generation: TextGeneration,
    /// The generation's (job's) id, which `send_webhook` adds.
    pub id: String,
    /// The request's id, as returned by `/generate/text/async`.
    pub request: String,
    /// What the text earned its worker.
    pub kudos: f64,
}

impl TextGenerationWebhook {
    pub fn of(generation: TextGeneration, id: String, request: String, kudos: f64) -> Self {
        TextGenerationWebhook {
            generation,
            id,
            request,
            kudos,
        }
    }
}

/// One finished form, as the public horde POSTs it (`InterrogationForms.send_webhook`): the
/// form's status entry with `request`, `id` and `kudos`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InterrogationFormWebhook {
    #[serde(flatten)]
    pub form: InterrogationFormStatus,
    /// The form's (job's) id.
    pub id: String,
    /// The interrogation's id, as returned by `/interrogate/async`.
    pub request: String,
    /// What the form earned its alchemist.
    pub kudos: f64,
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FinalState {
    /// Every image it asked for is finished.
    Done,
    /// It gave up (its jobs were taken back too often, or it expired).
    Faulted,
    /// Its requester cancelled it; the images finished before stay.
    Cancelled,
}

/// The whole request ended (beyond the public horde).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RequestFinishedWebhook {
    /// The request's id, as returned by `/generate/async`.
    pub request: String,
    pub state: FinalState,
    /// Images asked for.
    pub requested: u32,
    /// Images delivered (censored ones included), each of which had its `generation` call.
    pub finished: u32,
    /// Of those, how many were censored.
    pub censored: u32,
    /// Jobs that faulted (taken back or reported faulted by their worker).
    pub faulted: u32,
    /// What the request cost in all.
    pub kudos: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// A body as the public horde sends it: `get_details` plus `request`, `id` and `kudos`.
    fn public_body() -> Value {
        json!({
            "img": "https://r2.example.com/4c1b2a.webp",
            "seed": 3141592653_u64,
            "worker_id": "0f9a6d3e-1111-4c2b-9a55-2f1d7c3b8e01",
            "worker_name": "Tiny Titan",
            "model": "stable_diffusion",
            "id": "4c1b2a5e-2222-4e0f-8d11-7e2a9c4b6f10",
            "censored": false,
            "gen_metadata": [{"type": "lora", "value": "download_failed", "ref": "12345"}],
            "request": "9e0d8c7b-3333-4a1f-b2c4-5d6e7f8a9b0c",
            "kudos": 10.5,
        })
    }

    #[test]
    fn the_public_hordes_body_parses_without_an_event() {
        let body: GenerationWebhook = serde_json::from_value(public_body()).unwrap();
        assert_eq!(body.seed, Some(3141592653));
        assert_eq!(body.worker_name, "Tiny Titan");
        assert_eq!(body.gen_metadata[0].r#ref.as_deref(), Some("12345"));
        assert_eq!(body.request, "9e0d8c7b-3333-4a1f-b2c4-5d6e7f8a9b0c");
        assert_eq!(body.kudos, 10.5);
    }

    #[test]
    fn a_generation_call_is_the_public_body_plus_its_event() {
        let body: GenerationWebhook = serde_json::from_value(public_body()).unwrap();
        let sent = WebhookBody::Generation(body);
        assert_eq!(sent.event(), "generation");
        assert_eq!(sent.request_id(), "9e0d8c7b-3333-4a1f-b2c4-5d6e7f8a9b0c");
        let mut expected = public_body();
        expected["event"] = json!("generation");
        let value = serde_json::to_value(&sent).unwrap();
        assert_eq!(value, expected);
        assert_eq!(serde_json::from_value::<WebhookBody>(value).unwrap(), sent);
    }

    #[test]
    fn a_finished_request_call_names_its_state_and_counts() {
        let sent = WebhookBody::RequestFinished(RequestFinishedWebhook {
            request: "9e0d8c7b".into(),
            state: FinalState::Cancelled,
            requested: 4,
            finished: 2,
            censored: 1,
            faulted: 0,
            kudos: 21.0,
        });
        assert_eq!(sent.event(), "request_finished");
        let value = serde_json::to_value(&sent).unwrap();
        assert_eq!(
            value,
            json!({"event": "request_finished", "request": "9e0d8c7b", "state": "cancelled",
                   "requested": 4, "finished": 2, "censored": 1, "faulted": 0, "kudos": 21.0})
        );
        assert_eq!(serde_json::from_value::<WebhookBody>(value).unwrap(), sent);
        for (state, text) in [(FinalState::Done, "done"), (FinalState::Faulted, "faulted")] {
            assert_eq!(serde_json::to_value(state).unwrap(), json!(text));
        }
    }

    #[test]
    fn a_text_call_is_the_public_text_body_plus_its_id_request_kudos_and_event() {
        let public = json!({
            "text": " and the sea was calm.", "seed": 42,
            "worker_id": "0f9a6d3e-1111-4c2b-9a55-2f1d7c3b8e01", "worker_name": "scribe",
            "model": "koboldcpp/Marx-3B-V3", "state": "ok", "gen_metadata": [],
            "id": "4c1b2a5e-2222-4e0f-8d11-7e2a9c4b6f10",
            "request": "9e0d8c7b-3333-4a1f-b2c4-5d6e7f8a9b0c", "kudos": 3.5,
        });
        let body: TextGenerationWebhook = serde_json::from_value(public.clone()).unwrap();
        assert_eq!(body.generation.text, " and the sea was calm.");
        let sent = WebhookBody::TextGeneration(body);
        assert_eq!(sent.event(), "text_generation");
        assert_eq!(sent.request_id(), "9e0d8c7b-3333-4a1f-b2c4-5d6e7f8a9b0c");
        let mut expected = public;
        expected["event"] = json!("text_generation");
        let value = serde_json::to_value(&sent).unwrap();
        assert_eq!(value, expected);
        assert_eq!(serde_json::from_value::<WebhookBody>(value).unwrap(), sent);
    }

    #[test]
    fn a_body_of_an_unknown_event_is_refused() {
        let mut body = public_body();
        body["event"] = json!("something_else");
        assert!(serde_json::from_value::<WebhookBody>(body).is_err());
    }
}
