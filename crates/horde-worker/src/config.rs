//! The worker's settings. The binary layers defaults, a TOML file, `HORDE_WORKER_…` variables
//! and flags onto [`WorkerConfig`]; every field is explained in `worker.example.toml`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// The horde to serve: our coordinator or the public AI Horde (`https://aihorde.net`).
    pub url: String,
    /// The API key of the worker's owner (kudos are earned by this user).
    pub api_key: String,
    /// The worker's name, unique on the horde.
    pub name: String,
    /// The image models: AI Horde model name → local checkpoint (a `.safetensors` file or a
    /// diffusers folder), or a list of names (`["Deliberate", "stable_diffusion"]`, each
    /// optionally `"name=path"`) looked up in the model reference and downloaded into
    /// `models_dir` (`crate::models`). An empty path means "by name" too.
    #[serde(deserialize_with = "crate::models::wanted::names_or_paths")]
    pub models: BTreeMap<String, PathBuf>,
    /// AI Horde post-processor name → local checkpoint (`.safetensors` or `.pth`), or names
    /// to download, as `models`: the upscalers (`RealESRGAN_x4plus`, …), the face fixers
    /// (`GFPGAN`, `GFPGANv1.3`, `CodeFormers`, `RestoreFormer`) and `strip_background` (u2net,
    /// u2netp or isnet-general-use).
    #[serde(deserialize_with = "crate::models::wanted::names_or_paths")]
    pub post_processors: BTreeMap<String, PathBuf>,
    /// Where models named without a path are downloaded to (and found on later starts).
    /// Empty: `~/.cache/horde/models`.
    pub models_dir: PathBuf,
    /// Model references to read besides the coordinator's (`GET /api/v2/reference/image`) and
    /// the built-in post-processor references: files or URLs in the AI Horde reference format;
    /// a later one's entry replaces an earlier one's of the same name.
    pub model_reference: Vec<String>,
    /// The most the models directory may hold, in GB (0: only the disk's free space limits).
    pub disk_budget_gb: f64,
    /// The most files downloaded at once.
    pub max_parallel_downloads: u32,
    /// The memory the worker plans with, in MB: the machine's RAM on the CPU, the GPU's memory
    /// on a GPU (0: three quarters of what the device has). The loaded models, and one batch of
    /// `amount` images of `max_pixels`, stay within it.
    pub memory_budget_mb: u64,
    /// The RetinaFace checkpoint the face fixers find faces with (facexlib's
    /// `detection_Resnet50_Final.pth`); needed only when a face fixer is configured.
    pub face_detector: Option<PathBuf>,
    /// The largest image (width × height) this worker accepts. Unset: planned from the memory
    /// budget (`crate::hardware::plan_memory`).
    pub max_pixels: Option<u64>,
    /// The most images of one request generated in one batch. Unset: planned from the memory
    /// budget.
    pub amount: Option<u32>,
    /// Jobs run at the same time.
    pub threads: u32,
    /// Accept requests that allow NSFW content.
    pub nsfw: bool,
    /// Refuse prompts containing any of these words.
    pub blacklist: Vec<String>,
    /// Users whose requests this worker serves first.
    pub priority_usernames: Vec<String>,
    pub allow_img2img: bool,
    pub allow_painting: bool,
    /// Offer post-processing when at least one post-processor is loaded (false: never).
    pub allow_post_processing: bool,
    /// Offer LoRAs when the `library` opens (false: never).
    pub allow_lora: bool,
    /// The folder of LoRAs and textual-inversion embeddings, with its index `library.toml`
    /// (`crate::library`); without one, jobs with LoRAs or embeddings are not taken.
    pub library: Option<PathBuf>,
    /// Control type (`canny`, `depth`, …) → ControlNet checkpoint.
    pub controlnets: BTreeMap<String, PathBuf>,
    /// Offer ControlNet for the types in `controlnets` (false: never).
    pub allow_controlnet: bool,
    /// Only take requests from users who can pay upfront.
    pub require_upfront_kudos: bool,
    /// Seconds between pops when there is no work.
    pub poll_interval_secs: f64,
    /// The `bridge_agent` reported to the horde. Empty: this worker's own name, or the
    /// reGen-compatible name the public AI Horde requires for R2 uploads when `url` is it.
    pub bridge_agent: String,
    /// Where the engine runs: `cpu`, `cuda` or `cuda:N` (a build with the `cuda` feature).
    pub device: String,
    /// The dtype the weights are held in: `f32`, `f16` or `bf16`, or `auto`: on a GPU f16, on
    /// the CPU bf16 where the CPU multiplies bf16 itself (AVX512-BF16) and f32 elsewhere
    /// (`horde_diffusion::preferred_cpu_dtype`), resolved at start ([`WorkerConfig::resolve_dtype`]).
    pub dtype: String,
    /// Trade time for memory: the text encoders are read again for each job and dropped
    /// before its steps (`LoadOptions::release_text_encoders`), and freed memory is returned
    /// to the system instead of kept for the next job. SDXL 1024² in bf16 then peaks under
    /// 8 GiB (BENCHMARKS.md), at about 5 s more a job and 5 % more time.
    pub low_memory: bool,
    /// Text: AI Horde model name → local GGUF file, served by the built-in engine; or names
    /// to download, as `models` (from a `model_reference` file that lists their GGUF: the
    /// public text reference lists none).
    #[serde(deserialize_with = "crate::models::wanted::names_or_paths")]
    pub text_models: BTreeMap<String, PathBuf>,
    /// Text: an inference server the owner runs, to which text jobs are forwarded.
    pub text_bridge: Option<crate::text::bridge::TextBridgeConfig>,
    /// Text: the most tokens generated for one job (the public pop's default, 512).
    pub max_length: u32,
    /// Text: the most tokens of context (prompt and generation) taken (the public default, 2048).
    pub max_context_length: u32,
    /// Text: the name the text worker pops as (names are unique across kinds on the horde).
    /// Empty: `name` with `-text` appended.
    pub text_name: String,
    /// Alchemy: the forms this worker offers as an alchemist: `nsfw` (needs `safety_checker`),
    /// `interrogation` (needs `clip`), `caption` (needs `blip`) and post-processors of
    /// `post_processors`. Empty: no alchemist.
    pub alchemy_forms: Vec<String>,
    /// The Stable Diffusion safety checker's folder (`config.json`, `model.safetensors`): the
    /// `nsfw` form, and the censor of images of requests that ask for it (`use_nsfw_censor`).
    pub safety_checker: Option<PathBuf>,
    /// Alchemy: a CLIP ViT-L/14 folder in transformers' layout, for the `interrogation` form.
    pub clip: Option<PathBuf>,
    /// Alchemy: a BLIP captioning folder in transformers' layout, for the `caption` form.
    pub blip: Option<PathBuf>,
    /// Alchemy: the most 512×512 tiles of a source image taken (1 to 256).
    pub max_tiles: u32,
    /// Alchemy: the name the alchemist pops as. Empty: `name` with `-alchemy` appended.
    pub alchemy_name: String,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            url: "http://127.0.0.1:7001".into(),
            api_key: String::new(),
            name: String::new(),
            models: BTreeMap::new(),
            post_processors: BTreeMap::new(),
            face_detector: None,
            models_dir: PathBuf::new(),
            model_reference: vec![],
            disk_budget_gb: 0.0,
            max_parallel_downloads: 2,
            memory_budget_mb: 0,
            max_pixels: None,
            amount: None,
            threads: 1,
            nsfw: true,
            blacklist: vec![],
            priority_usernames: vec![],
            allow_img2img: true,
            allow_painting: true,
            allow_post_processing: true,
            allow_lora: true,
            library: None,
            controlnets: BTreeMap::new(),
            allow_controlnet: true,
            require_upfront_kudos: false,
            poll_interval_secs: 2.0,
            bridge_agent: String::new(),
            device: "cpu".into(),
            dtype: "auto".into(),
            low_memory: false,
            text_models: BTreeMap::new(),
            text_bridge: None,
            max_length: 512,
            max_context_length: 2048,
            text_name: String::new(),
            alchemy_forms: vec![],
            safety_checker: None,
            clip: None,
            blip: None,
            max_tiles: 16,
            alchemy_name: String::new(),
        }
    }
}

