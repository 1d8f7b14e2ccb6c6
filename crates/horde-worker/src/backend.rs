//! Backends run jobs. The built-in one is the candle engine over local checkpoints; a bridge to
//! an inference server the owner already runs implements the same trait.

use crate::job::{Job, Unrunnable};
use crate::postprocess::PostProcessors;
use horde_diffusion::{LoadOptions, LoadStage, Model, SourceImage};
use image::DynamicImage;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

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
    /// Runs a job, from `source` when the job has one (fetched and decoded); returns one WebP
    /// per job id, in order. `on_step(done, total)` reports progress.
    fn run(
        &self,
        job: &Job,
        source: Option<&SourceImage>,
        on_step: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<Vec<u8>>, Unrunnable>;
}

/// The candle Stable Diffusion engine with its loaded checkpoints.
pub struct DiffusionBackend {
    models: BTreeMap<String, Arc<Model>>,
    post: PostProcessors,
}

/// A model that did not load, and why.
#[derive(Debug)]
pub struct LoadFailure {
    pub model: String,
    pub path: PathBuf,
    pub error: horde_diffusion::Error,
}

impl DiffusionBackend {
    /// Loads every checkpoint with `options` (device and dtype); one that fails is reported and
    /// left out, the others are served.
    pub fn load(
        checkpoints: &BTreeMap<String, PathBuf>,
        options: &LoadOptions,
        mut progress: impl FnMut(&str, LoadStage),
    ) -> (Self, Vec<LoadFailure>) {
        let mut models = BTreeMap::new();
        let mut failures = Vec::new();
        for (name, path) in checkpoints {
            match Model::load(path, options, &mut |stage| progress(name, stage)) {
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
        let post = PostProcessors::default();
        (DiffusionBackend { models, post }, failures)
    }

    /// These post-processors run on every image a job asks them for.
    pub fn with_post_processors(mut self, post: PostProcessors) -> Self {
        self.post = post;
        self
    }
}

impl Backend for DiffusionBackend {
    fn models(&self) -> Vec<String> {
        self.models.keys().cloned().collect()
    }

    fn post_processors(&self) -> Vec<String> {
        self.post.names()
    }

    /// Every checkpoint runs them: inpainting UNets by their masked-image input, the others by
    /// latent masking.
    fn runs_sources(&self) -> bool {
        true
    }

    fn run(
        &self,
        job: &Job,
        source: Option<&SourceImage>,
        on_step: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<Vec<u8>>, Unrunnable> {
        let model = self.models.get(&job.model).ok_or_else(|| {
            Unrunnable(format!("model {} is not loaded on this worker", job.model))
        })?;
        let images = model
            .generate_with(&job.generation, source, job.hires_fix.as_ref(), on_step)
            .map_err(|e| Unrunnable(e.to_string()))?;
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
