//! Batches of prompts (beyond the public horde): `POST /api/v2/generate/batch` asks for several
//! image requests that share everything but their prompt and seed, under one batch id. Each
//! member is an ordinary image request (its own id, status, cancel and kudos); the batch is a
//! way to submit, follow and cancel them together, and lets a worker that runs a prompt per
//! image make several members in one pass.
//!
//! The body is every field of `POST /generate/async` (an [`ImageRequest`]) except `prompt`,
//! shared by every member, plus `prompts`: the members. A member's stored prompt is the public
//! horde's `prompt ### negative` form, so existing workers read it unchanged.

use crate::image::{ImageRequest, RequestWarning, SeedInput};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// The batch size a horde allows unless its operator says otherwise (`[requests]
/// max_batch_prompts`); the spec states this bound.
pub const DEFAULT_MAX_BATCH_PROMPTS: usize = 32;

/// The body of `POST /generate/batch`: `prompts`, and every field of `ImageRequest` but
/// `prompt`, shared by the members (the spec lists them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BatchRequest {
    /// One member per entry, in this order (a member's `index`).
    #[schema(min_items = 1, max_items = 32)]
    pub prompts: Vec<BatchPrompt>,
    /// The shared fields of `ImageRequest` (a `prompt` here is ignored).
    #[serde(flatten)]
    #[schema(ignore)]
    pub shared: Map<String, Value>,
}

impl BatchRequest {
    /// A batch of `prompts` sharing the fields of `shared` (its own prompt left out).
    pub fn new(shared: &ImageRequest, prompts: Vec<BatchPrompt>) -> Self {
        let mut shared = match serde_json::to_value(shared) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        };
        shared.remove("prompt");
        BatchRequest { prompts, shared }
    }
}

/// One member of a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BatchPrompt {
    /// The member's prompt (without a negative prompt: that is `negative_prompt`).
    pub prompt: String,
    /// Stored as `prompt ### negative_prompt`, the public horde's form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negative_prompt: Option<String>,
    /// The member's seed, in place of the shared `params.seed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<SeedInput>,
}

impl BatchPrompt {
    pub fn new(prompt: impl Into<String>) -> Self {
        BatchPrompt {
            prompt: prompt.into(),
            negative_prompt: None,
            seed: None,
        }
    }

    /// The member's prompt as the public horde stores one: `prompt ### negative`.
    pub fn full_prompt(&self) -> String {
        match &self.negative_prompt {
            Some(negative) => format!("{} ### {negative}", self.prompt),
            None => self.prompt.clone(),
        }
    }
}

/// 202 answer of `POST /generate/batch`: the batch's id and each member's request id, in the
/// order of `prompts` (a dry run's 200 has neither, only the price).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BatchResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default)]
    pub ids: Vec<String>,
    /// The members' kudos, summed (each as `POST /generate/async` reports it).
    pub kudos: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The members' warnings, each once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<RequestWarning>,
}

/// `GET` and `DELETE /generate/batch/{id}`: each member's progress and the whole's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BatchStatus {
    pub id: String,
    /// Sums over the members.
    pub finished: u32,
    pub processing: u32,
    pub restarted: u32,
    pub waiting: u32,
    /// Members that faulted.
    pub faulted: u32,
    /// Every member is done.
    pub done: bool,
    /// The kudos the members consumed, summed.
    pub kudos: f64,
    /// In the order of the batch's `prompts`.
    pub members: Vec<BatchMember>,
}

/// One member's progress in a [`BatchStatus`] (its `GET /generate/check/{id}` counters).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BatchMember {
    /// The member's request id.
    pub id: String,
    /// Its place in the batch's `prompts`.
    pub index: u32,
    pub finished: u32,
    pub processing: u32,
    pub restarted: u32,
    pub waiting: u32,
    pub faulted: bool,
    pub done: bool,
    pub kudos: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_negative_prompt_follows_three_hashes() {
        let mut member = BatchPrompt::new("a cat");
        assert_eq!(member.full_prompt(), "a cat");
        member.negative_prompt = Some("blurry".into());
        assert_eq!(member.full_prompt(), "a cat ### blurry");
    }

    #[test]
    fn the_shared_fields_sit_beside_prompts_without_a_prompt_of_their_own() {
        let mut shared = ImageRequest::new("ignored");
        shared.params.steps = Some(12);
        let body =
            serde_json::to_value(BatchRequest::new(&shared, vec![BatchPrompt::new("a")])).unwrap();
        assert_eq!(body["params"]["steps"], 12);
        assert_eq!(body["prompts"][0]["prompt"], "a");
        assert!(body.get("prompt").is_none());
    }
}
