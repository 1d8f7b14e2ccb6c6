//! Image generation bodies: the request (`POST /generate/async`), the worker's pop and submit,
//! and the client's check and status answers.

use crate::error::{ErrorBody, FieldErrors};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

fn yes() -> bool {
    true
}
fn default_models() -> Vec<String> {
    vec!["stable_diffusion".to_string()]
}
fn default_source_processing() -> SourceProcessing {
    SourceProcessing::Img2img
}
fn default_cfg_scale() -> f64 {
    5.0
}
fn default_size() -> u32 {
    512
}
fn default_steps() -> u32 {
    30
}
fn one() -> u32 {
    1
}
fn default_lora_strength() -> f64 {
    1.0
}

/// The samplers of the public horde, by their AI Horde names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub enum Sampler {
    #[serde(rename = "k_lms")]
    KLms,
    #[serde(rename = "k_heun")]
    KHeun,
    #[serde(rename = "k_euler")]
    KEuler,
    #[serde(rename = "k_euler_a")]
    KEulerA,
    #[serde(rename = "k_dpm_2")]
    KDpm2,
    #[serde(rename = "k_dpm_2_a")]
    KDpm2A,
    #[serde(rename = "k_dpm_fast")]
    KDpmFast,
    #[serde(rename = "k_dpm_adaptive")]
    KDpmAdaptive,
    #[serde(rename = "k_dpmpp_2s_a")]
    KDpmpp2sA,
    #[serde(rename = "k_dpmpp_2m")]
    KDpmpp2m,
    #[serde(rename = "dpmsolver")]
    Dpmsolver,
    #[serde(rename = "k_dpmpp_sde")]
    KDpmppSde,
    #[serde(rename = "lcm")]
    Lcm,
    #[serde(rename = "DDIM")]
    Ddim,
}

impl Sampler {
    /// Second-order samplers evaluate the model twice per step (the public horde's "accurate steps").
    pub fn is_second_order(self) -> bool {
        matches!(
            self,
            Sampler::KHeun
                | Sampler::KDpm2
                | Sampler::KDpm2A
                | Sampler::KDpmpp2sA
                | Sampler::KDpmppSde
        )
    }
    pub fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }
}

/// Post-processors a request may ask for, in AI Horde names.
pub const POST_PROCESSORS: &[&str] = &[
    "GFPGAN",
    "RealESRGAN_x4plus",
    "RealESRGAN_x2plus",
    "RealESRGAN_x4plus_anime_6B",
    "NMKD_Siax",
    "4x_AnimeSharp",
    "CodeFormers",
    "strip_background",
    "4xNomos8kSC",
    "4xLSDIRplus",
    "4xNomosWebPhoto_RealPLKSR",
    "4xNomos2_realplksr_dysample",
    "4xNomos2_hq_dat2",
    "2xModernSpanimationV1",
    "GFPGANv1.3",
    "RestoreFormer",
];

/// How much an upscaling post-processor enlarges an image (`None` for the others).
pub fn upscale_factor(post_processor: &str) -> Option<u32> {
    UPSCALERS.contains(&post_processor).then(|| {
        if post_processor.contains("x2") || post_processor.starts_with("2x") {
            2
        } else {
            4
        }
    })
}

