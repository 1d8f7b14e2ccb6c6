//! Text generation bodies ("kobold" on the public horde): the request (`POST
//! /generate/text/async`), the status answer, the worker's pop and submit.
//!
//! Why the sampler fields are optional: the public horde passes `params` to the worker as the
//! client sent them, and the backend (KoboldCpp, a bridge to an inference server) applies its
//! own default for a sampler left out. Only `n`, `max_length` and `max_context_length` have
//! server-side defaults, because the horde itself prices and matches on them. Bounds are those of
//! the public schema (ModelGenerationInputKobold, `shared/docs/horde-api.md` §10); the rules
//! that carry an `rc` (`TokenOverflow`, `MissingFullSamplerOrder`, the stop sequences) are
//! horde-core's `text::rules`, not schema errors.

use crate::error::{ErrorBody, FieldErrors};
use crate::image::{
    check_pop_worker, AsyncResponse, GenMetadata, RequestStatusCheck, SkippedCounts, SubmitState,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The most tokens a request may ask to generate (`max_length`).
pub const MAX_LENGTH: u32 = 4096;
/// The fewest tokens a request may ask to generate.
pub const MIN_LENGTH: u32 = 16;
/// The largest context a request may ask for (`max_context_length`).
pub const MAX_CONTEXT_LENGTH: u32 = 1_048_576;
/// The smallest context a request may ask for.
pub const MIN_CONTEXT_LENGTH: u32 = 80;
/// At most this many generations per request (`n`).
pub const MAX_N: u32 = 20;
/// KoboldAI's samplers, numbered 0..=6; a custom `sampler_order` must name all of them.
pub const SAMPLER_COUNT: usize = 7;
/// The longest `sampler_order` list accepted (its entries are checked by the rules).
pub const MAX_SAMPLER_ORDER: usize = 16;
/// At most this many stop sequences (`TooManyStopSequences` beyond, by the rules); the schema
/// refuses lists far past it before they are read.
pub const MAX_STOP_SEQUENCES: usize = 128;
/// At most this many characters in all stop sequences together (`ExcessiveStopSequence`).
pub const MAX_STOP_SEQUENCE_CHARS: usize = 2000;
/// The schema's cut on the stop-sequence list, past which it is a field error, not an `rc`.
pub const MAX_STOP_SEQUENCE_ITEMS: usize = 1024;
/// A prompt fills at most the largest context; at about four characters a token this bounds
/// its characters (the operator's `max_prompt_chars` is usually far lower).
pub const MAX_PROMPT_CHARS: usize = 4 * MAX_CONTEXT_LENGTH as usize;
/// A softprompt's name, and one a worker offers, is at most this long (the public horde cuts
/// worker softprompts to 100 characters).
pub const MAX_SOFTPROMPT_CHARS: usize = 100;
/// A worker offers at most this many softprompts (the public horde keeps the first 200).
pub const MAX_WORKER_SOFTPROMPTS: usize = 200;
/// At most this many models in a request or a pop.
pub const MAX_TEXT_MODELS: usize = 100;
/// At most this many workers named in a request (the rules keep the first 5, as the public
/// horde does).
pub const MAX_TEXT_WORKERS: usize = 100;
/// The longest generated text a worker may submit, in characters: [`MAX_LENGTH`] tokens of up
/// to 64 characters each.
pub const MAX_GENERATION_CHARS: usize = 64 * MAX_LENGTH as usize;
/// Names in the pop's lists (models, priority users, blacklist) are at most this long.
pub const MAX_NAME_CHARS: usize = crate::image::MAX_LIST_ENTRY_CHARS;

fn yes() -> bool {
    true
}
fn one() -> u32 {
    1
}
fn default_max_length() -> u32 {
    80
}
fn default_max_context_length() -> u32 {
    2048
}
fn default_worker_max_length() -> u32 {
    512
}
fn default_bridge_agent() -> String {
    crate::DEFAULT_CLIENT_AGENT.to_string()
}

/// The generation parameters (ModelGenerationInputKobold); passed to the worker as sent, with
/// `n`, `max_length` and `max_context_length` written in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TextParams {
    #[serde(default = "one")]
    #[schema(minimum = 1, maximum = 20)]
    pub n: u32,
    /// Tokens to generate; at most `max_context_length` (`TokenOverflow`).
    #[serde(default = "default_max_length")]
    #[schema(minimum = 16, maximum = 4096)]
    pub max_length: u32,
    /// Tokens of context (prompt and generation) sent to the model.
    #[serde(default = "default_max_context_length")]
    #[schema(minimum = 80, maximum = 1048576)]
    pub max_context_length: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 3)]
    pub rep_pen: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 4096)]
    pub rep_pen_range: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 10)]
    pub rep_pen_slope: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 5)]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 1)]
    pub tfs: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 1)]
    pub top_a: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 200)]
    pub top_k: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0.001, maximum = 1)]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 1)]
    pub typical: Option<f64>,
    /// KoboldAI's sampler numbers (0..=6) in the order they run; all seven when given
    /// (`MissingFullSamplerOrder`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_items = 16)]
    pub sampler_order: Option<Vec<u32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_default_badwordsids: Option<bool>,
    /// Sequences that end the generation (kept in the text); at most 128, 2000 characters in
    /// all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_items = 1024)]
    pub stop_sequence: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 1)]
    pub min_p: Option<f64>,
    /// Quadratic sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 10)]
    pub smoothing_factor: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 5)]
    pub dynatemp_range: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 5)]
    pub dynatemp_exponent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub singleline: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frmtadsnsp: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frmtrmblln: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frmtrmspch: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frmttriminc: Option<bool>,
}

