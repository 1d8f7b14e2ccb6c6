//! `horde worker`: settings from defaults, a TOML file, `HORDE_WORKER_…` variables and flags;
//! loads the checkpoints with a progress bar, then serves until Ctrl-C.

use anyhow::Context;
use clap::Args;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use horde_diffusion::LoadStage;
use horde_worker::alchemy::horde_alchemy::safety::SafetyChecker;
use horde_worker::alchemy::{Alchemist, AlchemyForms};
use horde_worker::models::download::DownloadSettings;
use horde_worker::models::reference::Reference;
use horde_worker::models::resolve::{self, Plan};
use horde_worker::text::bridge::Bridge;
use horde_worker::text::engine::TextEngine;
use horde_worker::text::{TextBackend, TextWorker};
use horde_worker::{DiffusionBackend, Worker, WorkerConfig};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Keys of `WorkerConfig` that `HORDE_WORKER_…` variables may set.
const ENV_KEYS: &[&str] = &[
    "url",
    "api_key",
    "name",
    "models",
    "post_processors",
    "face_detector",
    "models_dir",
    "model_reference",
    "disk_budget_gb",
    "max_parallel_downloads",
    "memory_budget_mb",
    "max_pixels",
    "amount",
    "threads",
    "nsfw",
    "blacklist",
    "priority_usernames",
    "allow_img2img",
    "allow_painting",
    "allow_post_processing",
    "allow_lora",
    "library",
    "controlnets",
    "allow_controlnet",
    "require_upfront_kudos",
    "poll_interval_secs",
    "bridge_agent",
    "device",
    "dtype",
    "low_memory",
    "text_models",
    "text_bridge",
    "max_length",
    "max_context_length",
    "text_name",
    "alchemy_forms",
    "safety_checker",
    "clip",
    "blip",
    "max_tiles",
    "alchemy_name",
];