/// Post-processors that are upscalers: at most one per request.
pub const UPSCALERS: &[&str] = &[
    "RealESRGAN_x4plus",
    "RealESRGAN_x2plus",
    "RealESRGAN_x4plus_anime_6B",
    "NMKD_Siax",
    "4x_AnimeSharp",
    "4xNomos8kSC",
    "4xLSDIRplus",
    "4xNomosWebPhoto_RealPLKSR",
    "4xNomos2_realplksr_dysample",
    "4xNomos2_hq_dat2",
    "2xModernSpanimationV1",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ControlType {
    Canny,
    Hed,
    Depth,
    Normal,
    Openpose,
    Seg,
    Scribble,
    Fakescribbles,
    Hough,
}

impl ControlType {
    /// The wire name (`canny`, `fakescribbles`, …).
    pub fn name(self) -> &'static str {
        match self {
            ControlType::Canny => "canny",
            ControlType::Hed => "hed",
            ControlType::Depth => "depth",
            ControlType::Normal => "normal",
            ControlType::Openpose => "openpose",
            ControlType::Seg => "seg",
            ControlType::Scribble => "scribble",
            ControlType::Fakescribbles => "fakescribbles",
            ControlType::Hough => "hough",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum SourceProcessing {
    #[default]
    Img2img,
    Inpainting,
    Outpainting,
    Remix,
}

/// A seed as clients send it: a string (the API type) or, leniently, a number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum SeedInput {
    Text(String),
    Number(u64),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Lora {
    #[schema(min_length = 1, max_length = 255)]
    pub name: String,
    #[serde(default = "default_lora_strength")]
    #[schema(minimum = -5, maximum = 5)]
    pub model: f64,
    #[serde(default = "default_lora_strength")]
    #[schema(minimum = -5, maximum = 5)]
    pub clip: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 30)]
    pub inject_trigger: Option<String>,
    #[serde(default)]
    pub is_version: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TextualInversion {
    #[schema(min_length = 1, max_length = 255)]
    pub name: String,
    /// `prompt` or `negprompt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^(prompt|negprompt)$")]
    pub inject_ti: Option<String>,
    #[serde(default = "default_lora_strength")]
    #[schema(minimum = -5, maximum = 5)]
    pub strength: f64,
}

/// One of the extra images of a `remix` request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ExtraSourceImage {
    /// Base64 WebP or an http(s) URL, as `source_image`.
    pub image: String,
    #[serde(default = "default_lora_strength")]
    pub strength: f64,
}

/// The most extra source images a request may carry (the public horde's limit).
pub const MAX_EXTRA_SOURCE_IMAGES: usize = 5;
/// The `control_strength` a request may ask for (the public horde refuses 0 and above 3).
pub const CONTROL_STRENGTH_RANGE: std::ops::RangeInclusive<f64> = 0.01..=3.0;
/// The most LoRAs a request may name (the public horde's limit, `TooManyLoras` beyond).
pub const MAX_LORAS: usize = 5;
/// The most textual inversions a request may name (the public horde's, `TooManyTIs` beyond).
pub const MAX_TIS: usize = 20;

// Bounds of ours where the public horde has none (docs/security.md lists them all).
/// The most models a request may name.
pub const MAX_REQUEST_MODELS: usize = 100;
/// The most worker ids a request may list (the first five are used, as on the public horde).
pub const MAX_REQUEST_WORKERS: usize = 100;
/// The longest seed text.
pub const MAX_SEED_CHARS: usize = 256;
/// The largest `params.special` object, serialised.
pub const MAX_SPECIAL_BYTES: usize = 16 * 1024;
/// The most `priority_usernames` and `blacklist` words in a pop (the public horde keeps 200
/// blacklist words).
pub const MAX_POP_LIST: usize = 200;
/// The longest entry of a pop's lists, and of a submit's `gen_metadata` values.
pub const MAX_LIST_ENTRY_CHARS: usize = 255;
/// The most names in a pop's `control_types` and `control_map_types` (twice the types the
/// horde knows).
pub const MAX_POP_CONTROL_TYPES: usize = 20;

/// The most names in a pop's `post_processors` (twice the names the horde knows).
pub const MAX_POP_POST_PROCESSORS: usize = 32;

/// `params` of an image request (ModelGenerationInputStable), with the public server's effective
/// defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImageParams {
    #[serde(default = "default_sampler")]
    pub sampler_name: Sampler,
    #[serde(default = "default_cfg_scale")]
    #[schema(minimum = 0, maximum = 100)]
    pub cfg_scale: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0.01, maximum = 1)]
    pub denoising_strength: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0.01, maximum = 1)]
    pub hires_fix_denoising_strength: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<SeedInput>,
    #[serde(default = "default_size")]
    #[schema(minimum = 64, maximum = 3072, multiple_of = 64)]
    pub height: u32,
    #[serde(default = "default_size")]
    #[schema(minimum = 64, maximum = 3072, multiple_of = 64)]
    pub width: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1000)]
    pub seed_variation: Option<u32>,
    /// Post-processors (`POST_PROCESSORS`), in the order they run.
    #[serde(default)]
    pub post_processing: Vec<String>,
    #[serde(default = "yes")]
    pub karras: bool,
    #[serde(default)]
    pub tiling: bool,
    #[serde(default)]
    pub hires_fix: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 12)]
    pub clip_skip: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_type: Option<ControlType>,
    /// How strongly the control map guides the image (the worker's default, 1, when absent);
    /// only with `control_type` (`ControlStrengthWithoutControlType`), within
    /// [`CONTROL_STRENGTH_RANGE`] (`ControlStrengthOutOfRange`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0.01, maximum = 3)]
    pub control_strength: Option<f64>,
    #[serde(default)]
    pub image_is_control: bool,
    #[serde(default)]
    pub return_control_map: bool,
    /// The legacy name of `image_is_control`, read only to refuse it together with
    /// `return_control_map` (`ControlNetInvalidPayload`), as the public horde does; never sent
    /// to workers.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub init_as_image: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 1)]
    pub facefixer_strength: Option<f64>,
    /// At most [`MAX_LORAS`] (more: `TooManyLoras`).
    #[serde(default)]
    #[schema(max_items = 5)]
    pub loras: Vec<Lora>,
    /// At most [`MAX_TIS`] (more: `TooManyTIs`).
    #[serde(default)]
    #[schema(max_items = 20)]
    pub tis: Vec<TextualInversion>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub special: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 500)]
    pub steps: Option<u32>,
    #[serde(default = "one")]
    #[schema(minimum = 1, maximum = 20)]
    pub n: u32,
}

