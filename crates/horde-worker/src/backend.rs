//! Backends run jobs. The built-in one is the candle engine over local checkpoints; a bridge to
//! an inference server the owner already runs implements the same trait.

use crate::job::{Job, Unrunnable};
use horde_diffusion::{LoadOptions, LoadStage, Model};
use image::{ImageEncoder, RgbImage};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// Something that turns jobs into images.
pub trait Backend: Send + Sync {
    /// The AI Horde model names it can run.
    fn models(&self) -> Vec<String>;
    /// Runs a job; returns one WebP per job id, in order. `on_step(done, total)` reports progress.
    fn run(
        &self,
        job: &Job,
        on_step: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<Vec<u8>>, Unrunnable>;
}

/// The candle Stable Diffusion engine with its loaded checkpoints.
pub struct DiffusionBackend {
    models: BTreeMap<String, Arc<Model>>,
}

/// A model that did not load, and why.
#[derive(Debug)]
pub struct LoadFailure {
    pub model: String,
    pub path: PathBuf,
    pub error: horde_diffusion::Error,
}

impl DiffusionBackend {
    /// Loads every checkpoint; one that fails is reported and left out, the others are served.
    pub fn load(
        checkpoints: &BTreeMap<String, PathBuf>,
        mut progress: impl FnMut(&str, LoadStage),
    ) -> (Self, Vec<LoadFailure>) {
        let mut models = BTreeMap::new();
        let mut failures = Vec::new();
        for (name, path) in checkpoints {
            match Model::load(path, &LoadOptions::default(), &mut |stage| {
                progress(name, stage)
            }) {
                Ok(model) => {
                    models.insert(name.clone(), Arc::new(model));
                }
                Err(error) => failures.push(LoadFailure {
                    model: name.clone(),
                    path: path.clone(),
                    error,
                }),
            }
        }
        (DiffusionBackend { models }, failures)
    }
}

impl Backend for DiffusionBackend {
    fn models(&self) -> Vec<String> {
        self.models.keys().cloned().collect()
    }

    fn run(
        &self,
        job: &Job,
        on_step: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<Vec<u8>>, Unrunnable> {
        let model = self.models.get(&job.model).ok_or_else(|| {
            Unrunnable(format!("model {} is not loaded on this worker", job.model))
        })?;
        let images = model
            .generate(&job.generation, on_step)
            .map_err(|e| Unrunnable(e.to_string()))?;
        images.iter().map(encode_webp).collect()
    }
}

/// Encodes an image as (lossless) WebP.
pub fn encode_webp(image: &RgbImage) -> Result<Vec<u8>, Unrunnable> {
    let mut out = Vec::new();
    image::codecs::webp::WebPEncoder::new_lossless(&mut out)
        .write_image(
            image.as_raw(),
            image.width(),
            image.height(),
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| Unrunnable(format!("cannot encode WebP: {e}")))?;
    Ok(out)
}