impl Default for TextParams {
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("every field has a default")
    }
}

/// A float field's bounds: `(name, value, min, max)`.
type FloatBound<'a> = (&'static str, Option<f64>, f64, f64);

impl TextParams {
    /// The schema's bounds, each out-of-range field named in `errors`.
    pub fn check_bounds(&self, errors: &mut FieldErrors) {
        errors.range("params.n", self.n, 1, MAX_N);
        errors.range("params.max_length", self.max_length, MIN_LENGTH, MAX_LENGTH);
        errors.range(
            "params.max_context_length",
            self.max_context_length,
            MIN_CONTEXT_LENGTH,
            MAX_CONTEXT_LENGTH,
        );
        for (field, value, min, max) in self.float_bounds() {
            match value {
                Some(v) if v.is_nan() => errors.add(field, "not a number"),
                Some(v) => errors.range(field, v, min, max),
                None => {}
            }
        }
        if let Some(range) = self.rep_pen_range {
            errors.range("params.rep_pen_range", range, 0, 4096);
        }
        if let Some(top_k) = self.top_k {
            errors.range("params.top_k", top_k, 0, 200);
        }
        if let Some(order) = &self.sampler_order {
            errors.max_len("params.sampler_order", order, MAX_SAMPLER_ORDER);
        }
        if let Some(stops) = &self.stop_sequence {
            errors.max_len("params.stop_sequence", stops, MAX_STOP_SEQUENCE_ITEMS);
            for stop in stops {
                errors.max_chars("params.stop_sequence", stop, MAX_STOP_SEQUENCE_CHARS);
            }
        }
    }

    fn float_bounds(&self) -> [FloatBound<'_>; 11] {
        [
            ("params.rep_pen", self.rep_pen, 1.0, 3.0),
            ("params.rep_pen_slope", self.rep_pen_slope, 0.0, 10.0),
            ("params.temperature", self.temperature, 0.0, 5.0),
            ("params.tfs", self.tfs, 0.0, 1.0),
            ("params.top_a", self.top_a, 0.0, 1.0),
            ("params.top_p", self.top_p, 0.001, 1.0),
            ("params.typical", self.typical, 0.0, 1.0),
            ("params.min_p", self.min_p, 0.0, 1.0),
            ("params.smoothing_factor", self.smoothing_factor, 0.0, 10.0),
            ("params.dynatemp_range", self.dynatemp_range, 0.0, 5.0),
            ("params.dynatemp_exponent", self.dynatemp_exponent, 0.0, 5.0),
        ]
    }
}