fn default_sampler() -> Sampler {
    Sampler::KEulerA
}

impl Default for ImageParams {
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("all fields have defaults")
    }
}

impl ImageParams {
    /// Steps after the server's defaults: 30, or 20 (at most 40) with a control type.
    pub fn effective_steps(&self) -> u32 {
        match (self.steps, self.control_type) {
            (Some(s), Some(_)) => s.min(40),
            (Some(s), None) => s,
            (None, Some(_)) => 20,
            (None, None) => default_steps(),
        }
    }

    /// Steps as the public horde counts them for time and price: doubled for second-order
    /// samplers, a fixed 40 for the adaptive sampler.
    pub fn accurate_steps(&self) -> u32 {
        let steps = self.effective_steps();
        match self.sampler_name {
            Sampler::KDpmAdaptive => 40,
            s if s.is_second_order() => steps * 2,
            _ => steps,
        }
    }

    /// Whether `cfg_scale` has at most two decimals, as the public horde decides it: the value
    /// rounded to two decimals (exactly, half to even, as Python's `round(x, 2)`) is the same
    /// number. `4.1` passes although `4.1 × 100` is `409.99999999999994` in binary.
    pub fn cfg_scale_has_two_decimals_at_most(&self) -> bool {
        format!("{:.2}", self.cfg_scale).parse::<f64>() == Ok(self.cfg_scale)
    }

    /// The sizes a finished image may have: the requested size, or that size times the factor
    /// of the request's upscaler.
    pub fn output_sizes(&self) -> Vec<(u32, u32)> {
        let mut sizes = vec![(self.width, self.height)];
        if let Some(factor) = self.post_processing.iter().find_map(|p| upscale_factor(p)) {
            sizes.push((self.width * factor, self.height * factor));
        }
        sizes
    }

