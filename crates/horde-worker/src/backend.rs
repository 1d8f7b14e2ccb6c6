//! Backends run jobs. The built-in one is the candle engine over local checkpoints; a bridge to
//! an inference server the owner already runs implements the same trait.

use crate::control::{map_of, Controlnets};
use crate::job::{Job, Unrunnable};
use crate::library::Library;
pub use crate::models::resident::LoadFailure;
use crate::models::resident::ResidentModels;
use crate::networks::Networks;
use crate::postprocess::PostProcessors;
use horde_diffusion::{Control, LoadOptions, LoadStage, SourceImage};
use image::DynamicImage;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Something that turns jobs into images.
pub trait Backend: Send + Sync {
    /// The AI Horde model names it can run.
    fn models(&self) -> Vec<String>;
    /// The AI Horde post-processor names it can run.
    fn post_processors(&self) -> Vec<String> {
        vec![]
    }
    /// Whether it runs jobs from a source image (image-to-image, inpainting, outpainting).
    fn runs_sources(&self) -> bool {
        false
    }
    /// Whether it runs jobs with LoRAs and textual inversions.
    fn runs_loras(&self) -> bool {
        false
    }
    /// The control types it runs from a picture (drawing the map) and from a given map.
    fn control_types(&self) -> (Vec<String>, Vec<String>) {
        (vec![], vec![])
    }
    /// The models it holds in memory now, when it loads the others on demand (`None`: every
    /// model is always ready).
    fn loaded_models(&self) -> Option<Vec<String>> {
        None
    }
    /// The longest a model took to load, in seconds.
    fn load_secs(&self) -> u32 {
        0
    }
    /// Runs a job, from `source` when the job has one (fetched and decoded); returns one WebP
    /// per job id, in order. `on_step(done, total)` reports progress.
    fn run(
        &self,
        job: &Job,
        source: Option<&SourceImage>,
        on_step: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<Vec<u8>>, Unrunnable>;
}

/// The candle Stable Diffusion engine with its checkpoints (`crate::models::resident`: every
/// one served, the most recently used held loaded within the memory budget).
pub struct DiffusionBackend {
    models: ResidentModels,
    post: PostProcessors,
    networks: Networks,
    controlnets: Controlnets,
    options: LoadOptions,
}

impl DiffusionBackend {
    /// Loads every checkpoint with `options` (device and dtype), with no memory budget; one
    /// that fails is reported and left out, the others are served.
    pub fn load(
        checkpoints: &BTreeMap<String, PathBuf>,
        options: &LoadOptions,
        progress: impl FnMut(&str, LoadStage),
    ) -> (Self, Vec<LoadFailure>) {
        Self::within_budget(checkpoints, options, None, progress)
    }

    /// Serves every checkpoint, loading at start those that fit `budget_bytes` together (all
    /// with `None`) and the others when a job needs them, unloading the least recently used.
    pub fn within_budget(
        checkpoints: &BTreeMap<String, PathBuf>,
        options: &LoadOptions,
        budget_bytes: Option<u64>,
        mut progress: impl FnMut(&str, LoadStage),
    ) -> (Self, Vec<LoadFailure>) {
        let (models, mut failures) = ResidentModels::open(checkpoints, options, budget_bytes);
        failures.extend(models.preload(&mut progress));
        let backend = DiffusionBackend {
            models,
            post: PostProcessors::default(),
            networks: Networks::default(),
            controlnets: Controlnets::default(),
            options: options.clone(),
        };
        (backend, failures)
    }

    /// The served models and the loaded ones (loads, unloads, sizes).
    pub fn resident(&self) -> &ResidentModels {
        &self.models
    }

    /// Jobs of these control types (type → ControlNet checkpoint) are run.
    pub fn with_controlnets(mut self, files: BTreeMap<String, PathBuf>) -> Self {
        self.controlnets = Controlnets::new(files);
        self
    }

    /// Jobs may name the LoRAs and embeddings of `library`.
    pub fn with_library(mut self, library: Library) -> Self {
        self.networks = Networks::new(Some(library));
        self
    }

    /// These post-processors run on every image a job asks them for.
    pub fn with_post_processors(mut self, post: PostProcessors) -> Self {
        self.post = post;
        self
    }
}

impl Backend for DiffusionBackend {
    fn models(&self) -> Vec<String> {
        self.models.names()
    }

    fn loaded_models(&self) -> Option<Vec<String>> {
        Some(self.models.loaded_names())
    }

    fn load_secs(&self) -> u32 {
        self.models.slowest_load_secs()
    }

    fn post_processors(&self) -> Vec<String> {
        self.post.names()
    }

    /// Every checkpoint runs them: inpainting UNets by their masked-image input, the others by
    /// latent masking.
    fn runs_sources(&self) -> bool {
        true
    }

