//! Interrogation ("alchemy") bodies: the request (`POST /interrogate/async`) of forms run on one
//! source image, its status, the alchemist's pop and submit. The public horde's shapes
//! (`horde/apis/models/stable_v2.py`, the `Interrogation*` models) as horde-sdk reads them.
//!
//! A form is one job: `caption`, `interrogation`, `nsfw`, or a post-processor run on the image
//! alone (its result an uploaded image's URL). A form named twice is kept once, as the public
//! horde keeps it.

use crate::error::{ErrorBody, FieldErrors};
use crate::image::{check_pop_worker, GenMetadata, SkippedCounts, SubmitState, POST_PROCESSORS};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The forms this horde takes: the three of the interrogation models, and every
/// post-processor of image requests.
pub fn forms() -> impl Iterator<Item = &'static str> {
    ["caption", "interrogation", "nsfw"]
        .into_iter()
        .chain(POST_PROCESSORS.iter().copied())
}

/// Whether `name` is a form this horde takes.
pub fn is_known_form(name: &str) -> bool {
    forms().any(|f| f == name)
}

/// Whether form `name` makes an image (a post-processor), uploaded like a generation.
pub fn makes_image(name: &str) -> bool {
    POST_PROCESSORS.contains(&name)
}

/// At most this many forms in a request (each known form once).
pub const MAX_FORMS: usize = 32;
/// A form's payload, serialised, is at most this many bytes.
pub const MAX_PAYLOAD_BYTES: usize = 4096;
/// A source image given as a URL is at most this long.
pub const MAX_SOURCE_URL_CHARS: usize = 2048;
/// A result, serialised, is at most this many bytes (an interrogation's ranked terms).
pub const MAX_RESULT_BYTES: usize = 64 * 1024;
/// An alchemist's `max_tiles` (512×512 tiles it takes in one image) is within this range.
pub const MAX_TILES: u32 = 256;

fn yes() -> bool {
    true
}
fn one() -> u32 {
    1
}
fn default_max_tiles() -> u32 {
    16
}
fn default_bridge_agent() -> String {
    crate::DEFAULT_CLIENT_AGENT.to_string()
}

/// One form asked for: its name and, for some, a payload passed to the alchemist as sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InterrogationForm {
    #[schema(min_length = 1, max_length = 30)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub payload: Option<serde_json::Value>,
}

/// The body of `POST /interrogate/async` (ModelInterrogationInputStable).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InterrogationRequest {
    #[schema(min_items = 1, max_items = 32)]
    pub forms: Vec<InterrogationForm>,
    /// The image: a URL, or base64 (WebP, PNG or JPEG).
    pub source_image: String,
    #[serde(default)]
    pub trusted_workers: bool,
    #[serde(default = "yes")]
    pub slow_workers: bool,
    #[serde(default)]
    pub extra_slow_workers: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 10, max_length = 1024, pattern = "^https://")]
    pub webhook: Option<String>,
}

impl InterrogationRequest {
    pub fn validate(&self) -> Result<(), ErrorBody> {
        let mut errors = FieldErrors::default();
        if self.forms.is_empty() {
            errors.add("forms", "at least one form");
        }
        errors.max_len("forms", &self.forms, MAX_FORMS);
        for (i, form) in self.forms.iter().enumerate() {
            errors.max_chars(&format!("forms.{i}.name"), &form.name, 30);
            let size = form
                .payload
                .as_ref()
                .map_or(0, |p| serde_json::to_string(p).map_or(0, |s| s.len()));
            if size > MAX_PAYLOAD_BYTES {
                errors.add(
                    &format!("forms.{i}.payload"),
                    format!("{size} bytes is more than the maximum of {MAX_PAYLOAD_BYTES}"),
                );
            }
        }
        if self.source_image.is_empty() {
            errors.add("source_image", "an image is needed");
        }
        if let Some(hook) = &self.webhook {
            errors.max_chars("webhook", hook, 1024);
        }
        errors.into_result()
    }
}

/// 202 answer of `POST /interrogate/async`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InterrogationAsyncResponse {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// What the forms will cost (ours: the public answer has none).
    pub kudos: f64,
}

/// One form in `GET /interrogate/status/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InterrogationFormStatus {
    pub form: String,
    /// `waiting`, `processing`, `done`, `faulted` or `cancelled`.
    pub state: String,
    /// The alchemist's result (`{"caption": …}`, `{"nsfw": …}`, `{"interrogation": …}`,
    /// `{"<post-processor>": "<url>"}`); `null` until done.
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    pub worker_id: Option<String>,
    pub worker_name: Option<String>,
}

/// `GET` and `DELETE /interrogate/status/{id}` (InterrogationStatus).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InterrogationStatus {
    /// `waiting`, `processing`, `partial`, `done`, `faulted` or `cancelled`.
    pub state: String,
    pub forms: Vec<InterrogationFormStatus>,
}