    fn check_bounds(&self, errors: &mut FieldErrors) {
        errors.range("params.cfg_scale", self.cfg_scale, 0.0, 100.0);
        if let Some(d) = self.denoising_strength {
            errors.range("params.denoising_strength", d, 0.01, 1.0);
        }
        if let Some(d) = self.hires_fix_denoising_strength {
            errors.range("params.hires_fix_denoising_strength", d, 0.01, 1.0);
        }
        for (field, value) in [("params.height", self.height), ("params.width", self.width)] {
            errors.range(field, value, 64, 3072);
            if value % 64 != 0 {
                errors.add(field, format!("{value} is not a multiple of 64"));
            }
        }
        if let Some(v) = self.seed_variation {
            errors.range("params.seed_variation", v, 1, 1000);
        }
        if let Some(v) = self.clip_skip {
            errors.range("params.clip_skip", v, 1, 12);
        }
        if let Some(v) = self.facefixer_strength {
            errors.range("params.facefixer_strength", v, 0.0, 1.0);
        }
        if let Some(s) = self.steps {
            errors.range("params.steps", s, 1, 500);
        }
        errors.range("params.n", self.n, 1, 20);
        // The counts of `loras` and `tis` are request rules with their own `rc` (`TooManyLoras`,
        // `TooManyTIs`), as on the public horde, whose schema does not bound them.
        errors.max_len(
            "params.post_processing",
            &self.post_processing,
            POST_PROCESSORS.len(),
        );
        for lora in &self.loras {
            errors.range("params.loras.name", lora.name.chars().count(), 1, 255);
            if let Some(trigger) = &lora.inject_trigger {
                errors.range(
                    "params.loras.inject_trigger",
                    trigger.chars().count(),
                    1,
                    30,
                );
            }
        }
        for ti in &self.tis {
            errors.range("params.tis.name", ti.name.chars().count(), 1, 255);
            errors.range("params.tis.strength", ti.strength, -5.0, 5.0);
            if let Some(inject) = &ti.inject_ti {
                if inject != "prompt" && inject != "negprompt" {
                    errors.add("params.tis.inject_ti", "one of \"prompt\" or \"negprompt\"");
                }
            }
        }
        if let Some(SeedInput::Text(seed)) = &self.seed {
            errors.max_chars("params.seed", seed, MAX_SEED_CHARS);
        }
        if let Some(special) = &self.special {
            let size = serde_json::to_string(special).map_or(usize::MAX, |s| s.len());
            if size > MAX_SPECIAL_BYTES {
                errors.add(
                    "params.special",
                    format!("{size} bytes is more than the maximum of {MAX_SPECIAL_BYTES}"),
                );
            }
        }
        for (i, pp) in self.post_processing.iter().enumerate() {
            if !POST_PROCESSORS.contains(&pp.as_str()) {
                errors.add(
                    &format!("params.post_processing.{i}"),
                    format!("'{pp}' is not one of {POST_PROCESSORS:?}"),
                );
            }
        }
        for lora in &self.loras {
            errors.range("params.loras.model", lora.model, -5.0, 5.0);
            errors.range("params.loras.clip", lora.clip, -5.0, 5.0);
        }
    }
}

/// The body of `POST /generate/async` (GenerationInputStable).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImageRequest {
    /// The prompt; a negative prompt follows `###`. What precedes the first `###` must not be
    /// blank (`MissingPrompt`).
    pub prompt: String,
    #[serde(default)]
    pub params: ImageParams,
    #[serde(default = "yes")]
    pub nsfw: bool,
    #[serde(default = "yes")]
    pub censor_nsfw: bool,
    #[serde(default)]
    pub trusted_workers: bool,
    #[serde(default)]
    pub validated_backends: bool,
    #[serde(default = "yes")]
    pub slow_workers: bool,
    #[serde(default)]
    pub extra_slow_workers: bool,
    #[serde(default)]
    pub workers: Vec<String>,
    #[serde(default)]
    pub worker_blacklist: bool,
    #[serde(default = "default_models")]
    pub models: Vec<String>,
    /// Base64 WebP, PNG or JPEG (at most 3072 a side) or an http(s) URL. A base64 image is
    /// decoded when the request is accepted and kept as lossless WebP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_image: Option<String>,
    #[serde(default = "default_source_processing")]
    pub source_processing: SourceProcessing,
    /// As `source_image`; a base64 mask must be the source image's size. Inpainting without a
    /// mask needs a source image with an alpha channel (`InpaintingMissingMask`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_mask: Option<String>,
    /// Further images for `remix` (at most [`MAX_EXTRA_SOURCE_IMAGES`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_source_images: Vec<ExtraSourceImage>,
    #[serde(default = "yes")]
    pub r2: bool,
    #[serde(default)]
    pub shared: bool,
    #[serde(default = "yes")]
    pub replacement_filter: bool,
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 255)]
    pub proxied_account: Option<String>,
    #[serde(default)]
    pub disable_batching: bool,
    #[serde(default)]
    pub allow_downgrade: bool,
    /// Beyond the public horde: when no online worker serves any of `models`, a worker serving
    /// another model of the same baseline (and inpainting flag) may run it; `check` and the
    /// 202 answer warn which, and each generation names the model that ran.
    #[serde(default)]
    pub allow_model_fallback: bool,
    /// Beyond the public horde: when no online worker that could take this request runs all of
    /// `params.post_processing`, generate it without them instead of waiting; the 202 answer,
    /// `check` and `status` carry a `PostProcessingUnavailable` warning and the price is that
    /// of the images without them. Decided when the request is accepted.
    #[serde(default)]
    pub post_processing_fallback: bool,
    /// Set by the coordinator, never by a client (a value sent is discarded): the
    /// post-processors `post_processing_fallback` left out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(ignore)]
    pub post_processing_skipped: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 10, max_length = 1024, pattern = "^https://")]
    pub webhook: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 3, max_length = 1024)]
    pub style: Option<String>,
}