/// The body of `POST /generate/text/async` (GenerationInputKobold).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TextRequest {
    /// The text the model continues (no chat template: the Kobold API's plain continuation).
    pub prompt: String,
    #[serde(default)]
    pub params: TextParams,
    /// Only workers offering this softprompt serve the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 100)]
    pub softprompt: Option<String>,
    /// Acceptable models; none: any text worker's model.
    #[serde(default)]
    pub models: Vec<String>,
    /// Workers (ids) allowed to serve it, or refused with `worker_blacklist`.
    #[serde(default)]
    pub workers: Vec<String>,
    #[serde(default)]
    pub worker_blacklist: bool,
    #[serde(default)]
    pub trusted_workers: bool,
    /// Only inference backends the horde validated (by the worker's bridge name).
    #[serde(default = "yes")]
    pub validated_backends: bool,
    #[serde(default = "yes")]
    pub slow_workers: bool,
    #[serde(default)]
    pub extra_slow_workers: bool,
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub disable_batching: bool,
    #[serde(default)]
    pub allow_downgrade: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 255)]
    pub proxied_account: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 10, max_length = 1024, pattern = "^https://")]
    pub webhook: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 3, max_length = 1024)]
    pub style: Option<String>,
    /// Never accepted for text (`InvalidExtraSourceImages`); read so the refusal can say so.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Object>, max_items = 5)]
    pub extra_source_images: Vec<serde_json::Value>,
}

impl TextRequest {
    /// A request for `prompt` with every other field at the public server's default.
    pub fn new(prompt: impl Into<String>) -> Self {
        let mut request: TextRequest = serde_json::from_value(serde_json::json!({"prompt": ""}))
            .expect("all other fields have defaults");
        request.prompt = prompt.into();
        request
    }

    /// Bounds the schema enforces (400 with an `errors` map).
    pub fn validate(&self) -> Result<(), ErrorBody> {
        let mut errors = FieldErrors::default();
        errors.max_chars("prompt", &self.prompt, MAX_PROMPT_CHARS);
        self.params.check_bounds(&mut errors);
        if let Some(softprompt) = &self.softprompt {
            errors.range(
                "softprompt",
                softprompt.chars().count(),
                1,
                MAX_SOFTPROMPT_CHARS,
            );
        }
        names("models", &self.models, MAX_TEXT_MODELS, &mut errors);
        names("workers", &self.workers, MAX_TEXT_WORKERS, &mut errors);
        if let Some(account) = &self.proxied_account {
            errors.max_chars("proxied_account", account, 255);
        }
        if let Some(hook) = &self.webhook {
            errors.range("webhook", hook.chars().count(), 10, 1024);
        }
        if let Some(style) = &self.style {
            errors.range("style", style.chars().count(), 3, 1024);
        }
        errors.max_len("extra_source_images", &self.extra_source_images, 5);
        errors.into_result()
    }
}

/// A list of at most `most` names of 1..=255 characters; the first bad entry is named (one
/// error a list, so a long list cannot grow the answer).
fn names(field: &str, list: &[String], most: usize, errors: &mut FieldErrors) {
    errors.max_len(field, list, most);
    let bad = |name: &String| name.is_empty() || name.chars().count() > MAX_NAME_CHARS;
    if let Some(i) = list.iter().position(bad) {
        errors.add(&format!("{field}.{i}"), "names are 1..255 characters");
    }
}

/// 202 answer of `POST /generate/text/async` (`{id, kudos, message?}`; a dry run answers 200
/// `{kudos}`): the image answer's shape.
pub type TextAsyncResponse = AsyncResponse;

