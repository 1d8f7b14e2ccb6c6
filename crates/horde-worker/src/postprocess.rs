//! The post-processors a worker serves (`post_processors` in its config: AI Horde name →
//! checkpoint), loaded at start and run on each finished image in the horde's order: face
//! fixers, then the upscaler, then background removal.
//!
//! A checkpoint that does not load, or whose network is not what its name promises (a ×4
//! network under `RealESRGAN_x2plus`), is reported with its file and left out; the worker
//! serves everything else. A job asking for a post-processor this worker lacks is faulted with
//! the reason (the public horde's flag says only whether a worker post-processes at all).

use crate::job::Unrunnable;
use horde_api::image::{upscale_factor, POST_PROCESSORS, UPSCALERS};
use horde_postprocess::upscale::Upscaler;
use image::RgbImage;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The loaded post-processors, by AI Horde name.
#[derive(Default)]
pub struct PostProcessors {
    upscalers: BTreeMap<String, Arc<Upscaler>>,
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

impl PostProcessors {
    /// Loads every configured post-processor on `device`; one that fails is reported and left
    /// out.
    pub fn load(
        checkpoints: &BTreeMap<String, PathBuf>,
        device: &candle_core::Device,
    ) -> (Self, Vec<PostProcessorFailure>) {
        let mut loaded = PostProcessors::default();
        let mut failures = Vec::new();
        for (name, path) in checkpoints {
            match load_one(name, path, device) {
                Ok(upscaler) => {
                    loaded.upscalers.insert(name.clone(), Arc::new(upscaler));
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
        self.upscalers.keys().cloned().collect()
    }

    /// `image` through the requested post-processors, in the horde's order.
    pub fn apply(&self, chain: &[String], image: RgbImage) -> Result<RgbImage, Unrunnable> {
        let mut ordered: Vec<&String> = chain.iter().collect();
        ordered.sort_by_key(|name| stage(name));
        let mut image = image;
        for name in ordered {
            let upscaler = self.upscalers.get(name).ok_or_else(|| {
                Unrunnable(format!(
                    "post-processor {name} is not loaded on this worker"
                ))
            })?;
            let (width, height) = image.dimensions();
            image = upscaler
                .upscale(&image)
                .map_err(|e| Unrunnable(format!("{name}: {e}")))?;
            let factor = upscaler.scale() as u32;
            if image.dimensions() != (width * factor, height * factor) {
                return Err(Unrunnable(format!(
                    "{name} gave {}x{} for a {width}x{height} image at ×{factor}",
                    image.width(),
                    image.height()
                )));
            }
        }
        Ok(image)
    }
}

fn load_one(name: &str, path: &Path, device: &candle_core::Device) -> Result<Upscaler, String> {
    if !POST_PROCESSORS.contains(&name) {
        return Err(format!(
            "not a post-processor the horde knows (one of {})",
            POST_PROCESSORS.join(", ")
        ));
    }
    let Some(factor) = upscale_factor(name) else {
        return Err("face fixers and background removal are not in this build yet".into());
    };
    let upscaler = Upscaler::load(path, device).map_err(|e| e.to_string())?;
    if upscaler.scale() != factor as usize {
        return Err(format!(
            "{}: {name} upscales ×{factor}, this network ×{}",
            path.display(),
            upscaler.scale()
        ));
    }
    Ok(upscaler)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let error = none.apply(&["GFPGAN".into()], image).unwrap_err();
        assert!(error.0.contains("GFPGAN is not loaded"), "{error}");
    }

    #[test]
    fn a_mismatched_or_unknown_checkpoint_is_reported_with_its_reason() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../horde-postprocess/tests/fixtures/upscalers");
        let checkpoints = BTreeMap::from([
            // A ×4 network under a ×2 name.
            (
                "RealESRGAN_x2plus".to_string(),
                fixtures.join("realesrgan_x4plus.safetensors"),
            ),
            (
                "RealESRGAN_x4plus".to_string(),
                fixtures.join("realesrgan_x4plus.safetensors"),
            ),
            (
                "NotAThing".to_string(),
                fixtures.join("realesrgan_x4plus.safetensors"),
            ),
        ]);
        let (loaded, failures) = PostProcessors::load(&checkpoints, &candle_core::Device::Cpu);
        assert_eq!(loaded.names(), vec!["RealESRGAN_x4plus".to_string()]);
        let reasons: Vec<&str> = failures.iter().map(|f| f.reason.as_str()).collect();
        assert!(
            reasons
                .iter()
                .any(|r| r.contains("upscales ×2, this network ×4")),
            "{reasons:?}"
        );
        assert!(
            reasons.iter().any(|r| r.contains("not a post-processor")),
            "{reasons:?}"
        );
    }
}
