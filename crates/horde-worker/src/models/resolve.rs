//! From what the owner named to files on disk: each model named without a file is looked up
//! in the reference, its files are downloaded (or found verified from an earlier start), and a
//! pickled checkpoint is converted once to `.safetensors`, the format the engine maps.
//!
//! Nothing here refuses to start the worker: a model that cannot be had is skipped with a
//! reason naming it, and the worker serves the others.

use super::download::{self, DownloadSettings, FileOrder, ModelOrder, ModelOutcome};
use super::reference::{Reference, ReferenceEntry};
use super::wanted::by_name;
use crate::config::WorkerConfig;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The public image model reference, for a worker of the public AI Horde (whose coordinator
/// does not serve its reference): where the public workers read it.
pub const PUBLIC_IMAGE_REFERENCE: &str = "https://raw.githubusercontent.com/Haidra-Org/AI-Horde-image-model-reference/main/stable_diffusion.json";
/// The face fixers' RetinaFace detector, listed in the GFPGAN entry of the reference.
pub const FACE_DETECTOR_FILE: &str = "detection_Resnet50_Final.pth";
/// The reference entry that lists the face detector.
const FACE_DETECTOR_ENTRY: &str = "GFPGAN";
/// The largest reference a worker reads.
const MAX_REFERENCE_BYTES: usize = 64 << 20;

/// What a name is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Image,
    PostProcessor,
    Text,
}

impl Kind {
    pub fn word(self) -> &'static str {
        match self {
            Kind::Image => "model",
            Kind::PostProcessor => "post-processor",
            Kind::Text => "text model",
        }
    }
}

/// A name that will not be served, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Skip {
    pub kind: Kind,
    pub name: String,
    pub reason: String,
}

/// The files the worker serves, by kind, after resolution.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resolved {
    pub models: BTreeMap<String, PathBuf>,
    pub post_processors: BTreeMap<String, PathBuf>,
    pub text_models: BTreeMap<String, PathBuf>,
    /// The face detector fetched for the face fixers (when the owner named none).
    pub face_detector: Option<PathBuf>,
    pub skipped: Vec<Skip>,
}

/// What would happen to one name (for `--check`).
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// A file the owner gave.
    Given(PathBuf),
    /// In the reference: these files, of which those not yet verified on disk would download.
    Download {
        files: Vec<(String, bool)>,
        size_hint: Option<u64>,
    },
    Skipped(String),
}

/// Reads the model references a worker consults: the built-in post-processor references, its
/// coordinator's image reference (the public one's from GitHub when serving aihorde.net), then
/// the owner's `model_reference` sources. A source that cannot be read is reported and left out.
pub async fn read_reference(config: &WorkerConfig) -> (Reference, Vec<String>) {
    let mut reference = Reference::builtin();
    let mut problems = Vec::new();
    let coordinator = if config.url.contains("aihorde.net") {
        PUBLIC_IMAGE_REFERENCE.to_string()
    } else {
        format!(
            "{}/api/v2/reference/image",
            config.url.trim_end_matches('/')
        )
    };
    for source in std::iter::once(&coordinator).chain(&config.model_reference) {
        let read = match read_source(source).await {
            Ok(text) => reference.add(&text, source).map(|_| ()),
            Err(error) => Err(error),
        };
        if let Err(problem) = read {
            problems.push(problem);
        }
    }
    (reference, problems)
}

async fn read_source(source: &str) -> Result<String, String> {
    if !(source.starts_with("http://") || source.starts_with("https://")) {
        return std::fs::read_to_string(source)
            .map_err(|e| format!("cannot read the model reference {source}: {e}"));
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| e.to_string())?;
    let answer = client
        .get(source)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| format!("cannot fetch the model reference {source}: {e}"))?;
    let bytes = answer
        .bytes()
        .await
        .map_err(|e| format!("cannot fetch the model reference {source}: {e}"))?;
    if bytes.len() > MAX_REFERENCE_BYTES {
        return Err(format!(
            "the model reference {source} is larger than 64 MiB"
        ));
    }
    String::from_utf8(bytes.to_vec())
        .map_err(|_| format!("the model reference {source} is not UTF-8 text"))
}