impl ImageRequest {
    /// A request for `prompt` with every other field at the public server's default.
    pub fn new(prompt: impl Into<String>) -> Self {
        let mut request: ImageRequest = serde_json::from_value(serde_json::json!({"prompt": ""}))
            .expect("all other fields have defaults");
        request.prompt = prompt.into();
        request
    }

    /// Bounds the schema of the public server enforces (400 with an `errors` map).
    pub fn validate(&self) -> Result<(), ErrorBody> {
        let mut errors = FieldErrors::default();
        self.params.check_bounds(&mut errors);
        if let Some(hook) = &self.webhook {
            errors.range("webhook", hook.chars().count(), 10, 1024);
        }
        errors.max_len("models", &self.models, MAX_REQUEST_MODELS);
        for (i, model) in self.models.iter().enumerate() {
            if model.is_empty() || model.chars().count() > 255 {
                errors.add(&format!("models.{i}"), "model names are 1..255 characters");
            }
        }
        errors.max_len("workers", &self.workers, MAX_REQUEST_WORKERS);
        for worker in &self.workers {
            errors.max_chars("workers", worker, 64);
        }
        if let Some(account) = &self.proxied_account {
            errors.max_chars("proxied_account", account, 255);
        }
        if let Some(style) = &self.style {
            errors.range("style", style.chars().count(), 3, 1024);
        }
        errors.into_result()
    }

    /// The prompt split at the negative-prompt separator `###`.
    pub fn prompt_parts(&self) -> (&str, Option<&str>) {
        match self.prompt.split_once("###") {
            Some((positive, negative)) => (positive.trim_end(), Some(negative.trim_start())),
            None => (self.prompt.as_str(), None),
        }
    }
}

/// A warning attached to an accepted request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RequestWarning {
    pub code: String,
    pub message: String,
}

/// 202 answer of `POST /generate/async` (and 200 `{kudos}` for a dry run, where `id` is absent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AsyncResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub kudos: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<RequestWarning>,
}

/// `GET /generate/check/{id}`: the light status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RequestStatusCheck {
    pub finished: u32,
    pub processing: u32,
    pub restarted: u32,
    pub waiting: u32,
    pub done: bool,
    pub faulted: bool,
    pub wait_time: i64,
    pub queue_position: i64,
    pub kudos: f64,
    pub is_possible: bool,
    /// Beyond the public horde: what the client should know, e.g. that another model of the
    /// same baseline ran or will run (`ModelFallback`). Absent when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<RequestWarning>,
}

/// One finished image in `GET /generate/status/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Generation {
    /// A download URL (r2 requests) or the base64 WebP (r2: false).
    pub img: String,
    /// Seeds are strings in status answers, as on the public horde.
    pub seed: String,
    pub worker_id: String,
    pub worker_name: String,
    pub model: String,
    pub id: String,
    pub censored: bool,
    #[serde(default)]
    pub gen_metadata: Vec<GenMetadata>,
    pub state: String,
}

/// `GET /generate/status/{id}`: the light status plus the images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RequestStatus {
    #[serde(flatten)]
    pub check: RequestStatusCheck,
    pub generations: Vec<Generation>,
    pub shared: bool,
}

fn default_max_pixels() -> u64 {
    262_144
}
fn default_bridge_agent() -> String {
    crate::DEFAULT_CLIENT_AGENT.to_string()
}