/// Our worker's own bridge name.
pub const OWN_BRIDGE_AGENT: &str = concat!(
    "horde-worker:",
    env!("CARGO_PKG_VERSION"),
    ":https://github.com/horde-rs/horde"
);
/// The public AI Horde grants R2 uploads and full rewards by bridge name (horde-api.md §10);
/// this worker speaks the same protocol as reGen, so it reports a reGen version that has them.
pub const REGEN_COMPATIBLE_AGENT: &str =
    "AI Horde Worker reGen:9.0.1:https://github.com/Haidra-Org/horde-worker-reGen";

/// The `dtype` that lets the worker choose (`WorkerConfig::resolve_dtype`).
pub const AUTO_DTYPE: &str = "auto";

/// The largest image a worker offers when nothing planned it (the public pop's default).
pub const UNPLANNED_MAX_PIXELS: u64 = 512 * 512;

impl WorkerConfig {
    /// The largest image offered: `max_pixels`, or the public pop's default when unplanned.
    pub fn effective_max_pixels(&self) -> u64 {
        self.max_pixels.unwrap_or(UNPLANNED_MAX_PIXELS)
    }

    /// The batch size offered: `amount`, or 1 when unplanned.
    pub fn effective_amount(&self) -> u32 {
        self.amount.unwrap_or(1)
    }