/// The names of one kind the owner gave, as (name, given path).
fn named(config: &WorkerConfig) -> Vec<(Kind, String, PathBuf)> {
    let of = |kind, map: &BTreeMap<String, PathBuf>| {
        map.iter()
            .map(move |(name, path)| (kind, name.clone(), path.clone()))
            .collect::<Vec<_>>()
    };
    let mut all = of(Kind::Image, &config.models);
    all.extend(of(Kind::PostProcessor, &config.post_processors));
    all.extend(of(Kind::Text, &config.text_models));
    all
}

/// What each configured name would come to, without downloading or converting anything.
pub fn plan(config: &WorkerConfig, reference: &Reference) -> Vec<(Kind, String, Plan)> {
    let dir = config.effective_models_dir();
    named(config)
        .into_iter()
        .map(|(kind, name, path)| {
            let plan = if !by_name(&path) {
                Plan::Given(path)
            } else {
                match order_for(kind, &name, reference, config) {
                    Err(reason) => Plan::Skipped(reason),
                    Ok(order) => Plan::Download {
                        files: order
                            .files
                            .iter()
                            .map(|f| (f.file_name.clone(), ready_on_disk(&dir, f)))
                            .collect(),
                        size_hint: order.size_hint,
                    },
                }
            };
            (kind, name, plan)
        })
        .collect()
}

/// Downloads what the named models need and gives every served name its file.
pub async fn resolve(
    config: &WorkerConfig,
    reference: &Reference,
    settings: &DownloadSettings,
) -> Resolved {
    let mut resolved = Resolved::default();
    let mut orders: Vec<(Kind, String, ModelOrder)> = Vec::new();
    for (kind, name, path) in named(config) {
        if !by_name(&path) {
            resolved.insert(kind, name, path);
            continue;
        }
        match order_for(kind, &name, reference, config) {
            Ok(order) => match already_converted(&settings.dir, kind, &order) {
                Some(converted) => resolved.insert(kind, name, converted),
                None => orders.push((kind, name, order)),
            },
            Err(reason) => resolved.skip(kind, &name, reason),
        }
    }
    let to_fetch: Vec<ModelOrder> = orders.iter().map(|(_, _, o)| o.clone()).collect();
    let outcomes = download::fetch_models(&to_fetch, settings).await;
    for ((kind, name, order), (_, outcome)) in orders.into_iter().zip(outcomes) {
        match outcome {
            ModelOutcome::Skipped { reason } => resolved.skip(kind, &name, reason),
            ModelOutcome::Ready { files } => resolved.ready(kind, name, &order, files),
        }
    }
    resolved
}

impl Resolved {
    fn insert(&mut self, kind: Kind, name: String, path: PathBuf) {
        let map = match kind {
            Kind::Image => &mut self.models,
            Kind::PostProcessor => &mut self.post_processors,
            Kind::Text => &mut self.text_models,
        };
        map.insert(name, path);
    }

    fn skip(&mut self, kind: Kind, name: &str, reason: String) {
        self.skipped.push(Skip {
            kind,
            name: name.to_string(),
            reason,
        });
    }

    /// A model whose files are on disk and verified: its weights are the first file (an image
    /// model's pickle converted first); a face fixer's detector comes with it.
    fn ready(&mut self, kind: Kind, name: String, order: &ModelOrder, files: Vec<PathBuf>) {
        let Some(weights) = files.first() else {
            return self.skip(kind, &name, format!("{} {name}: no file", kind.word()));
        };
        if kind == Kind::PostProcessor {
            let detector = order
                .files
                .iter()
                .zip(&files)
                .find(|(f, _)| f.file_name.ends_with(FACE_DETECTOR_FILE));
            if let Some((_, path)) = detector {
                self.face_detector = Some(path.clone());
            }
        }
        let weights = match (kind, is_pickle(weights)) {
            (Kind::Image, true) => match converted(weights, &order.files[0]) {
                Ok(path) => path,
                Err(reason) => return self.skip(kind, &name, reason),
            },
            _ => weights.clone(),
        };
        self.insert(kind, name, weights);
    }
}