/// The body of `POST /generate/pop` (PopInputStable) with the parser defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PopRequest {
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    #[serde(default)]
    pub priority_usernames: Vec<String>,
    #[serde(default = "yes")]
    pub nsfw: bool,
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default = "default_bridge_agent")]
    #[schema(max_length = 1000)]
    pub bridge_agent: String,
    #[serde(default = "one")]
    #[schema(minimum = 1, maximum = 50)]
    pub threads: u32,
    #[serde(default)]
    pub require_upfront_kudos: bool,
    #[serde(default = "one")]
    #[schema(minimum = 1, maximum = 20)]
    pub amount: u32,
    #[serde(default)]
    pub extra_slow_worker: bool,
    #[serde(default = "default_max_pixels")]
    pub max_pixels: u64,
    #[serde(default)]
    pub blacklist: Vec<String>,
    #[serde(default = "yes")]
    pub allow_img2img: bool,
    #[serde(default = "yes")]
    pub allow_painting: bool,
    #[serde(default = "yes")]
    pub allow_unsafe_ipaddr: bool,
    #[serde(default = "yes", alias = "allow_post-processing")]
    pub allow_post_processing: bool,
    /// Beyond the public horde: whether this worker runs the NSFW censor on the images of SFW
    /// requests that ask for it (`use_nsfw_censor`). Absent: it does, as the public horde takes
    /// of its workers; a worker that says `false` gets no such request (skip `nsfw`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nsfw_censor: Option<bool>,
    /// Beyond the public horde: the post-processors this worker runs (names of
    /// `POST_PROCESSORS`). A worker that sends it gets only jobs whose post-processors are all
    /// in it; without it, those its bridge version grants, as on the public horde.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_processors: Option<Vec<String>>,
    #[serde(default)]
    pub allow_controlnet: bool,
    /// Beyond the public horde: the control types (`canny`, …) this worker draws the map for
    /// from the request's picture (it holds the ControlNet and the annotator). A worker that
    /// sends it gets only such controlled jobs of these types; without it, any type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_types: Option<Vec<String>>,
    /// Beyond the public horde: the control types this worker runs when the request's source
    /// image is the map (`image_is_control`): those whose ControlNet it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_map_types: Option<Vec<String>>,
    #[serde(default)]
    pub allow_sdxl_controlnet: bool,
    #[serde(default)]
    pub allow_lora: bool,
    #[serde(default)]
    pub limit_max_steps: bool,
    /// Beyond the public horde: this worker runs a different prompt and seed for each image of
    /// one pass. With `amount` above 1 it may then get several members of a batch of prompts
    /// (`POST /generate/batch`) in one pop, with `payload.prompts` and `payload.seeds`; without
    /// it, one request's images per pop, as on the public horde.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub batch_prompts: bool,
    /// This worker downloads source images from URLs (the public horde grants `r2_source` by
    /// bridge version; here the worker says so): the pop's `source_image`, `source_mask` and
    /// `extra_source_images` are then signed, expiring download URLs instead of base64 WebP.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub r2_source: bool,
    /// Beyond the public horde: the models of `models` this worker holds in memory now (it
    /// loads the others on demand). The coordinator leaves a request for a waiting worker that
    /// holds its model, and gives a job whose model must be loaded first more time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loaded_models: Option<Vec<String>>,
    /// Beyond the public horde: what this worker runs on (shown by `GET /workers/{id}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware: Option<crate::worker::WorkerHardware>,
}

impl PopRequest {
    /// A pop by worker `name` with every other field at the public server's default.
    pub fn new(name: impl Into<String>) -> Self {
        let mut pop: PopRequest = serde_json::from_value(serde_json::json!({"name": ""}))
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
        errors.max_len("models", &self.models, 300);
        if self.models.is_empty() {
            errors.add("models", "a worker must serve at least one model");
        }
        for (i, model) in self.models.iter().enumerate() {
            if !(3..=255).contains(&model.chars().count()) {
                errors.add(&format!("models.{i}"), "model names are 3..255 characters");
            }
        }
        for (field, names, most) in [
            (
                "post_processors",
                &self.post_processors,
                MAX_POP_POST_PROCESSORS,
            ),
            ("control_types", &self.control_types, MAX_POP_CONTROL_TYPES),
            ("loaded_models", &self.loaded_models, 300),
            (
                "control_map_types",
                &self.control_map_types,
                MAX_POP_CONTROL_TYPES,
            ),
        ] {
            let Some(names) = names else { continue };
            errors.max_len(field, names, most);
            for (i, name) in names.iter().enumerate() {
                errors.max_chars(&format!("{field}.{i}"), name, MAX_LIST_ENTRY_CHARS);
            }
        }
        if let Some(hardware) = &self.hardware {
            hardware.check(&mut errors);
        }
        errors.into_result()
    }
}