    /// Replaces `dtype = "auto"` by the dtype this device runs fastest; returns the choice and
    /// why, for the start-up log (`None` when the owner named a dtype).
    pub fn resolve_dtype(&mut self) -> Option<String> {
        let (dtype, why) = self.chosen_dtype();
        self.dtype = dtype.into();
        why
    }

    /// The dtype the weights are held in (`auto` resolved), and why when it was chosen.
    fn chosen_dtype(&self) -> (&str, Option<String>) {
        if self.dtype != AUTO_DTYPE {
            return (&self.dtype, None);
        }
        if self.device.trim().starts_with("cuda") {
            return (
                "f16",
                Some("f16: on a GPU, half the memory and faster".into()),
            );
        }
        let (dtype, why) = horde_diffusion::preferred_cpu_dtype();
        let name = if dtype == candle_core::DType::BF16 {
            "bf16"
        } else {
            "f32"
        };
        (name, Some(why.to_string()))
    }

    /// The engine's load options: device, dtype (`auto` resolved), and the text encoders
    /// released between jobs when `low_memory`.
    pub fn load_options(&self) -> Result<horde_diffusion::LoadOptions, horde_diffusion::Error> {
        let (dtype, _) = self.chosen_dtype();
        let mut options = horde_diffusion::LoadOptions::named(&self.device, dtype)?;
        options.release_text_encoders = self.low_memory;
        Ok(options)
    }

    /// The folder models named without a path go to.
    pub fn effective_models_dir(&self) -> PathBuf {
        if !self.models_dir.as_os_str().is_empty() {
            return self.models_dir.clone();
        }
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default();
        home.join(".cache").join("horde").join("models")
    }

    /// Checks what a worker cannot run without.
    pub fn validate(&self) -> Result<(), String> {
        let mut missing = Vec::new();
        if self.url.is_empty() {
            missing.push("url");
        }
        if self.api_key.is_empty() {
            missing.push("api_key");
        }
        if self.name.is_empty() {
            missing.push("name");
        }
        if !missing.is_empty() {
            return Err(format!("missing settings: {}", missing.join(", ")));
        }
        if !self.serves_images() && !self.serves_text() && !self.serves_alchemy() {
            return Err("this worker serves nothing: give image models (a [models] table, \"AI Horde model name\" = \"path/to/checkpoint.safetensors\", or --model), text models (a [text_models] table, \"AI Horde model name\" = \"path/to/model.gguf\", or --text-model), an inference server to forward text jobs to ([text_bridge] with url, api and name, or --text-bridge-url) or alchemy forms (alchemy_forms, or --alchemy-form)".into());
        }
        if self.amount == Some(0) || self.threads == 0 {
            return Err("amount and threads must be at least 1".into());
        }
        if self.dtype != AUTO_DTYPE {
            horde_diffusion::dtype_named(&self.dtype).map_err(|e| e.to_string())?;
        }
        if let Some(pixels) = self.max_pixels.filter(|p| *p < 64 * 64) {
            return Err(format!(
                "max_pixels {pixels} is below the smallest image (64×64)"
            ));
        }
        if self.max_parallel_downloads == 0 || self.max_parallel_downloads > 16 {
            return Err(format!(
                "max_parallel_downloads {} is not within 1..=16",
                self.max_parallel_downloads
            ));
        }
        if !(self.disk_budget_gb >= 0.0 && self.disk_budget_gb.is_finite()) {
            return Err(format!(
                "disk_budget_gb {} is not a size",
                self.disk_budget_gb
            ));
        }
        if self.serves_text() {
            self.validate_text()?;
        }
        if self.serves_alchemy() {
            self.validate_alchemy()?;
        }
        Ok(())
    }