/// The files of `name` the worker downloads, from its reference entry.
fn order_for(
    kind: Kind,
    name: &str,
    reference: &Reference,
    config: &WorkerConfig,
) -> Result<ModelOrder, String> {
    let entry = reference
        .get(name)
        .ok_or_else(|| reference.unknown(kind.word(), name))?;
    if kind == Kind::Image {
        check_baseline(entry)?;
    }
    let mut files = match kind {
        // A post-processor's network is its first file; the others (GFPGAN's list holds every
        // face helper of facexlib) are not used here.
        Kind::PostProcessor => entry.files.iter().take(1).cloned().collect(),
        _ => entry.files.clone(),
    };
    if kind == Kind::PostProcessor && is_face_fixer(name) && config.face_detector.is_none() {
        let detector = reference
            .get(FACE_DETECTOR_ENTRY)
            .and_then(|e| {
                e.files
                    .iter()
                    .find(|f| f.file_name.ends_with(FACE_DETECTOR_FILE))
            })
            .cloned()
            .ok_or_else(|| {
                format!("post-processor {name} needs the face detector {FACE_DETECTOR_FILE}, which no reference lists; set face_detector")
            })?;
        files.push(detector);
    }
    if files.is_empty() {
        return Err(format!(
            "{} {name}: the model reference ({}) lists no file to download for it; give its file as \"{name}=path\"",
            kind.word(),
            entry.source
        ));
    }
    let files = files
        .into_iter()
        .map(|f| {
            let url = f.url.clone().ok_or_else(|| {
                format!(
                    "{} {name}: the model reference lists no download URL for {}",
                    kind.word(),
                    f.file_name
                )
            })?;
            if f.sha256.is_none() {
                return Err(format!(
                    "{} {name}: the model reference ({}) gives no SHA-256 for {}, so it cannot be verified and is not downloaded",
                    kind.word(),
                    entry.source,
                    f.file_name
                ));
            }
            Ok(FileOrder {
                file_name: f.file_name,
                url,
                sha256: f.sha256,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(ModelOrder {
        model: name.to_string(),
        files,
        size_hint: entry.size_hint,
    })
}

/// Image models the engine runs: Stable Diffusion 1.x, 2.x and XL.
fn check_baseline(entry: &ReferenceEntry) -> Result<(), String> {
    let baseline = entry.baseline.clone().unwrap_or_default();
    let squashed: String = baseline
        .chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect();
    let runs = ["stablediffusion1", "stablediffusion2", "stablediffusionxl"]
        .iter()
        .any(|b| squashed == *b);
    if runs {
        Ok(())
    } else {
        Err(format!(
            "model {}: its baseline {baseline:?} is not run by this engine (Stable Diffusion 1, 2 and XL are)",
            entry.name
        ))
    }
}

fn is_face_fixer(name: &str) -> bool {
    matches!(
        name,
        "GFPGAN" | "GFPGANv1.3" | "CodeFormers" | "RestoreFormer"
    )
}

fn is_pickle(path: &Path) -> bool {
    let lower = path.to_string_lossy().to_ascii_lowercase();
    [".ckpt", ".pt", ".pth", ".bin"]
        .iter()
        .any(|ext| lower.ends_with(ext))
}

/// Where a pickled checkpoint's conversion goes.
fn conversion_of(pickle: &Path) -> PathBuf {
    pickle.with_extension("safetensors")
}

/// Whether a file of the order is on disk and verified (or converted from a verified pickle).
fn ready_on_disk(dir: &Path, file: &FileOrder) -> bool {
    let path = dir.join(&file.file_name);
    let Some(sha) = &file.sha256 else {
        return false;
    };
    download::is_verified(&path, sha) || download::is_verified(&conversion_of(&path), sha)
}

/// The conversion of an image model's pickled checkpoint made on an earlier start (the pickle
/// itself is gone then, so it must not be fetched again).
fn already_converted(dir: &Path, kind: Kind, order: &ModelOrder) -> Option<PathBuf> {
    let [file] = order.files.as_slice() else {
        return None;
    };
    let target = conversion_of(&dir.join(&file.file_name));
    let verified = download::is_verified(&target, file.sha256.as_deref()?);
    (kind == Kind::Image && is_pickle(&dir.join(&file.file_name)) && verified).then_some(target)
}

/// The `.safetensors` of a verified pickled checkpoint: converted once (recorded as derived
/// from the pickle's checksum), after which the pickle is deleted to give its room back.
fn converted(pickle: &Path, file: &FileOrder) -> Result<PathBuf, String> {
    let target = conversion_of(pickle);
    let sha = file.sha256.as_deref().unwrap_or_default();
    if download::is_verified(&target, sha) {
        return Ok(target);
    }
    tracing::info!(file = %pickle.display(), "converting the pickled checkpoint to safetensors (once)");
    let summary = horde_diffusion::pickled::convert_to_safetensors(pickle, &target)
        .map_err(|e| format!("{} could not be converted: {e}", pickle.display()))?;
    download::record_verified(&target, sha)
        .map_err(|e| format!("cannot record {}: {e}", target.display()))?;
    tracing::info!(file = %target.display(), tensors = summary.tensors, "converted");
    let _ = std::fs::remove_file(pickle);
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pickled checkpoint torch wrote, in the SD key layout (horde-diffusion's fixture).
    const PICKLE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../horde-diffusion/tests/fixtures/pickled/sd_layout.ckpt"
    );

    #[test]
    fn a_verified_pickle_is_converted_once_recorded_and_its_room_given_back() {
        let dir = tempfile::tempdir().unwrap();
        let pickle = dir.path().join("model.ckpt");
        std::fs::copy(PICKLE, &pickle).unwrap();
        let sha = download::sha256_of(&pickle).unwrap();
        let file = FileOrder {
            file_name: "model.ckpt".into(),
            url: "http://127.0.0.1:1/model.ckpt".into(),
            sha256: Some(sha.clone()),
        };
        let order = ModelOrder {
            model: "m".into(),
            files: vec![file.clone()],
            size_hint: None,
        };
        assert_eq!(already_converted(dir.path(), Kind::Image, &order), None);
        assert!(!ready_on_disk(dir.path(), &file), "nothing recorded yet");
        let target = converted(&pickle, &file).unwrap();
        assert_eq!(target, dir.path().join("model.safetensors"));
        assert!(!pickle.exists(), "the pickle is deleted once converted");
        assert!(download::is_verified(&target, &sha));
        assert!(ready_on_disk(dir.path(), &file));
        assert_eq!(
            already_converted(dir.path(), Kind::Image, &order),
            Some(target.clone()),
            "a later start neither fetches nor converts again"
        );
        assert_eq!(
            already_converted(dir.path(), Kind::PostProcessor, &order),
            None
        );
        let tensors = candle_core::safetensors::load(&target, &candle_core::Device::Cpu).unwrap();
        assert!(tensors
            .keys()
            .any(|k| k.starts_with("model.diffusion_model.")));
        // A changed conversion is no longer trusted.
        std::fs::write(&target, b"changed").unwrap();
        assert_eq!(already_converted(dir.path(), Kind::Image, &order), None);
    }

    #[test]
    fn only_stable_diffusion_families_are_ordered_and_unchecked_files_are_refused() {
        let mut reference = Reference::default();
        let entry = |baseline: &str, sha: &str| {
            format!(
                r#"{{"baseline": "{baseline}", "type": "ckpt", "config": {{
                    "files": [{{"path": "m.safetensors"{sha}}}],
                    "download": [{{"file_name": "m.safetensors", "file_path": "", "file_url": "http://127.0.0.1:1/m"}}]}}}}"#
            )
        };
        let with_sha = r#", "sha256sum": "00""#;
        let text = format!(
            r#"{{"xl": {}, "flux": {}, "bare": {}}}"#,
            entry("stable_diffusion_xl", with_sha),
            entry("flux_1", with_sha),
            entry("stable diffusion 1", "")
        );
        reference.add(&text, "test.json").unwrap();
        let config = WorkerConfig::default();
        assert!(order_for(Kind::Image, "xl", &reference, &config).is_ok());
        let flux = order_for(Kind::Image, "flux", &reference, &config).unwrap_err();
        assert!(
            flux.contains("flux_1") && flux.contains("not run by this engine"),
            "{flux}"
        );
        let bare = order_for(Kind::Image, "bare", &reference, &config).unwrap_err();
        assert!(
            bare.contains("model bare") && bare.contains("no SHA-256"),
            "{bare}"
        );
        let unknown = order_for(Kind::Image, "nope", &reference, &config).unwrap_err();
        assert!(
            unknown.contains("\"nope\" is not in the model reference"),
            "{unknown}"
        );
    }
}