#[derive(Args, Debug, Default, serde::Serialize)]
#[command(args_conflicts_with_subcommands = false)]
pub(crate) struct WorkerArgs {
    #[command(subcommand)]
    #[serde(skip)]
    action: Option<WorkerAction>,
    /// TOML config file (see worker.example.toml). Every setting can also be given as an env var
    /// HORDE_WORKER_<SETTING> (models: HORDE_WORKER_MODELS__<NAME>=PATH) or as the flag below.
    #[arg(long, short = 'c', env = "HORDE_WORKER_CONFIG", global = true)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Print what this worker would serve and why (models found, to download or skipped; the
    /// machine; the memory plan), then exit without downloading or serving
    #[arg(long)]
    #[serde(skip)]
    check: bool,
    /// The horde to serve [default: http://127.0.0.1:7001]
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    /// Where models named without a file are downloaded to [default: ~/.cache/horde/models]
    #[arg(long, value_name = "DIR", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    models_dir: Option<PathBuf>,
    /// A model reference to read besides the coordinator's (a file or URL in the AI Horde
    /// reference format; repeatable)
    #[arg(long = "model-reference", value_name = "FILE|URL", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    model_reference: Option<Vec<String>>,
    /// The most the models directory may hold, in GB [default: 0, only the free space limits]
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    disk_budget_gb: Option<f64>,
    /// The most files downloaded at once [default: 2]
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_parallel_downloads: Option<u32>,
    /// The memory the worker plans with, in MB: RAM on the CPU, the GPU's memory on a GPU; the
    /// loaded models and one batch stay within it, the least recently used model is unloaded
    /// to load another [default: 0, three quarters of the device's memory]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    memory_budget_mb: Option<u64>,
    /// API key of the worker's owner (keys may start with '-')
    #[arg(long, allow_hyphen_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    api_key: Option<String>,
    /// Worker name, unique on the horde
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    /// A model to serve (repeatable): an AI Horde model name, downloaded from the model
    /// reference ("Deliberate"), or "name=checkpoint.safetensors" for a file of your own
    #[arg(long = "model", value_name = "NAME[=PATH]")]
    #[serde(skip)]
    models: Vec<String>,
    /// A post-processor to serve (repeatable): a name downloaded from the reference
    /// (RealESRGAN_x4plus, GFPGAN, CodeFormers), or "name=checkpoint": an upscaler
    /// (RealESRGAN_x4plus=RealESRGAN_x4plus.pth), a face fixer (GFPGAN=GFPGANv1.4.pth, with
    /// --face-detector) or strip_background=u2net.pth
    #[arg(long = "post-processor", value_name = "NAME[=PATH]")]
    #[serde(skip)]
    post_processors: Vec<String>,
    /// Largest image (width × height) accepted [default: planned from the memory budget]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_pixels: Option<u64>,
    /// Most images of one request generated in one batch [default: planned from the memory
    /// budget]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    amount: Option<u32>,
    /// Jobs run at the same time [default: 1]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    threads: Option<u32>,
    /// Accept requests that allow NSFW content [default: true]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    nsfw: Option<bool>,
    /// Refuse prompts with these words (comma-separated)
    #[arg(long, value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    blacklist: Option<Vec<String>>,
    /// Serve these users first (comma-separated)
    #[arg(long, value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    priority_usernames: Option<Vec<String>>,
    /// Accept image-to-image (default true)
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    allow_img2img: Option<bool>,
    /// Accept inpainting and outpainting (default true; the horde sends them only to a worker
    /// that also serves an inpainting model)
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    allow_painting: Option<bool>,
    /// The RetinaFace checkpoint the face fixers (GFPGAN, CodeFormers, RestoreFormer) find faces
    /// with: facexlib's detection_Resnet50_Final.pth
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    face_detector: Option<PathBuf>,
    /// Offer post-processing when a post-processor (`[post_processors]`) is loaded; false: never
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    allow_post_processing: Option<bool>,
    /// Offer LoRAs when the library opens [default: true]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    allow_lora: Option<bool>,
    /// The folder of LoRAs and embeddings, with its index library.toml (see worker.example.toml)
    #[arg(long, value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    library: Option<PathBuf>,
    /// A ControlNet to serve, as "control type=checkpoint" (repeatable), e.g.
    /// canny=control_v11p_sd15_canny.safetensors
    #[arg(long = "controlnet", value_name = "TYPE=PATH")]
    #[serde(skip)]
    controlnets: Vec<String>,
    /// Offer ControlNet for the types in --controlnet [default: true]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    allow_controlnet: Option<bool>,
    /// Only serve users who can pay upfront
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    require_upfront_kudos: Option<bool>,
    /// Seconds between pops when idle [default: 2]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    poll_interval_secs: Option<f64>,
    /// bridge_agent reported to the horde [default: ours, or reGen-compatible for aihorde.net]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    bridge_agent: Option<String>,
    /// Where the engine runs: cpu, cuda or cuda:N (CUDA needs a build with --features cuda)
    /// [default: cpu]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    device: Option<String>,
    /// Trade time for memory: text encoders read again for each job, freed memory returned to
    /// the system (SDXL 1024² in bf16 within 8 GiB) [default: false]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    low_memory: Option<bool>,
    /// The dtype weights are held in: f32, f16, bf16, or auto: f16 on a GPU; on the CPU bf16
    /// where it multiplies bf16 itself (AVX512-BF16: half the memory, a faster step), else f32
    /// [default: auto]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    dtype: Option<String>,
    /// A text model to serve on the built-in engine, as "AI Horde model name=model.gguf", or
    /// a name a --model-reference lists a GGUF for (repeatable): a GGUF llama, Mistral or
    /// Qwen2 model (F16, Q8_0, Q4_K_M, Q5_K_M, …)
    #[arg(long = "text-model", value_name = "NAME[=PATH]")]
    #[serde(skip)]
    text_models: Vec<String>,
    /// Forward text jobs to an inference server you run, at this URL (with --text-bridge-api
    /// and --text-bridge-name)
    #[arg(long, value_name = "URL")]
    #[serde(skip)]
    text_bridge_url: Option<String>,
    /// The server's API: openai (POST /v1/completions: llama.cpp's server, vLLM, TabbyAPI,
    /// Aphrodite) or kobold (POST /api/v1/generate: KoboldCpp, KoboldAI) [default: openai]
    #[arg(long, value_name = "API")]
    #[serde(skip)]
    text_bridge_api: Option<String>,
    /// The AI Horde model name offered for the server's model
    #[arg(long, value_name = "NAME")]
    #[serde(skip)]
    text_bridge_name: Option<String>,
    /// The `model` sent to an OpenAI-compatible server (vLLM and TabbyAPI need it)
    #[arg(long, value_name = "MODEL")]
    #[serde(skip)]
    text_bridge_model: Option<String>,
    /// Text: most tokens generated for one job [default: 512]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_length: Option<u32>,
    /// Text: most tokens of context (prompt and generation) taken [default: 2048]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_context_length: Option<u32>,
    /// The name the text worker pops as (names are unique across kinds on the horde)
    /// [default: the worker's name with -text appended]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    text_name: Option<String>,
    /// An alchemy form to serve (repeatable, or comma-separated): nsfw (with --safety-checker),
    /// interrogation (with --clip), caption (with --blip), or a post-processor of
    /// --post-processor
    #[arg(long = "alchemy-form", value_name = "FORM", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    alchemy_forms: Option<Vec<String>>,
    /// The Stable Diffusion safety checker's folder: the nsfw form, and the censor of images of
    /// requests that ask for it
    #[arg(long, value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    safety_checker: Option<PathBuf>,
    /// A CLIP ViT-L/14 folder (transformers' layout) for the interrogation form
    #[arg(long, value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    clip: Option<PathBuf>,
    /// A BLIP captioning folder (transformers' layout) for the caption form
    #[arg(long, value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    blip: Option<PathBuf>,
    /// Alchemy: most 512×512 tiles of a source image taken [default: 16]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tiles: Option<u32>,
    /// The name the alchemist pops as [default: the worker's name with -alchemy appended]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    alchemy_name: Option<String>,
}