/// The checks every kind's pop makes of the worker itself: its name, threads, amount and bridge
/// agent, and the bounds of its `priority_usernames` and `blacklist`.
pub(crate) fn check_pop_worker(
    errors: &mut FieldErrors,
    (name, threads, amount, bridge_agent): (&str, u32, u32, &str),
    priority_usernames: &[String],
    blacklist: &[String],
) {
    errors.range("name", name.chars().count(), 1, 100);
    errors.range("threads", threads, 1, 50);
    errors.range("amount", amount, 1, 20);
    errors.range("bridge_agent", bridge_agent.chars().count(), 0, 1000);
    for (field, list) in [
        ("priority_usernames", priority_usernames),
        ("blacklist", blacklist),
    ] {
        errors.max_len(field, list, MAX_POP_LIST);
        for entry in list {
            errors.max_chars(field, entry, MAX_LIST_ENTRY_CHARS);
        }
    }
}

/// What a worker is asked to generate: the request's parameters plus per-job fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobPayload {
    pub prompt: String,
    pub sampler_name: Sampler,
    pub cfg_scale: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denoising_strength: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hires_fix_denoising_strength: Option<f64>,
    /// The seed as a string of digits: the public horde's pop model types it as a string and
    /// horde-sdk refuses an integer here.
    pub seed: String,
    pub height: u32,
    pub width: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed_variation: Option<u32>,
    pub post_processing: Vec<String>,
    pub karras: bool,
    pub tiling: bool,
    pub hires_fix: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_skip: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_type: Option<ControlType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_strength: Option<f64>,
    pub image_is_control: bool,
    pub return_control_map: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facefixer_strength: Option<f64>,
    pub loras: Vec<Lora>,
    pub tis: Vec<TextualInversion>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub special: Option<Value>,
    pub use_nsfw_censor: bool,
    pub ddim_steps: u32,
    /// How many images this pop asks for (the batch).
    pub n_iter: u32,
    /// Beyond the public horde, only in a pop that carries members of a batch of prompts (to a
    /// worker that sent `batch_prompts`): the prompt of each job, in the order of `ids`
    /// (`prompt` is the first's). Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompts: Option<Vec<String>>,
    /// With `prompts`: the seed of each job, in the order of `ids`, as strings of digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seeds: Option<Vec<String>>,
}

/// Counts of waiting requests the worker was not given, by reason.
pub type SkippedCounts = std::collections::BTreeMap<String, u64>;

/// The skip reasons the public horde counts in every empty pop, at 0 when none was skipped
/// for them (others appear only with a count).
pub const ALWAYS_COUNTED_SKIP_REASONS: &[&str] = &[
    "bridge_version",
    "untrusted",
    "performance",
    "controlnet",
    "post-processing",
    "lora",
    "nsfw",
    "unsafe_ip",
    "painting",
    "img2img",
    "worker_id",
    "models",
];

/// The answer of `POST /generate/pop` (GenerationPayloadStable). With no job, `id` is null,
/// `ids` empty and `payload` carries the public server's idle defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PopResponse {
    pub payload: Value,
    pub id: Option<String>,
    pub ids: Vec<String>,
    pub skipped: SkippedCounts,
    pub model: Option<String>,
    /// A signed, expiring download URL for workers that popped with `r2_source`, else the
    /// base64 WebP; an http(s) URL the requester gave, as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_image: Option<String>,
    pub source_processing: SourceProcessing,
    /// As `source_image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_mask: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_source_images: Vec<ExtraSourceImage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r2_upload: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub r2_uploads: Vec<String>,
    pub messages: Vec<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
}

impl PopResponse {
    /// The public server's answer when there is no job for the worker: `skipped` with every
    /// [`ALWAYS_COUNTED_SKIP_REASONS`] key, 0 where nothing was skipped for it.
    pub fn empty(mut skipped: SkippedCounts) -> Self {
        for reason in ALWAYS_COUNTED_SKIP_REASONS {
            skipped.entry(reason.to_string()).or_insert(0);
        }
        PopResponse {
            payload: serde_json::json!({
                "ddim_steps": 30, "n_iter": 1, "sampler_name": "k_euler_a", "cfg_scale": 7.5,
                "height": 512, "width": 512, "karras": true, "tiling": false, "hires_fix": false,
                "image_is_control": false, "return_control_map": false,
                "post_processing": [], "loras": [], "tis": [], "use_nsfw_censor": false,
            }),
            id: None,
            ids: vec![],
            skipped,
            model: None,
            source_image: None,
            source_processing: SourceProcessing::Img2img,
            source_mask: None,
            extra_source_images: vec![],
            r2_upload: None,
            r2_uploads: vec![],
            messages: vec![],
            ttl: None,
        }
    }
}