/// One finished text in `GET /generate/text/status/{id}` (GenerationKobold). Unlike an image
/// generation it carries no `id` (the public horde's `get_details` has none, and horde-sdk's
/// strict model refuses one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TextGeneration {
    pub text: String,
    /// An integer here, unlike the image status's string seed.
    #[serde(default)]
    pub seed: i64,
    pub worker_id: String,
    pub worker_name: String,
    pub model: String,
    /// `ok`, `censored` or `csam`.
    pub state: String,
    #[serde(default)]
    pub gen_metadata: Vec<GenMetadata>,
}

/// `GET` and `DELETE /generate/text/status/{id}` (RequestStatusKobold): the light status
/// (`done`, `faulted`, `waiting`, `processing`, `queue_position`, `wait_time`, `kudos`,
/// `is_possible`, …) plus the texts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TextRequestStatus {
    #[serde(flatten)]
    pub check: RequestStatusCheck,
    pub generations: Vec<TextGeneration>,
}

/// The body of `POST /generate/text/pop` (PopInputKobold) with the parser defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TextPopRequest {
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    #[serde(default)]
    pub models: Vec<String>,
    /// The most tokens this worker generates for one job.
    #[serde(default = "default_worker_max_length")]
    #[schema(minimum = 1, maximum = 1048576)]
    pub max_length: u32,
    /// The most tokens of context this worker takes.
    #[serde(default = "default_max_context_length")]
    #[schema(minimum = 1, maximum = 1048576)]
    pub max_context_length: u32,
    /// The softprompts it can load for its current model.
    #[serde(default)]
    #[schema(max_items = 200)]
    pub softprompts: Vec<String>,
    #[serde(default)]
    pub priority_usernames: Vec<String>,
    #[serde(default = "yes")]
    pub nsfw: bool,
    /// Words that make it skip a request whose prompt contains one.
    #[serde(default)]
    pub blacklist: Vec<String>,
    #[serde(default = "one")]
    #[schema(minimum = 1, maximum = 20)]
    pub amount: u32,
    #[serde(default = "one")]
    #[schema(minimum = 1, maximum = 50)]
    pub threads: u32,
    #[serde(default = "default_bridge_agent")]
    #[schema(max_length = 1000)]
    pub bridge_agent: String,
    #[serde(default)]
    pub require_upfront_kudos: bool,
    #[serde(default)]
    pub extra_slow_worker: bool,
    /// Beyond the public horde: what this worker runs on (shown by `GET /workers/{id}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware: Option<crate::worker::WorkerHardware>,
}

impl TextPopRequest {
    /// A pop by worker `name` with every other field at the public server's default.
    pub fn new(name: impl Into<String>) -> Self {
        let mut pop: TextPopRequest = serde_json::from_value(serde_json::json!({"name": ""}))
            .expect("all other fields have defaults");
        pop.name = name.into();
        pop
    }

    pub fn validate(&self) -> Result<(), ErrorBody> {
        let mut errors = FieldErrors::default();
        let worker = (
            self.name.as_str(),
            self.threads,
            self.amount,
            self.bridge_agent.as_str(),
        );
        check_pop_worker(
            &mut errors,
            worker,
            &self.priority_usernames,
            &self.blacklist,
        );
        errors.range("max_length", self.max_length, 1, MAX_CONTEXT_LENGTH);
        errors.range(
            "max_context_length",
            self.max_context_length,
            1,
            MAX_CONTEXT_LENGTH,
        );
        if self.models.is_empty() {
            errors.add("models", "a worker must serve at least one model");
        }
        names("models", &self.models, MAX_TEXT_MODELS, &mut errors);
        errors.max_len("softprompts", &self.softprompts, MAX_WORKER_SOFTPROMPTS);
        let too_long = |s: &String| s.chars().count() > MAX_SOFTPROMPT_CHARS;
        if let Some(i) = self.softprompts.iter().position(too_long) {
            let field = format!("softprompts.{i}");
            errors.max_chars(&field, &self.softprompts[i], MAX_SOFTPROMPT_CHARS);
        }
        if let Some(hardware) = &self.hardware {
            hardware.check(&mut errors);
        }
        errors.into_result()
    }
}