/// What `horde worker` does besides serving.
#[derive(clap::Subcommand, Debug)]
pub(crate) enum WorkerAction {
    /// Download models by name into the models directory (resumed, verified against the
    /// reference's SHA-256), without serving
    Download {
        /// AI Horde model, post-processor or text model names ("Deliberate",
        /// "RealESRGAN_x4plus"; a text model from a --model-reference that lists its GGUF)
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
}

/// `NAME` or `NAME=PATH` flags as a map (a name alone: from the model reference).
fn names_to_paths(flag: &str, entries: &[String]) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    entries
        .iter()
        .map(|entry| {
            horde_worker::models::wanted::parse_entry(entry)
                .map_err(|e| anyhow::anyhow!("{flag} {e}"))
        })
        .collect()
}

/// Layers the worker's settings and checks them.
pub(crate) fn load_config(args: &WorkerArgs) -> anyhow::Result<WorkerConfig> {
    let config = layered_config(args)?;
    config.validate().map_err(anyhow::Error::msg)?;
    Ok(config)
}

/// Layers the worker's settings: defaults, the file, the variables, the flags.
fn layered_config(args: &WorkerArgs) -> anyhow::Result<WorkerConfig> {
    let mut figment = Figment::from(Serialized::defaults(WorkerConfig::default()));
    if let Some(path) = &args.config {
        anyhow::ensure!(
            path.exists(),
            "config file {} does not exist",
            path.display()
        );
        figment = figment.merge(Toml::file(path));
    }
    figment = figment.merge(Env::prefixed("HORDE_WORKER_").split("__").filter(|key| {
        ENV_KEYS
            .iter()
            .any(|k| key.as_str().to_ascii_lowercase().starts_with(k))
    }));
    figment = figment.merge(Serialized::defaults(args));
    for (key, flag, entries) in [
        ("models", "--model", &args.models),
        ("post_processors", "--post-processor", &args.post_processors),
        ("controlnets", "--controlnet", &args.controlnets),
        ("text_models", "--text-model", &args.text_models),
    ] {
        let named = names_to_paths(flag, entries)?;
        if !named.is_empty() {
            figment = figment.merge(Serialized::default(key, named));
        }
    }
    for (key, value) in [
        ("text_bridge.url", &args.text_bridge_url),
        ("text_bridge.api", &args.text_bridge_api),
        ("text_bridge.name", &args.text_bridge_name),
        ("text_bridge.model", &args.text_bridge_model),
    ] {
        if let Some(value) = value {
            figment = figment.merge(Serialized::default(key, value));
        }
    }
    figment.extract().context("invalid worker configuration")
}

pub(crate) async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    if let Some(WorkerAction::Download { names }) = &args.action {
        return download_only(&args, names).await;
    }
    let mut config = load_config(&args)?;
    if let Some(why) = config.resolve_dtype() {
        println!("dtype {why}");
    }
    if args.check {
        return check(&config).await;
    }
    if config.low_memory {
        println!("low_memory: text encoders read again for each job, freed memory returned to the system, convolution and linear weights rearranged at each use");
        horde_diffusion::parts::kernels::keep_rearranged_weights(false);
    } else {
        crate::keep_freed_memory();
    }
    let (config, models_bytes) = with_files(config).await?;
    let safety = safety_checker(&config)?;
    let image_worker = match config.serves_images() {
        true => Some(image_worker(&config, safety.clone(), models_bytes)?),
        false => None,
    };
    let text_worker = match config.serves_text() {
        true => Some(text_worker(&config)?),
        false => None,
    };
    let alchemist = match config.serves_alchemy() {
        true => Some(alchemist(&config, safety)?),
        false => None,
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("Stopping: finishing the job in hand (Ctrl-C again to abort).");
        let _ = stop.send(true);
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("Aborted.");
        std::process::exit(130);
    });
    // One process, three loops: images, text and alchemy share the Ctrl-C.
    let images = async {
        match &image_worker {
            Some(worker) => Some(worker.run(stopped.clone()).await),
            None => None,
        }
    };
    let texts = async {
        match &text_worker {
            Some(worker) => Some(worker.run(stopped.clone()).await),
            None => None,
        }
    };
    let forms = async {
        match &alchemist {
            Some(alchemist) => Some(alchemist.run(stopped.clone()).await),
            None => None,
        }
    };
    let (images, texts, forms) = tokio::join!(images, texts, forms);
    if let Some(summary) = images {
        println!(
            "images: stopped after {} jobs ({} images, {} faulted), {:.2} kudos earned",
            summary.jobs_done, summary.images_done, summary.jobs_faulted, summary.kudos
        );
    }
    if let Some(summary) = texts {
        println!(
            "text: stopped after {} jobs ({} faulted), {:.2} kudos earned",
            summary.jobs_done, summary.jobs_faulted, summary.kudos
        );
    }
    if let Some(summary) = forms {
        println!(
            "alchemy: stopped after {} forms ({} faulted), {:.2} kudos earned",
            summary.forms_done, summary.forms_faulted, summary.kudos
        );
    }
    Ok(())
}