/// The result state a worker reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum SubmitState {
    #[default]
    Ok,
    Censored,
    Faulted,
    Csam,
}

impl SubmitState {
    pub fn as_str(self) -> &'static str {
        match self {
            SubmitState::Ok => "ok",
            SubmitState::Censored => "censored",
            SubmitState::Faulted => "faulted",
            SubmitState::Csam => "csam",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GenMetadata {
    #[serde(rename = "type")]
    #[schema(max_length = 64)]
    pub kind: String,
    pub value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
}

/// The body of `POST /generate/submit`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SubmitRequest {
    #[schema(max_length = 64)]
    pub id: String,
    /// Base64 WebP, or the string `"R2"` when the image was PUT to the job's upload URL.
    #[serde(default)]
    pub generation: Option<String>,
    #[serde(default)]
    pub state: SubmitState,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub censored: bool,
    #[serde(default)]
    #[schema(max_items = 50)]
    pub gen_metadata: Vec<GenMetadata>,
}

/// The bounds of a submit's `gen_metadata`, every kind's: 50 entries, a type of 64 characters,
/// values and references of [`MAX_LIST_ENTRY_CHARS`].
pub(crate) fn check_gen_metadata(errors: &mut FieldErrors, gen_metadata: &[GenMetadata]) {
    errors.max_len("gen_metadata", gen_metadata, 50);
    for entry in gen_metadata {
        errors.max_chars("gen_metadata.type", &entry.kind, 64);
        errors.max_chars("gen_metadata.value", &entry.value, MAX_LIST_ENTRY_CHARS);
        if let Some(reference) = &entry.r#ref {
            errors.max_chars("gen_metadata.ref", reference, MAX_LIST_ENTRY_CHARS);
        }
    }
}

impl SubmitRequest {
    pub fn validate(&self) -> Result<(), ErrorBody> {
        let mut errors = FieldErrors::default();
        check_gen_metadata(&mut errors, &self.gen_metadata);
        errors.max_chars("id", &self.id, 64);
        errors.into_result()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SubmitResponse {
    pub reward: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_cfg(cfg_scale: f64) -> ImageParams {
        ImageParams {
            cfg_scale,
            ..Default::default()
        }
    }

    #[test]
    fn every_cfg_scale_of_two_decimals_from_0_to_100_is_accepted() {
        // What a client sends as `"cfg_scale": 4.1` parses to the double nearest 4.1, which is
        // what `k / 100` gives (a correctly rounded division).
        for k in 0..=10_000u32 {
            let from_json: f64 = format!("{}.{:02}", k / 100, k % 100).parse().unwrap();
            assert_eq!(from_json, f64::from(k) / 100.0);
            assert!(
                with_cfg(from_json).cfg_scale_has_two_decimals_at_most(),
                "{from_json} refused"
            );
        }
    }

    #[test]
    fn a_cfg_scale_with_a_third_decimal_is_refused_as_python_round_refuses_it() {
        // Python: round(x, 2) != x for every x with a non-zero third decimal.
        for k in (0..=100_000u32).filter(|k| k % 10 != 0) {
            let value: f64 = format!("{}.{:03}", k / 1000, k % 1000).parse().unwrap();
            assert!(
                !with_cfg(value).cfg_scale_has_two_decimals_at_most(),
                "{value} accepted"
            );
        }
        assert!(!with_cfg(7.0001).cfg_scale_has_two_decimals_at_most());
        assert!(with_cfg(7.5000).cfg_scale_has_two_decimals_at_most());
    }

    #[test]
    fn upscalers_allow_an_enlarged_image_and_other_post_processors_do_not() {
        assert_eq!(upscale_factor("RealESRGAN_x2plus"), Some(2));
        assert_eq!(upscale_factor("2xModernSpanimationV1"), Some(2));
        assert_eq!(upscale_factor("4x_AnimeSharp"), Some(4));
        assert_eq!(upscale_factor("GFPGAN"), None);
        let params: ImageParams = serde_json::from_value(serde_json::json!({
            "width": 512, "height": 768, "post_processing": ["GFPGAN", "RealESRGAN_x4plus"]
        }))
        .unwrap();
        assert_eq!(params.output_sizes(), vec![(512, 768), (2048, 3072)]);
    }
}