    fn runs_loras(&self) -> bool {
        self.networks.has_library()
    }

    fn control_types(&self) -> (Vec<String>, Vec<String>) {
        (self.controlnets.drawn_types(), self.controlnets.map_types())
    }

    fn run(
        &self,
        job: &Job,
        source: Option<&SourceImage>,
        on_step: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<Vec<u8>>, Unrunnable> {
        let loaded = self.models.get(&job.model)?;
        let prepared = self.networks.prepare(job)?;
        let g = &prepared.generation;
        let control = match &job.control {
            Some(spec) => {
                let source = source
                    .ok_or_else(|| Unrunnable("a controlled job needs a source image".into()))?;
                let map = map_of(spec, source, g.width as u32, g.height as u32)?;
                if spec.return_control_map {
                    let webp = encode_webp(&DynamicImage::ImageRgb8(map))?;
                    return Ok(vec![webp; job.ids.len()]);
                }
                let net = self.controlnets.net(
                    &spec.control_type,
                    &job.model,
                    &loaded.checkpoint,
                    &self.options,
                )?;
                Some(Control {
                    net,
                    map,
                    strength: spec.strength,
                })
            }
            None => None,
        };
        let engine_error = |e: horde_diffusion::Error| Unrunnable(e.to_string());
        let images = {
            let _turn = loaded.turn.lock().unwrap_or_else(|e| e.into_inner());
            loaded
                .model
                .set_loras(&prepared.loras)
                .map_err(engine_error)?;
            loaded
                .model
                .generate_controlled(g, source, job.hires_fix.as_ref(), control.as_ref(), on_step)
                .map_err(engine_error)?
        };
        images
            .into_iter()
            .map(|image| {
                let finished =
                    self.post
                        .apply(&job.post_processing, image, job.facefixer_strength)?;
                encode_webp(&finished)
            })
            .collect()
    }
}

/// WebP quality of the images a worker submits: lossy, as the public horde's workers send.
pub const WEBP_QUALITY: f32 = 95.0;

/// Encodes an image as lossy WebP (libwebp, built from its bundled source); an image with an
/// alpha channel (`strip_background`'s) keeps it, losslessly.
pub fn encode_webp(image: &DynamicImage) -> Result<Vec<u8>, Unrunnable> {
    let (width, height) = (image.width(), image.height());
    if width == 0 || height == 0 || width > 16383 || height > 16383 {
        return Err(Unrunnable(format!(
            "cannot encode a {width}x{height} image as WebP"
        )));
    }
    let encoder = match image {
        DynamicImage::ImageRgb8(rgb) => webp::Encoder::from_rgb(rgb.as_raw(), width, height),
        DynamicImage::ImageRgba8(rgba) => webp::Encoder::from_rgba(rgba.as_raw(), width, height),
        other => {
            return Err(Unrunnable(format!(
                "cannot encode a {:?} image as WebP",
                other.color()
            )))
        }
    };
    Ok(encoder.encode(WEBP_QUALITY).to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_round_trip_through_lossy_webp() {
        let image = image::RgbImage::from_fn(128, 96, |x, y| {
            image::Rgb([(x * 2) as u8, (y * 2) as u8, 128])
        });
        let bytes = encode_webp(&DynamicImage::ImageRgb8(image.clone())).unwrap();
        assert_eq!(&bytes[..4], b"RIFF");
        let decoded = image::load_from_memory_with_format(&bytes, image::ImageFormat::WebP)
            .unwrap()
            .to_rgb8();
        assert_eq!(decoded.dimensions(), (128, 96));
        let error: f64 = decoded
            .as_raw()
            .iter()
            .zip(image.as_raw())
            .map(|(a, b)| (f64::from(*a) - f64::from(*b)).abs())
            .sum::<f64>()
            / image.as_raw().len() as f64;
        assert!(
            error < 4.0,
            "quality 95 stays close to the original: mean error {error}"
        );
    }

    #[test]
    fn an_image_with_alpha_keeps_it_through_webp() {
        let image = image::RgbaImage::from_fn(64, 48, |x, y| {
            image::Rgba([x as u8 * 3, y as u8 * 4, 77, if x < 32 { 0 } else { 255 }])
        });
        let bytes = encode_webp(&DynamicImage::ImageRgba8(image)).unwrap();
        let decoded =
            image::load_from_memory_with_format(&bytes, image::ImageFormat::WebP).unwrap();
        assert!(decoded.color().has_alpha());
        let rgba = decoded.to_rgba8();
        assert_eq!(rgba.get_pixel(5, 5)[3], 0, "transparent half");
        assert_eq!(rgba.get_pixel(50, 5)[3], 255, "opaque half");
    }
}