    /// The alchemy settings: each form known and its network configured, `max_tiles` in range.
    fn validate_alchemy(&self) -> Result<(), String> {
        if !(1..=horde_api::interrogation::MAX_TILES).contains(&self.max_tiles) {
            return Err(format!(
                "max_tiles {} is not within 1..=256",
                self.max_tiles
            ));
        }
        for form in &self.alchemy_forms {
            let needs = match form.as_str() {
                "nsfw" => self.safety_checker.is_none().then_some("safety_checker"),
                "interrogation" => self.clip.is_none().then_some("clip"),
                "caption" => self.blip.is_none().then_some("blip"),
                _ if horde_api::interrogation::makes_image(form) => {
                    (!self.post_processors.contains_key(form))
                        .then_some("a checkpoint in post_processors")
                }
                _ => {
                    return Err(format!(
                        "alchemy_forms: {form} is not a form of the horde (one of {})",
                        horde_api::interrogation::forms()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                }
            };
            if let Some(setting) = needs {
                return Err(format!("alchemy_forms: {form} needs {setting}"));
            }
        }
        Ok(())
    }

    /// Whether alchemy forms are offered.
    pub fn serves_alchemy(&self) -> bool {
        !self.alchemy_forms.is_empty()
    }

    /// The alchemist's name: `alchemy_name`, or `name` with `-alchemy` appended.
    pub fn effective_alchemy_name(&self) -> String {
        if self.alchemy_name.is_empty() {
            format!("{}-alchemy", self.name)
        } else {
            self.alchemy_name.clone()
        }
    }

    /// The alchemist's `bridge_agent`: `bridge_agent` when set, else ours (no reGen version
    /// runs alchemy, so the reGen-compatible name is not claimed for it).
    pub fn alchemy_bridge_agent(&self) -> String {
        if self.bridge_agent.is_empty() {
            OWN_BRIDGE_AGENT.into()
        } else {
            self.bridge_agent.clone()
        }
    }

    /// The text settings a text worker needs.
    fn validate_text(&self) -> Result<(), String> {
        if self.max_length == 0 || self.max_context_length <= self.max_length {
            return Err(format!(
                "max_length {} must be at least 1 and below max_context_length {}",
                self.max_length, self.max_context_length
            ));
        }
        let name = self.effective_text_name();
        if name.chars().count() > 100 {
            return Err(format!("text_name {name:?} is longer than 100 characters"));
        }
        if let Some(bridge) = &self.text_bridge {
            if bridge.url.is_empty() || bridge.name.is_empty() {
                return Err(
                    "text_bridge needs url and name (the AI Horde model name offered)".into(),
                );
            }
        }
        Ok(())
    }

    /// Whether image models are configured.
    pub fn serves_images(&self) -> bool {
        !self.models.is_empty()
    }

    /// Whether text models or a text bridge are configured.
    pub fn serves_text(&self) -> bool {
        !self.text_models.is_empty() || self.text_bridge.is_some()
    }

    /// The text worker's name: `text_name`, or `name` with `-text` appended.
    pub fn effective_text_name(&self) -> String {
        if self.text_name.is_empty() {
            format!("{}-text", self.name)
        } else {
            self.text_name.clone()
        }
    }

    /// The bridge agent to report.
    pub fn effective_bridge_agent(&self) -> String {
        if !self.bridge_agent.is_empty() {
            self.bridge_agent.clone()
        } else if self.url.contains("aihorde.net") {
            REGEN_COMPATIBLE_AGENT.into()
        } else {
            OWN_BRIDGE_AGENT.into()
        }
    }
}