/// What a text worker is asked to generate (ModelPayloadKobold): the request's parameters
/// with its prompt, `n` always 1 (one job).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TextJobPayload {
    #[serde(flatten)]
    pub params: TextParams,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
}

/// The text-only `skipped` keys of a pop answer (NoValidRequestFoundKobold), always present.
pub const TEXT_SKIP_REASONS: &[&str] = &["max_context_length", "max_length", "matching_softprompt"];

/// The answer of `POST /generate/text/pop` (GenerationPayloadKobold). With no job, `id` and
/// `model` are null, `ids` empty and `payload` the defaults (horde-sdk requires it present).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TextPopResponse {
    pub payload: TextJobPayload,
    pub id: Option<String>,
    pub ids: Vec<String>,
    pub model: Option<String>,
    pub softprompt: Option<String>,
    pub skipped: SkippedCounts,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
    /// The worker's active messages from moderators or its owner (`/workers/messages`), as the
    /// image pop shows them; absent when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<serde_json::Value>,
}

impl TextPopResponse {
    /// The answer when there is no job: every [`TEXT_SKIP_REASONS`] key counted, 0 where
    /// nothing was skipped for it.
    pub fn empty(mut skipped: SkippedCounts) -> Self {
        for reason in TEXT_SKIP_REASONS {
            skipped.entry(reason.to_string()).or_insert(0);
        }
        TextPopResponse {
            payload: TextJobPayload {
                params: TextParams::default(),
                prompt: None,
            },
            id: None,
            ids: vec![],
            model: None,
            softprompt: None,
            skipped,
            ttl: None,
            messages: vec![],
        }
    }
}

/// The body of `POST /generate/text/submit` (SubmitInputKobold).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TextSubmitRequest {
    #[schema(max_length = 64)]
    pub id: String,
    /// The generated text (without the prompt).
    #[serde(default)]
    pub generation: Option<String>,
    #[serde(default)]
    pub state: SubmitState,
    #[serde(default)]
    pub seed: i64,
    #[serde(default)]
    #[schema(max_items = 50)]
    pub gen_metadata: Vec<GenMetadata>,
}