/// Whether any model, post-processor or text model is named without a file.
fn names_any(config: &WorkerConfig) -> bool {
    use horde_worker::models::wanted::by_name;
    [&config.models, &config.post_processors, &config.text_models]
        .iter()
        .any(|named| named.values().any(|path| by_name(path)))
}

/// The download settings of `config`.
fn download_settings(config: &WorkerConfig) -> DownloadSettings {
    let budget = config.disk_budget_gb;
    DownloadSettings {
        dir: config.effective_models_dir(),
        parallel: config.max_parallel_downloads as usize,
        disk_budget_bytes: (budget > 0.0).then_some((budget * 1e9) as u64),
        show_progress: true,
        ..DownloadSettings::default()
    }
}

/// Reads the model references, saying what could not be read.
async fn reference_of(config: &WorkerConfig) -> Reference {
    let (reference, problems) = resolve::read_reference(config).await;
    for problem in problems {
        eprintln!("{problem}");
    }
    reference
}

/// The settings with every named model's file: downloaded (or found from an earlier start),
/// the memory planned. What cannot be had is reported, and the rest served.
/// Also gives what the loaded image models may hold together, in bytes.
async fn with_files(mut config: WorkerConfig) -> anyhow::Result<(WorkerConfig, u64)> {
    if names_any(&config) {
        let reference = reference_of(&config).await;
        let settings = download_settings(&config);
        println!("models directory {}", settings.dir.display());
        let resolved = resolve::resolve(&config, &reference, &settings).await;
        for skip in &resolved.skipped {
            eprintln!(
                "{} {} not served: {}",
                skip.kind.word(),
                skip.name,
                skip.reason
            );
        }
        config.models = resolved.models;
        config.post_processors = resolved.post_processors;
        config.text_models = resolved.text_models;
        if config.face_detector.is_none() {
            config.face_detector = resolved.face_detector;
        }
        anyhow::ensure!(
            config.serves_images() || config.serves_text() || config.serves_alchemy(),
            "none of the models named could be had, so this worker serves nothing"
        );
    }
    let plan = memory_plan(&config);
    for reason in &plan.reasons {
        println!("memory: {reason}");
    }
    config.max_pixels = Some(plan.max_pixels);
    config.amount = Some(plan.amount);
    Ok((config, plan.models_bytes))
}