/// The body of `POST /interrogate/pop` (InterrogationPopInput).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InterrogationPopRequest {
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    #[serde(default)]
    pub priority_usernames: Vec<String>,
    /// The forms this alchemist runs.
    #[serde(default)]
    #[schema(max_items = 32)]
    pub forms: Vec<String>,
    #[serde(default = "one")]
    #[schema(minimum = 1, maximum = 20)]
    pub amount: u32,
    #[serde(default = "default_bridge_agent")]
    #[schema(max_length = 1000)]
    pub bridge_agent: String,
    #[serde(default = "one")]
    #[schema(minimum = 1, maximum = 100)]
    pub threads: u32,
    /// The most 512×512 tiles of a source image it takes.
    #[serde(default = "default_max_tiles")]
    #[schema(minimum = 1, maximum = 256)]
    pub max_tiles: u32,
    /// Beyond the public horde: what this worker runs on (shown by `GET /workers/{id}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware: Option<crate::worker::WorkerHardware>,
}

impl InterrogationPopRequest {
    /// A pop by alchemist `name` with every other field at the public server's default.
    pub fn new(name: impl Into<String>) -> Self {
        let mut pop: InterrogationPopRequest =
            serde_json::from_value(serde_json::json!({"name": ""}))
                .expect("all other fields have defaults");
        pop.name = name.into();
        pop
    }

    pub fn validate(&self) -> Result<(), ErrorBody> {
        let mut errors = FieldErrors::default();
        let worker = (
            self.name.as_str(),
            self.threads.min(50),
            self.amount,
            self.bridge_agent.as_str(),
        );
        check_pop_worker(&mut errors, worker, &self.priority_usernames, &[]);
        errors.range("threads", self.threads, 1, 100);
        errors.range("max_tiles", self.max_tiles, 1, MAX_TILES);
        if self.forms.is_empty() {
            errors.add("forms", "an alchemist runs at least one form");
        }
        errors.max_len("forms", &self.forms, MAX_FORMS);
        if let Some(hardware) = &self.hardware {
            hardware.check(&mut errors);
        }
        errors.into_result()
    }
}

/// One form handed to an alchemist (InterrogationPopFormPayload).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InterrogationPopForm {
    pub id: String,
    pub form: String,
    #[schema(value_type = Option<Object>)]
    pub payload: Option<serde_json::Value>,
    /// Where to download the image: a signed URL of this horde, or the requester's URL.
    pub source_image: String,
    /// For a post-processor: where to PUT the resulting WebP before submitting `"R2"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r2_upload: Option<String>,
}

/// The answer of `POST /interrogate/pop` (InterrogationPopPayload).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InterrogationPopResponse {
    pub forms: Vec<InterrogationPopForm>,
    pub skipped: SkippedCounts,
    /// The worker's active messages (`/workers/messages`), as the image pop shows them;
    /// absent when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<serde_json::Value>,
}

/// The body of `POST /interrogate/submit` (SubmitInputStable for alchemy).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InterrogationSubmitRequest {
    #[schema(max_length = 64)]
    pub id: String,
    /// The form's result: an object (`{"caption": "…"}`, …) or, for a post-processor whose image
    /// was uploaded, `{"<form>": "R2"}`.
    #[schema(value_type = Object)]
    pub result: serde_json::Value,
    #[serde(default)]
    pub state: SubmitState,
    #[serde(default)]
    #[schema(max_items = 50)]
    pub gen_metadata: Vec<GenMetadata>,
}

impl InterrogationSubmitRequest {
    pub fn validate(&self) -> Result<(), ErrorBody> {
        let mut errors = FieldErrors::default();
        errors.max_chars("id", &self.id, 64);
        let size = serde_json::to_string(&self.result).map_or(0, |s| s.len());
        if size > MAX_RESULT_BYTES {
            errors.add(
                "result",
                format!("{size} bytes is more than the maximum of {MAX_RESULT_BYTES}"),
            );
        }
        if !(self.result.is_object() || self.result.is_string() || self.result.is_null()) {
            errors.add("result", "an object");
        }
        crate::image::check_gen_metadata(&mut errors, &self.gen_metadata);
        errors.into_result()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_submits_metadata_is_bounded_as_every_kinds() {
        let long = "x".repeat(crate::image::MAX_LIST_ENTRY_CHARS + 1);
        let submit: InterrogationSubmitRequest = serde_json::from_value(json!({
            "id": "a", "result": {"caption": "c"},
            "gen_metadata": [{"type": "information", "value": long}],
        }))
        .unwrap();
        let refused = submit.validate().unwrap_err();
        assert!(
            serde_json::to_string(&refused)
                .unwrap()
                .contains("gen_metadata.value"),
            "{refused:?}"
        );
        let fine: InterrogationSubmitRequest = serde_json::from_value(json!({
            "id": "a", "result": {"caption": "c"},
            "gen_metadata": [{"type": "information", "value": "see_ref"}],
        }))
        .unwrap();
        fine.validate().unwrap();
    }
}