impl TextSubmitRequest {
    pub fn validate(&self) -> Result<(), ErrorBody> {
        let mut errors = FieldErrors::default();
        errors.max_chars("id", &self.id, 64);
        if let Some(text) = &self.generation {
            errors.max_chars("generation", text, MAX_GENERATION_CHARS);
        }
        crate::image::check_gen_metadata(&mut errors, &self.gen_metadata);
        errors.into_result()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A body as horde-sdk 0.33's `TextGenerationRequest` sends it (nulls excluded), with the
    /// sampler settings KoboldAI Lite uses.
    fn sdk_request() -> serde_json::Value {
        json!({
            "prompt": "You are a helpful assistant.\nUser: Hello\nAssistant:",
            "params": {
                "n": 1, "frmtadsnsp": false, "frmtrmblln": false, "frmtrmspch": false,
                "frmttriminc": false, "max_context_length": 1024, "max_length": 80,
                "rep_pen": 1.1, "rep_pen_range": 320, "rep_pen_slope": 0.7, "singleline": false,
                "temperature": 0.7, "tfs": 1, "top_a": 0, "top_k": 100, "top_p": 0.92,
                "typical": 1, "sampler_order": [6, 0, 1, 3, 4, 2, 5],
                "use_default_badwordsids": false, "stop_sequence": ["\nUser:"], "min_p": 0,
                "smoothing_factor": 0, "dynatemp_range": 0, "dynatemp_exponent": 1
            },
            "trusted_workers": false, "validated_backends": true, "slow_workers": true,
            "extra_slow_workers": false, "workers": [], "worker_blacklist": false,
            "models": ["koboldcpp/LLaMA2-13B-Psyfighter2"], "dry_run": false,
            "disable_batching": false, "allow_downgrade": false
        })
    }

    #[test]
    fn an_sdk_request_parses_with_its_values_and_round_trips() {
        let request: TextRequest = serde_json::from_value(sdk_request()).unwrap();
        assert_eq!(request.params.max_context_length, 1024);
        assert_eq!(request.params.top_p, Some(0.92));
        assert_eq!(request.params.tfs, Some(1.0));
        assert_eq!(
            request.params.sampler_order.as_deref(),
            Some(&[6, 0, 1, 3, 4, 2, 5][..])
        );
        assert_eq!(
            request.params.stop_sequence.as_deref(),
            Some(&["\nUser:".to_string()][..])
        );
        assert_eq!(request.softprompt, None);
        assert_eq!(request.models, ["koboldcpp/LLaMA2-13B-Psyfighter2"]);
        request.validate().unwrap();
        let again: TextRequest =
            serde_json::from_value(serde_json::to_value(&request).unwrap()).unwrap();
        assert_eq!(again, request);
        // An empty softprompt is below the public schema's 1 character.
        let mut body = sdk_request();
        body["softprompt"] = json!("");
        let empty: TextRequest = serde_json::from_value(body).unwrap();
        let errors = empty.validate().unwrap_err().errors.unwrap();
        assert_eq!(errors.keys().collect::<Vec<_>>(), ["softprompt"]);
    }

    #[test]
    fn a_bare_request_gets_the_public_defaults_and_sends_no_sampler_it_was_not_given() {
        let request = TextRequest::new("Once upon a time");
        assert_eq!(request.params.n, 1);
        assert_eq!(request.params.max_length, 80);
        assert_eq!(request.params.max_context_length, 2048);
        assert!(request.validated_backends && request.slow_workers);
        assert!(!request.trusted_workers && !request.worker_blacklist && !request.dry_run);
        assert!(request.models.is_empty());
        let params = serde_json::to_value(&request.params).unwrap();
        assert_eq!(
            params,
            json!({"n": 1, "max_length": 80, "max_context_length": 2048}),
            "a backend applies its own default to a sampler left out"
        );
        request.validate().unwrap();
    }

    #[test]
    fn every_bound_names_its_field() {
        let mut body = sdk_request();
        body["softprompt"] = json!("x".repeat(101));
        let params = &mut body["params"];
        for (field, value) in [
            ("n", json!(21)),
            ("max_length", json!(15)),
            ("max_context_length", json!(1_048_577)),
            ("rep_pen", json!(0.5)),
            ("rep_pen_range", json!(4097)),
            ("rep_pen_slope", json!(11)),
            ("temperature", json!(5.5)),
            ("tfs", json!(1.5)),
            ("top_a", json!(2)),
            ("top_k", json!(201)),
            ("top_p", json!(0.0)),
            ("typical", json!(-0.1)),
            ("min_p", json!(1.01)),
            ("smoothing_factor", json!(10.5)),
            ("dynatemp_range", json!(6)),
            ("dynatemp_exponent", json!(-1)),
            ("sampler_order", json!(vec![0; 17])),
        ] {
            params[field] = value;
        }
        body["models"] = json!(["ok", "m".repeat(256), ""]);
        body["webhook"] = json!("https://");
        body["style"] = json!("ab");
        let request: TextRequest = serde_json::from_value(body).unwrap();
        let errors = request.validate().unwrap_err().errors.unwrap();
        let fields: Vec<&str> = errors.keys().map(String::as_str).collect();
        // Only the first bad name of a list is named.
        let mut expected = vec![
            "models.1",
            "params.dynatemp_exponent",
            "params.dynatemp_range",
            "params.max_context_length",
            "params.max_length",
            "params.min_p",
            "params.n",
            "params.rep_pen",
            "params.rep_pen_range",
            "params.rep_pen_slope",
            "params.sampler_order",
            "params.smoothing_factor",
            "params.temperature",
            "params.tfs",
            "params.top_a",
            "params.top_k",
            "params.top_p",
            "params.typical",
            "softprompt",
            "style",
            "webhook",
        ];
        expected.sort_unstable();
        assert_eq!(fields, expected);
    }

    #[test]
    fn the_bounds_themselves_are_accepted() {
        let mut request = TextRequest::new("p");
        request.params.max_length = MAX_LENGTH;
        request.params.max_context_length = MAX_CONTEXT_LENGTH;
        request.params.n = MAX_N;
        request.params.top_p = Some(0.001);
        request.params.top_k = Some(200);
        request.params.rep_pen = Some(3.0);
        request.params.dynatemp_exponent = Some(5.0);
        request.validate().unwrap();
        request.params.max_length = MIN_LENGTH;
        request.params.max_context_length = MIN_CONTEXT_LENGTH;
        request.params.n = 1;
        request.validate().unwrap();
    }

    /// KoboldCpp's embedded horde worker pops with these fields.
    #[test]
    fn a_koboldcpp_pop_parses_and_a_bare_one_gets_the_parser_defaults() {
        let pop: TextPopRequest = serde_json::from_value(json!({
            "name": "my-kcpp", "models": ["koboldcpp/Mistral-7B-Instruct-v0.2"],
            "max_length": 256, "max_context_length": 4096, "priority_usernames": [],
            "softprompts": [], "bridge_agent": "KoboldCppEmbedWorker:2:https://github.com/LostRuins/koboldcpp"
        }))
        .unwrap();
        assert_eq!((pop.max_length, pop.max_context_length), (256, 4096));
        assert!(pop.bridge_agent.starts_with("KoboldCppEmbedWorker:2"));
        pop.validate().unwrap();
        let mut bare = TextPopRequest::new("w");
        assert_eq!((bare.max_length, bare.max_context_length), (512, 2048));
        assert_eq!((bare.amount, bare.threads), (1, 1));
        assert!(bare.nsfw && bare.softprompts.is_empty());
        assert_eq!(bare.bridge_agent, crate::DEFAULT_CLIENT_AGENT);
        let errors = bare.validate().unwrap_err().errors.unwrap();
        assert_eq!(errors.keys().collect::<Vec<_>>(), ["models"]);
        bare.models = vec!["m".into()];
        bare.softprompts = vec!["s".to_string(); 201];
        bare.softprompts[3] = "s".repeat(101);
        bare.max_length = 0;
        bare.amount = 21;
        let errors = bare.validate().unwrap_err().errors.unwrap();
        let fields: Vec<&str> = errors.keys().map(String::as_str).collect();
        assert_eq!(
            fields,
            ["amount", "max_length", "softprompts", "softprompts.3"]
        );
    }

    #[test]
    fn an_empty_pop_answer_has_a_payload_and_every_text_skip_key() {
        let empty = TextPopResponse::empty(SkippedCounts::from([("models".to_string(), 2)]));
        let value = serde_json::to_value(&empty).unwrap();
        assert_eq!(value["id"], json!(null));
        assert_eq!(value["ids"], json!([]));
        assert_eq!(value["model"], json!(null));
        assert!(
            value["payload"].is_object(),
            "horde-sdk requires the payload"
        );
        assert_eq!(
            value["skipped"],
            json!({"models": 2, "max_context_length": 0, "max_length": 0, "matching_softprompt": 0})
        );
        assert!(value.get("ttl").is_none());
    }

    #[test]
    fn a_pop_answer_carries_the_prompt_beside_the_params_as_koboldcpp_reads_it() {
        let params = TextParams {
            temperature: Some(0.7),
            ..TextParams::default()
        };
        let answer = TextPopResponse {
            payload: TextJobPayload {
                params,
                prompt: Some("Hello".into()),
            },
            id: Some("6f0b5c1e-0000-4000-8000-000000000001".into()),
            ids: vec!["6f0b5c1e-0000-4000-8000-000000000001".into()],
            model: Some("koboldcpp/tiny".into()),
            softprompt: None,
            skipped: SkippedCounts::new(),
            ttl: Some(150),
            messages: vec![],
        };
        let value = serde_json::to_value(&answer).unwrap();
        assert_eq!(
            value["payload"],
            json!({"n": 1, "max_length": 80, "max_context_length": 2048, "temperature": 0.7, "prompt": "Hello"})
        );
        let again: TextPopResponse = serde_json::from_value(value).unwrap();
        assert_eq!(again, answer);
    }

    #[test]
    fn a_submit_as_koboldcpp_sends_it_parses_and_long_texts_are_refused() {
        let submit: TextSubmitRequest = serde_json::from_value(json!({
            "id": "6f0b5c1e-0000-4000-8000-000000000001", "generation": " there!"
        }))
        .unwrap();
        assert_eq!(submit.state, SubmitState::Ok);
        assert_eq!(submit.seed, 0);
        submit.validate().unwrap();
        let with_metadata: TextSubmitRequest = serde_json::from_value(json!({
            "id": "x", "generation": "", "state": "csam", "seed": 42,
            "gen_metadata": [{"type": "censorship", "value": "csam"}]
        }))
        .unwrap();
        assert_eq!(with_metadata.state, SubmitState::Csam);
        assert_eq!(with_metadata.gen_metadata[0].value, "csam");
        let mut long = submit;
        long.generation = Some("a".repeat(MAX_GENERATION_CHARS + 1));
        let errors = long.validate().unwrap_err().errors.unwrap();
        assert_eq!(errors.keys().collect::<Vec<_>>(), ["generation"]);
    }

    #[test]
    fn a_status_answer_has_what_horde_sdk_requires() {
        let status = TextRequestStatus {
            check: RequestStatusCheck {
                finished: 1,
                processing: 0,
                restarted: 0,
                waiting: 0,
                done: true,
                faulted: false,
                wait_time: 0,
                queue_position: 0,
                kudos: 12.5,
                is_possible: true,
                warnings: vec![],
            },
            generations: vec![TextGeneration {
                text: " there!".into(),
                seed: 7,
                worker_id: "6f0b5c1e-0000-4000-8000-000000000002".into(),
                worker_name: "w".into(),
                model: "koboldcpp/tiny".into(),
                state: "ok".into(),
                gen_metadata: vec![],
            }],
        };
        let value = serde_json::to_value(&status).unwrap();
        for field in [
            "finished",
            "processing",
            "restarted",
            "waiting",
            "done",
            "wait_time",
            "queue_position",
            "kudos",
            "faulted",
            "is_possible",
        ] {
            assert!(value.get(field).is_some(), "{field} missing");
        }
        let generation = &value["generations"][0];
        for field in ["model", "state", "worker_id", "worker_name", "text", "seed"] {
            assert!(generation.get(field).is_some(), "{field} missing");
        }
        assert!(generation["seed"].is_i64(), "text seeds are integers");
        let again: TextRequestStatus = serde_json::from_value(value).unwrap();
        assert_eq!(again, status);
    }

    #[test]
    fn the_openapi_schemas_state_the_bounds() {
        use utoipa::PartialSchema;
        let params = serde_json::to_value(TextParams::schema()).unwrap();
        let field = |name: &str| params["properties"][name].clone();
        assert_eq!(field("max_length")["maximum"], json!(4096));
        assert_eq!(field("max_length")["minimum"], json!(16));
        assert_eq!(field("max_context_length")["maximum"], json!(1_048_576));
        assert_eq!(field("top_p")["minimum"], json!(0.001));
        assert_eq!(field("top_k")["maximum"], json!(200));
        assert_eq!(field("sampler_order")["maxItems"], json!(16));
        let request = serde_json::to_value(TextRequest::schema()).unwrap();
        assert_eq!(request["required"], json!(["prompt"]));
        assert_eq!(request["properties"]["softprompt"]["maxLength"], json!(100));
        assert_eq!(
            request["properties"]["webhook"]["pattern"],
            json!("^https://")
        );
        let pop = serde_json::to_value(TextPopRequest::schema()).unwrap();
        assert_eq!(pop["properties"]["softprompts"]["maxItems"], json!(200));
        assert_eq!(pop["required"], json!(["name"]));
    }
}