/// The memory plan of this machine for the configured image models.
fn memory_plan(config: &WorkerConfig) -> horde_worker::hardware::MemoryPlan {
    let machine = horde_worker::hardware::measured(&config.device);
    let device_bytes = match &machine.gpu {
        Some((_, vram)) if *vram > 0 => *vram,
        _ => machine.ram_bytes,
    };
    let options = config.load_options().ok();
    let largest = options
        .map(|options| {
            config
                .models
                .values()
                .filter_map(|path| horde_diffusion::Model::inspect(path, &options).ok())
                .map(|(_, bytes)| bytes)
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0);
    let dtype_bytes = if config.dtype == "f32" { 4 } else { 2 };
    let wishes = horde_worker::hardware::Wishes {
        budget_bytes: (config.memory_budget_mb > 0).then_some(config.memory_budget_mb << 20),
        max_pixels: config.max_pixels,
        amount: config.amount,
    };
    horde_worker::hardware::plan_memory(device_bytes, largest, dtype_bytes, wishes)
}

/// `horde worker --check`: what would be served and why, without downloading or serving.
async fn check(config: &WorkerConfig) -> anyhow::Result<()> {
    let machine = horde_worker::hardware::measured(&config.device);
    println!(
        "machine: {}, {} cores, {:.1} GiB of memory",
        machine.cpu,
        machine.cpu_cores,
        machine.ram_bytes as f64 / (1u64 << 30) as f64
    );
    if let Some((gpu, vram)) = &machine.gpu {
        println!("GPU: {gpu}, {:.1} GiB", *vram as f64 / (1u64 << 30) as f64);
    }
    println!(
        "engine: {} on {} in {}",
        horde_worker::hardware::engine_name(),
        config.device,
        config.dtype
    );
    let reference = if names_any(config) {
        reference_of(config).await
    } else {
        Reference::builtin()
    };
    let dir = config.effective_models_dir();
    println!("models directory: {}", dir.display());
    for (kind, name, plan) in resolve::plan(config, &reference) {
        let what = match plan {
            Plan::Given(path) if path.exists() => format!("serves {}", path.display()),
            Plan::Given(path) => format!("NOT served: {} does not exist", path.display()),
            Plan::Skipped(reason) => format!("NOT served: {reason}"),
            Plan::Download { files, size_hint } => {
                let missing: Vec<&str> = files
                    .iter()
                    .filter(|(_, ready)| !ready)
                    .map(|(file, _)| file.as_str())
                    .collect();
                match missing.as_slice() {
                    [] => "serves it: downloaded and verified".to_string(),
                    _ => format!(
                        "would download {}{}",
                        missing.join(", "),
                        size_hint
                            .map(|b| format!(" ({:.1} GB)", b as f64 / 1e9))
                            .unwrap_or_default()
                    ),
                }
            }
        };
        println!("{} {name}: {what}", kind.word());
    }
    for reason in memory_plan(config).reasons {
        println!("memory: {reason}");
    }
    Ok(())
}

/// `horde worker download NAME…`: fetches the named models (image models and
/// post-processors, by the reference's kind of each) and says what became of each.
async fn download_only(args: &WorkerArgs, names: &[String]) -> anyhow::Result<()> {
    let mut config = layered_config(args)?;
    let reference = reference_of(&config).await;
    config.models.clear();
    config.post_processors.clear();
    config.text_models.clear();
    for name in names {
        let entry = reference.get(name);
        let post = entry.is_some_and(|e| {
            matches!(
                e.kind.to_ascii_lowercase().as_str(),
                "realesrgan" | "esrgan" | "gfpgan" | "codeformers"
            )
        });
        let text = entry.is_some_and(|e| {
            e.files
                .iter()
                .any(|f| f.file_name.to_ascii_lowercase().ends_with(".gguf"))
        });
        let map = match (post, text) {
            (true, _) => &mut config.post_processors,
            (_, true) => &mut config.text_models,
            _ => &mut config.models,
        };
        map.insert(name.clone(), PathBuf::new());
    }
    let settings = download_settings(&config);
    println!("models directory {}", settings.dir.display());
    let resolved = resolve::resolve(&config, &reference, &settings).await;
    let ready = resolved
        .models
        .iter()
        .chain(&resolved.post_processors)
        .chain(&resolved.text_models);
    for (name, path) in ready {
        println!("{name}: ready at {}", path.display());
    }
    if let Some(path) = &resolved.face_detector {
        println!("face detector: ready at {}", path.display());
    }
    for skip in &resolved.skipped {
        eprintln!("{}: {}", skip.name, skip.reason);
    }
    anyhow::ensure!(
        resolved.skipped.is_empty(),
        "{} of {} models could not be downloaded",
        resolved.skipped.len(),
        names.len()
    );
    Ok(())
}

/// Loads the safety checker when one is configured: the nsfw form's and the censor's.
fn safety_checker(config: &WorkerConfig) -> anyhow::Result<Option<Arc<SafetyChecker>>> {
    let device = horde_diffusion::LoadOptions::named(&config.device, &config.dtype)?.device;
    match horde_worker::alchemy::forms::load_safety_checker(config, &device) {
        None => Ok(None),
        Some(Ok(checker)) => {
            println!("safety checker loaded: images of requests asking for the censor are checked");
            Ok(Some(checker))
        }
        Some(Err(reason)) => anyhow::bail!("safety_checker did not load: {reason}"),
    }
}

/// Loads the alchemy forms' networks, and says which forms are served.
fn alchemist(
    config: &WorkerConfig,
    safety: Option<Arc<SafetyChecker>>,
) -> anyhow::Result<Arc<Alchemist>> {
    let device = horde_diffusion::LoadOptions::named(&config.device, &config.dtype)?.device;
    let (forms, failures) = AlchemyForms::load(config, safety, &device);
    for failure in &failures {
        let path = failure.path.as_ref().map(|p| format!(" ({})", p.display()));
        eprintln!(
            "alchemy form {}{} not served: {}",
            failure.form,
            path.unwrap_or_default(),
            failure.reason
        );
    }
    anyhow::ensure!(!forms.names().is_empty(), "no alchemy form could be loaded");
    println!(
        "alchemist {} serving {} on {}",
        config.effective_alchemy_name(),
        forms.names().join(", "),
        config.url
    );
    Ok(Alchemist::new(config.clone(), Arc::new(forms)))
}

/// Loads the image models, post-processors, ControlNets and library, and says what is served.
fn image_worker(
    config: &WorkerConfig,
    censor: Option<Arc<SafetyChecker>>,
    models_bytes: u64,
) -> anyhow::Result<Arc<Worker>> {
    let options = config.load_options()?;
    let mut backend = load_models(&config.models, &options, models_bytes)?
        .with_post_processors(load_post_processors(config, &options))
        .with_controlnets(controlnets_of(config));
    if let Some(library) = open_library(config) {
        backend = backend.with_library(library);
    }
    let worker = Worker::with_censor(config.clone(), Arc::new(backend), censor);
    let pop = worker.pop_request();
    let mut offers = pop.post_processors.clone().unwrap_or_default();
    if pop.allow_lora {
        offers.push("LoRAs and embeddings".into());
    }
    if let Some(types) = pop.control_map_types.as_ref().filter(|t| !t.is_empty()) {
        offers.push(format!("ControlNet {}", types.join(", ")));
    }
    let post = if offers.is_empty() {
        String::new()
    } else {
        format!(" with {}", offers.join(", "))
    };
    println!(
        "worker {} serving {}{post} on {}",
        config.name,
        pop.models.join(", "),
        config.url
    );
    let loaded = pop.loaded_models.clone().unwrap_or_default();
    if loaded.len() < pop.models.len() {
        println!(
            "loaded now: {} (the others load when a job needs them)",
            loaded.join(", ")
        );
    }
    Ok(worker)
}

/// Loads the GGUF text models and connects the text bridge, and says what is served.
fn text_worker(config: &WorkerConfig) -> anyhow::Result<Arc<TextWorker>> {
    let device = horde_diffusion::LoadOptions::named(&config.device, &config.dtype)?.device;
    let (engine, failures) = TextEngine::load(&config.text_models, &device);
    for failure in &failures {
        eprintln!(
            "text model {} ({}) not served: {}",
            failure.model,
            failure.path.display(),
            failure.error
        );
    }
    for model in engine.models() {
        let context = engine.context_length(&model).unwrap_or(0);
        if context < config.max_context_length as usize {
            eprintln!(
                "text model {model}: its context is {context} tokens, below max_context_length {}; longer prompts lose their beginning",
                config.max_context_length
            );
        }
    }
    let bridge = config.text_bridge.clone().map(Bridge::new);
    let backend = TextBackend::new(engine, bridge);
    anyhow::ensure!(
        !backend.models().is_empty(),
        "no text model could be loaded"
    );
    let how = match backend.bridge() {
        Some(bridge) => format!(" ({} through {})", bridge.model(), bridge.endpoint()),
        None => String::new(),
    };
    println!(
        "text worker {} serving {}{how} on {}",
        config.effective_text_name(),
        backend.models().join(", "),
        config.url
    );
    Ok(TextWorker::new(config.clone(), Arc::new(backend)))
}

/// The configured ControlNets whose file exists; the others are reported and not offered (a
/// ControlNet is read when a job first needs it, against that job's model).
fn controlnets_of(config: &WorkerConfig) -> BTreeMap<String, PathBuf> {
    let mut found = BTreeMap::new();
    for (control_type, path) in &config.controlnets {
        if path.is_file() {
            found.insert(control_type.clone(), path.clone());
        } else {
            eprintln!(
                "ControlNet {control_type} ({}) not served: no such file",
                path.display()
            );
        }
    }
    found
}

/// Opens the LoRA and embedding library; one that cannot be read is reported, and the worker
/// then offers no LoRAs.
fn open_library(config: &WorkerConfig) -> Option<horde_worker::library::Library> {
    let folder = config.library.as_ref()?;
    match horde_worker::library::Library::open(folder) {
        Ok(library) => {
            for entry in library.missing_files() {
                eprintln!(
                    "library: {} ({}) is listed but missing; jobs naming it will fault",
                    entry.name,
                    entry.file.display()
                );
            }
            println!(
                "library {}: {} LoRAs, {} embeddings",
                folder.display(),
                library.loras.len(),
                library.embeddings.len()
            );
            Some(library)
        }
        Err(error) => {
            eprintln!("library not used, so no LoRAs are offered: {error}");
            None
        }
    }
}

/// Loads the post-processors; one that fails is reported and skipped.
fn load_post_processors(
    config: &WorkerConfig,
    options: &horde_diffusion::LoadOptions,
) -> horde_worker::postprocess::PostProcessors {
    let (loaded, failures) = horde_worker::postprocess::PostProcessors::load(
        &config.post_processors,
        config.face_detector.as_deref(),
        &options.device,
    );
    for failure in &failures {
        eprintln!(
            "post-processor {} ({}) not served: {}",
            failure.name,
            failure.path.display(),
            failure.reason
        );
    }
    loaded
}

/// Opens every model and loads those that fit `models_bytes` together, with a progress bar; a
/// model that fails is reported and skipped.
fn load_models(
    models: &BTreeMap<String, PathBuf>,
    options: &horde_diffusion::LoadOptions,
    models_bytes: u64,
) -> anyhow::Result<DiffusionBackend> {
    let bar = indicatif::ProgressBar::new((models.len() * 4) as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
            .expect("valid template"),
    );
    let budget = Some(models_bytes);
    let (backend, failures) =
        DiffusionBackend::within_budget(models, options, budget, |name, stage| {
            let what = match stage {
                LoadStage::Index => "reading the checkpoint",
                LoadStage::TextEncoders => "text encoders",
                LoadStage::UNet => "UNet",
                LoadStage::Vae => "VAE",
                // Not counted: only bf16 models on a CPU with bf16 kernels prepare them.
                LoadStage::Kernels => {
                    bar.set_message(format!("{name}: weights for the CPU's bf16 kernels"));
                    return;
                }
            };
            bar.set_message(format!("{name}: {what}"));
            bar.inc(1);
        });
    bar.finish_and_clear();
    for failure in &failures {
        eprintln!("model {} not served: {}", failure.model, failure.error);
    }
    anyhow::ensure!(
        !horde_worker::Backend::models(&backend).is_empty(),
        "no model could be loaded"
    );
    Ok(backend)
}

/// `horde model tiny`: writes a tiny random checkpoint of a real architecture.
pub(crate) fn write_tiny(arch: &str, out: &Path, seed: u64) -> anyhow::Result<()> {
    if let Ok(post) = arch.parse::<horde_postprocess::tiny::TinyPostProcessor>() {
        let count = horde_postprocess::tiny::write_tiny_checkpoint(post, out, seed)?;
        let size = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
        println!(
            "wrote {} ({count} tensors, {:.1} kB, random weights of the {post:?} post-processor)",
            out.display(),
            size as f64 / 1e3
        );
        return Ok(());
    }
    if let Some(base) = arch.strip_suffix("-controlnet") {
        let arch: horde_diffusion::tiny::TinyArch = base.parse().map_err(anyhow::Error::msg)?;
        let count = horde_diffusion::tiny::write_tiny_controlnet(arch, out, seed)?;
        println!(
            "wrote {} ({count} tensors, random weights of a ControlNet for the {arch:?} architecture)",
            out.display()
        );
        return Ok(());
    }
    // `sd15-inpainting`: the architecture with an inpainting UNet (9 input channels).
    let (base, inpainting) = match arch.strip_suffix("-inpainting") {
        Some(base) => (base, true),
        None => (arch, false),
    };
    let arch: horde_diffusion::tiny::TinyArch = base.parse().map_err(|e: String| {
        anyhow::anyhow!(
            "{e} (with -inpainting for an inpainting UNet), or a post-processor: {}",
            horde_postprocess::tiny::TinyPostProcessor::NAMES.join(", ")
        )
    })?;
    let count = if inpainting {
        horde_diffusion::tiny::write_tiny_inpainting_checkpoint(arch, out, seed)?
    } else {
        horde_diffusion::tiny::write_tiny_checkpoint(arch, out, seed)?
    };
    let size = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    let unet = if inpainting {
        " with an inpainting UNet"
    } else {
        ""
    };
    println!(
        "wrote {} ({count} tensors, {:.1} MB, random weights of the {arch:?} architecture{unet})",
        out.display(),
        size as f64 / 1e6
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        worker: WorkerArgs,
    }

    #[test]
    fn the_example_config_parses_and_states_the_defaults() {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../worker.example.toml");
        let args = WorkerArgs {
            config: Some(example.into()),
            ..WorkerArgs::default()
        };
        let config = load_config(&args).expect("worker.example.toml is valid");
        // What a worker cannot run without has no default: the example fills it in. Every other
        // value it sets is the default.
        let defaults = WorkerConfig::default();
        let without_the_required = WorkerConfig {
            api_key: defaults.api_key.clone(),
            name: defaults.name.clone(),
            models: defaults.models.clone(),
            ..config
        };
        assert_eq!(without_the_required, defaults);
        // And it explains every setting: each is set, commented out, or a table.
        let text = std::fs::read_to_string(example).unwrap();
        let serde_json::Value::Object(fields) = serde_json::to_value(&defaults).unwrap() else {
            panic!("WorkerConfig serializes as a map");
        };
        for key in fields.keys() {
            let stated = text.lines().any(|line| {
                let line = line.trim_start_matches('#').trim_start();
                line.starts_with(&format!("{key} =")) || line == format!("[{key}]")
            });
            assert!(stated, "worker.example.toml does not mention `{key}`");
        }
    }

    #[test]
    fn text_models_and_the_text_bridge_come_from_flags_and_a_worker_must_serve_something() {
        let key = "0123456789abcdefghijkl";
        let cli = Cli::try_parse_from([
            "worker",
            "--api-key",
            key,
            "--name",
            "w",
            "--text-model",
            "koboldcpp/tiny=/m/tiny.gguf",
            "--text-bridge-url",
            "http://127.0.0.1:8080",
            "--text-bridge-api",
            "kobold",
            "--text-bridge-name",
            "koboldcpp/big",
            "--max-length",
            "256",
        ])
        .unwrap();
        let config = load_config(&cli.worker).unwrap();
        assert!(config.models.is_empty() && config.serves_text());
        assert_eq!(
            config.text_models,
            BTreeMap::from([("koboldcpp/tiny".to_string(), PathBuf::from("/m/tiny.gguf"))])
        );
        let bridge = config.text_bridge.clone().unwrap();
        assert_eq!(bridge.url, "http://127.0.0.1:8080");
        assert_eq!(bridge.api, horde_worker::text::bridge::BridgeApi::Kobold);
        assert_eq!(
            (bridge.name.as_str(), bridge.model, bridge.timeout_secs),
            ("koboldcpp/big", None, 600)
        );
        assert_eq!((config.max_length, config.max_context_length), (256, 2048));
        assert_eq!(config.effective_text_name(), "w-text");

        let idle = Cli::try_parse_from(["worker", "--api-key", key, "--name", "w"]).unwrap();
        let error = load_config(&idle.worker).unwrap_err().to_string();
        assert!(error.contains("this worker serves nothing"), "{error}");
        assert!(
            error.contains("[text_models]") && error.contains("[models]"),
            "{error}"
        );
    }

    #[test]
    fn alchemy_forms_and_their_networks_come_from_flags() {
        let cli = Cli::try_parse_from([
            "worker",
            "--api-key",
            "0123456789abcdefghijkl",
            "--name",
            "w",
            "--alchemy-form",
            "nsfw,interrogation",
            "--alchemy-form",
            "RealESRGAN_x2plus",
            "--post-processor",
            "RealESRGAN_x2plus=/m/x2.pth",
            "--safety-checker",
            "/m/safety",
            "--clip",
            "/m/clip",
            "--max-tiles",
            "32",
        ])
        .unwrap();
        let config = load_config(&cli.worker).unwrap();
        assert_eq!(
            config.alchemy_forms,
            ["nsfw", "interrogation", "RealESRGAN_x2plus"]
        );
        assert_eq!(config.safety_checker, Some(PathBuf::from("/m/safety")));
        assert_eq!(config.clip, Some(PathBuf::from("/m/clip")));
        assert_eq!((config.max_tiles, config.blip.clone()), (32, None));
        assert!(config.serves_alchemy() && !config.serves_images());
        assert_eq!(config.effective_alchemy_name(), "w-alchemy");
        let no_blip = Cli::try_parse_from([
            "worker",
            "--api-key",
            "0123456789abcdefghijkl",
            "--name",
            "w",
            "--alchemy-form",
            "caption",
        ])
        .unwrap();
        let error = load_config(&no_blip.worker).unwrap_err().to_string();
        assert!(error.contains("caption needs blip"), "{error}");
    }

    #[test]
    fn post_processors_and_the_face_detector_come_from_flags() {
        let cli = Cli::try_parse_from([
            "worker",
            "--api-key",
            "0123456789abcdefghijkl",
            "--name",
            "w",
            "--post-processor",
            "GFPGAN=/m/GFPGANv1.4.pth",
            "--post-processor",
            "strip_background = /m/u2net.pth",
            "--face-detector",
            "/m/detection_Resnet50_Final.pth",
            "--model",
            "stable_diffusion=/m/sd.safetensors",
        ])
        .unwrap();
        let config = load_config(&cli.worker).unwrap();
        assert_eq!(
            config.post_processors,
            BTreeMap::from([
                ("GFPGAN".to_string(), PathBuf::from("/m/GFPGANv1.4.pth")),
                (
                    "strip_background".to_string(),
                    PathBuf::from("/m/u2net.pth")
                ),
            ])
        );
        assert_eq!(
            config.face_detector,
            Some(PathBuf::from("/m/detection_Resnet50_Final.pth"))
        );
        assert_eq!(config.models.len(), 1);
        let bad = Cli::try_parse_from(["worker", "--name", "w", "--post-processor", "=x"]).unwrap();
        let error = load_config(&bad.worker).unwrap_err().to_string();
        assert!(
            error.contains("--post-processor \"=x\": expected NAME or NAME=PATH"),
            "{error}"
        );
    }

    #[test]
    fn models_by_name_and_the_download_command_come_from_flags() {
        let cli = Cli::try_parse_from([
            "worker",
            "--api-key",
            "0123456789abcdefghijkl",
            "--name",
            "w",
            "--model",
            "Deliberate",
            "--model",
            "Mine=/m/mine.safetensors",
            "--post-processor",
            "GFPGAN",
            "--models-dir",
            "/m/models",
            "--disk-budget-gb",
            "20",
            "--memory-budget-mb",
            "8000",
            "--low-memory",
            "true",
        ])
        .unwrap();
        let config = load_config(&cli.worker).unwrap();
        assert!(config.load_options().unwrap().release_text_encoders);
        assert!(
            !WorkerConfig::default()
                .load_options()
                .unwrap()
                .release_text_encoders
        );
        assert_eq!(
            config.models,
            BTreeMap::from([
                ("Deliberate".to_string(), PathBuf::new()),
                ("Mine".to_string(), PathBuf::from("/m/mine.safetensors")),
            ])
        );
        assert!(names_any(&config));
        assert_eq!(config.post_processors["GFPGAN"], PathBuf::new());
        assert_eq!(config.effective_models_dir(), PathBuf::from("/m/models"));
        let settings = download_settings(&config);
        assert_eq!(settings.disk_budget_bytes, Some(20_000_000_000));
        assert_eq!(config.memory_budget_mb, 8000);
        assert_eq!(
            (config.max_pixels, config.amount),
            (None, None),
            "planned at start"
        );

        let download = Cli::try_parse_from([
            "worker",
            "download",
            "Deliberate",
            "RealESRGAN_x4plus",
            "--models-dir",
            "/m/models",
        ])
        .unwrap();
        match &download.worker.action {
            Some(WorkerAction::Download { names }) => {
                assert_eq!(names, &["Deliberate", "RealESRGAN_x4plus"])
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            download.worker.models_dir.as_deref(),
            Some(Path::new("/m/models"))
        );
    }
}
