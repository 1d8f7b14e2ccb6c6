//! Text-to-image: a loaded model and one generation call that runs the text encoders, the
//! sampler over the UNet with classifier-free guidance, and the VAE decoder.

use crate::checkpoint::{self, TensorIndex};
use crate::clip::TextTransformer;
use crate::config::*;
use crate::nn::timestep_embedding;
use crate::samplers::{self, SamplerKind};
use crate::sampling::{DiscreteSchedule, Noise, SeededNoise};
use crate::text::{Encoded, TextConditioner, WeightedTokens};
use crate::unet::{Conditioning, UNet};
use crate::vae::{LatentDraw, Vae};
use crate::Error;
use candle_core::{DType, Device, Tensor};
use image::RgbImage;
use std::path::Path;

/// How to load a checkpoint.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    pub dtype: DType,
    /// Overrides the family's default prediction type (SD 2.x: v; others: epsilon).
    pub prediction: Option<Prediction>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            device: Device::Cpu,
            dtype: DType::F32,
            prediction: None,
        }
    }
}

impl LoadOptions {
    /// The options for a device named `cpu`, `cuda` or `cuda:N` and a dtype named `f32`,
    /// `f16` or `bf16`. A CUDA device needs a build with the `cuda` feature (README.md).
    pub fn named(device: &str, dtype: &str) -> Result<LoadOptions, Error> {
        Ok(LoadOptions {
            device: device_named(device)?,
            dtype: dtype_named(dtype)?,
            prediction: None,
        })
    }
}

/// `cpu`, `cuda` (the first GPU) or `cuda:N`.
pub(crate) fn device_named(name: &str) -> Result<Device, Error> {
    let ordinal = match name.trim() {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        other => other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| {
                Error::Device(format!(
                    "unknown device {other:?}: expected cpu, cuda or cuda:N"
                ))
            })?,
    };
    if !candle_core::utils::cuda_is_available() {
        return Err(Error::Device(format!(
            "device {name:?}: this build has no CUDA support; build with \
             `cargo build --release --features cuda` (README.md, \"A GPU worker\")"
        )));
    }
    Ok(Device::new_cuda(ordinal)?)
}

/// `f32`, `f16` or `bf16`: the dtype weights are held in (our CPU kernels compute in f32).
pub fn dtype_named(name: &str) -> Result<DType, Error> {
    match name.trim() {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        other => Err(Error::Device(format!(
            "unknown dtype {other:?}: expected f32, f16 or bf16"
        ))),
    }
}

/// Loading stages, for progress reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadStage {
    Index,
    TextEncoders,
    UNet,
    Vae,
}

/// One text-to-image job: up to `seeds.len()` images in one batch.
#[derive(Debug, Clone)]
pub struct Generation {
    /// The prompt of every image, unless `prompts` gives each its own.
    pub prompt: String,
    pub negative_prompt: String,
    pub width: usize,
    pub height: usize,
    pub steps: usize,
    pub cfg_scale: f64,
    pub sampler: SamplerKind,
    pub karras: bool,
    pub clip_skip: usize,
    /// Seamless tiling: every convolution pads circularly, so the image repeats without seams.
    pub tiling: bool,
    /// One seed per image.
    pub seeds: Vec<u64>,
    /// Each image's own (prompt, negative prompt), one per seed, in place of `prompt` and
    /// `negative_prompt` (a batch of prompts: different requests made in one pass); empty for a
    /// batch of one prompt. Every image is the one its prompt and seed make alone.
    pub prompts: Vec<(String, String)>,
}

impl Generation {
    /// The (prompt, negative prompt) of each image.
    fn image_prompts(&self) -> Result<Vec<(&str, &str)>, Error> {
        if self.prompts.is_empty() {
            let one = (self.prompt.as_str(), self.negative_prompt.as_str());
            return Ok(vec![one; self.seeds.len()]);
        }
        if self.prompts.len() != self.seeds.len() {
            return Err(Error::InvalidRequest(format!(
                "{} prompts for {} seeds: a batch of prompts needs one per image",
                self.prompts.len(),
                self.seeds.len()
            )));
        }
        Ok(self
            .prompts
            .iter()
            .map(|(p, n)| (p.as_str(), n.as_str()))
            .collect())
    }
}

/// The tokens of one image's prompt and negative prompt, and the 77-token chunks both are
/// padded to.
struct ImageTokens {
    positive: WeightedTokens,
    negative: WeightedTokens,
    chunks: usize,
}

/// The conditioning of a pass: `[uncond…; cond…]` contexts and, for SDXL, the pooled text of
/// each, in the same order.
struct PassConditioning {
    context: Tensor,
    uncond_pooled: Vec<Option<Tensor>>,
    cond_pooled: Vec<Option<Tensor>>,
}

/// A Stable Diffusion model ready to generate.
pub struct Model {
    config: ModelConfig,
    unet: UNet,
    vae: Vae,
    text: TextConditioner,
    schedule: DiscreteSchedule,
    device: Device,
    dtype: DType,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("config", &self.config)
            .finish()
    }
}

impl Model {
    /// Loads a single-file checkpoint or a diffusers folder, reporting each stage.
    pub fn load(
        path: &Path,
        options: &LoadOptions,
        progress: &mut dyn FnMut(LoadStage),
    ) -> Result<Model, Error> {
        progress(LoadStage::Index);
        let index = checkpoint::open(path)?;
        let config = ModelConfig::infer(&index, options.prediction)?;
        Self::from_index(&index, config, options, progress)
    }

    pub fn from_index(
        index: &TensorIndex,
        config: ModelConfig,
        options: &LoadOptions,
        progress: &mut dyn FnMut(LoadStage),
    ) -> Result<Model, Error> {
        let vb = index.var_builder(options.dtype, &options.device);
        progress(LoadStage::TextEncoders);
        let prefixes: &[&str] = match config.family {
            Family::Sd1 => &[SD1_CLIP_PREFIX],
            Family::Sd2 => &[SD2_CLIP_PREFIX],
            Family::Sdxl => &[SDXL_CLIP_L_PREFIX, SDXL_CLIP_G_PREFIX],
        };
        let encoders = config
            .text_encoders
            .iter()
            .zip(prefixes)
            .map(|(c, prefix)| TextTransformer::new(c, vb.pp(prefix.trim_end_matches('.'))))
            .collect::<candle_core::Result<Vec<_>>>()
            .map_err(|e| weights_error(index, e))?;
        if config.family == Family::Sdxl
            && encoders.iter().map(|e| e.config().width).sum::<usize>() != config.unet.context_dim
        {
            return Err(index.layout_error(
                "the two text encoders' widths do not add up to the UNet's context width",
            ));
        }
        progress(LoadStage::UNet);
        let unet = UNet::new(
            &config.unet,
            config.family,
            vb.pp(UNET_PREFIX.trim_end_matches('.')),
        )
        .map_err(|e| weights_error(index, e))?;
        progress(LoadStage::Vae);
        let vae = Vae::new(&config.vae, vb.pp(VAE_PREFIX.trim_end_matches('.')))
            .map_err(|e| weights_error(index, e))?;
        Ok(Model {
            text: TextConditioner::new(config.family, encoders),
            config,
            unet,
            vae,
            schedule: DiscreteSchedule::default(),
            device: options.device.clone(),
            dtype: options.dtype,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Images to the scaled latents image-to-image starts from (`vae::encode_images`): the
    /// latent distribution's mean, or a sample of it with each image's seed.
    pub fn encode_images(&self, images: &[RgbImage], draw: &LatentDraw) -> Result<Tensor, Error> {
        crate::vae::encode_images(
            &self.vae.encoder,
            self.config.family,
            images,
            draw,
            &self.device,
            self.dtype,
        )
    }

    /// Runs one job; `on_step(done, total)` is called after every sampler step.
    pub fn generate(
        &self,
        job: &Generation,
        on_step: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<RgbImage>, Error> {
        let scale = self.config.vae.downscale();
        if !job.width.is_multiple_of(scale)
            || !job.height.is_multiple_of(scale)
            || job.width == 0
            || job.height == 0
        {
            return Err(Error::InvalidRequest(format!(
                "{}×{} is not a multiple of {scale}",
                job.width, job.height
            )));
        }
        if job.seeds.is_empty() || job.steps == 0 {
            return Err(Error::InvalidRequest(
                "a generation needs at least one seed and one step".into(),
            ));
        }
        crate::nn::with_tiling(job.tiling, || {
            let latents = self.sample(job, on_step)?;
            self.decode(&latents)
        })
    }

    /// The latents of every image. Images whose prompts need the same number of 77-token
    /// chunks share one UNet batch; a batch of prompts of different lengths runs one batch per
    /// length (an image's context is never padded beyond its own prompt, so it stays the image
    /// its prompt and seed make alone).
    fn sample(
        &self,
        job: &Generation,
        on_step: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor, Error> {
        let tokens: Vec<ImageTokens> = job
            .image_prompts()?
            .into_iter()
            .map(|(positive, negative)| {
                let positive = WeightedTokens::from_prompt(positive);
                let negative = WeightedTokens::from_prompt(negative);
                let chunks = positive.chunks().max(negative.chunks());
                ImageTokens {
                    positive,
                    negative,
                    chunks,
                }
            })
            .collect();
        let mut groups: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
        for (i, t) in tokens.iter().enumerate() {
            groups.entry(t.chunks).or_default().push(i);
        }
        if groups.len() == 1 {
            let all: Vec<usize> = (0..tokens.len()).collect();
            return self.sample_images(job, &tokens, &all, on_step);
        }
        let mut latents: Vec<Option<Tensor>> = vec![None; tokens.len()];
        for indices in groups.values() {
            let group = self.sample_images(job, &tokens, indices, on_step)?;
            for (row, &i) in indices.iter().enumerate() {
                latents[i] = Some(group.narrow(0, row, 1)?);
            }
        }
        let latents: Vec<Tensor> = latents.into_iter().flatten().collect();
        Ok(Tensor::cat(&latents, 0)?)
    }

    /// The latents of the images `indices` of `job`, whose prompts have the same chunk count,
    /// in one batch: each with its own conditioning and seed.
    fn sample_images(
        &self,
        job: &Generation,
        tokens: &[ImageTokens],
        indices: &[usize],
        on_step: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor, Error> {
        let conditioning = self.pass_conditioning(job, tokens, indices)?;
        let vector =
            self.size_conditioning(job, &conditioning.uncond_pooled, &conditioning.cond_pooled)?;
        let context = &conditioning.context;
        let scale = self.config.vae.downscale();
        let latent_shape = [
            self.config.unet.in_channels,
            job.height / scale,
            job.width / scale,
        ];
        let seeds: Vec<u64> = indices.iter().map(|&i| job.seeds[i]).collect();
        let mut noise = SeededNoise::new(&seeds);
        let sigmas = self.schedule.sigmas_for(job.sampler, job.steps, job.karras);
        let x = (noise
            .sample(&latent_shape, &self.device)?
            .to_dtype(self.dtype)?
            * sigmas[0])?;
        let mut denoise = |x: &Tensor, sigma: f64| {
            self.denoise(x, sigma, context, vector.as_ref(), job.cfg_scale)
        };
        let mut callback = |done: usize, total: usize, _: &Tensor| on_step(done, total);
        let mut x = samplers::run(
            job.sampler,
            &mut denoise,
            x,
            &sigmas,
            &mut noise as &mut dyn Noise,
            &mut callback,
        )?;
        if job.sampler == SamplerKind::Ddim {
            // DDIM ends at the smallest training σ and returns diffusers' scaled sample there.
            let last = sigmas[sigmas.len() - 1];
            x = (x / (1.0 + last * last).sqrt())?;
        }
        Ok(x)
    }

    /// The text conditioning of images `indices`: `[uncond of each; cond of each]`, each
    /// distinct prompt encoded once (a batch of one prompt encodes it once for every image).
    fn pass_conditioning(
        &self,
        job: &Generation,
        tokens: &[ImageTokens],
        indices: &[usize],
    ) -> Result<PassConditioning, Error> {
        let mut encoded = Vec::new();
        let mut uncond = Vec::with_capacity(indices.len());
        let mut cond = Vec::with_capacity(indices.len());
        for &i in indices {
            let t = &tokens[i];
            uncond.push(self.encode_once(job, &t.negative, t.chunks, &mut encoded)?);
            cond.push(self.encode_once(job, &t.positive, t.chunks, &mut encoded)?);
        }
        let contexts: Vec<Tensor> = uncond
            .iter()
            .chain(&cond)
            .map(|&at| encoded[at].1.context.clone())
            .collect();
        let pooled = |at: &[usize]| -> Vec<Option<Tensor>> {
            at.iter().map(|&k| encoded[k].1.pooled.clone()).collect()
        };
        Ok(PassConditioning {
            context: Tensor::cat(&contexts, 0)?,
            uncond_pooled: pooled(&uncond),
            cond_pooled: pooled(&cond),
        })
    }

    /// Where `tokens` is encoded in `encoded`, encoding it there the first time.
    fn encode_once<'a>(
        &self,
        job: &Generation,
        tokens: &'a WeightedTokens,
        chunks: usize,
        encoded: &mut Vec<(&'a WeightedTokens, Encoded)>,
    ) -> Result<usize, Error> {
        if let Some(at) = encoded.iter().position(|(seen, _)| *seen == tokens) {
            return Ok(at);
        }
        let e = self
            .text
            .encode(tokens, chunks, job.clip_skip, self.dtype, &self.device)?;
        encoded.push((tokens, e));
        Ok(encoded.len() - 1)
    }

    /// SDXL's vector conditioning: pooled text, then the original size, crop (0, 0) and target
    /// size ([`sdxl_vector`]).
    fn size_conditioning(
        &self,
        job: &Generation,
        uncond: &[Option<Tensor>],
        cond: &[Option<Tensor>],
    ) -> Result<Option<Tensor>, Error> {
        let Some(adm) = self.config.unet.adm_in_channels else {
            return Ok(None);
        };
        let (h, w) = (job.height as f32, job.width as f32);
        let time_ids = Tensor::from_vec(vec![h, w, 0.0, 0.0, h, w], (1, 6), &self.device)?;
        let mut rows = Vec::with_capacity(uncond.len() + cond.len());
        for pooled in uncond.iter().chain(cond) {
            let Some(pooled) = pooled else {
                return Ok(None);
            };
            rows.push(sdxl_vector(pooled, &time_ids, adm)?.to_dtype(self.dtype)?);
        }
        Ok(Some(Tensor::cat(&rows, 0)?))
    }

    /// `D(x, σ)` with classifier-free guidance: one UNet pass over [uncond; cond].
    fn denoise(
        &self,
        x: &Tensor,
        sigma: f64,
        context: &Tensor,
        vector: Option<&Tensor>,
        cfg_scale: f64,
    ) -> candle_core::Result<Tensor> {
        let n = x.dim(0)?;
        let c_in = 1.0 / (sigma * sigma + 1.0).sqrt();
        let input = (Tensor::cat(&[x, x], 0)? * c_in)?;
        let t = self.schedule.sigma_to_t(sigma) as f32;
        let timesteps = Tensor::from_vec(vec![t; 2 * n], 2 * n, &self.device)?;
        let out = self
            .unet
            .forward(&input, &timesteps, &Conditioning { context, vector })?;
        let (uncond, cond) = (out.narrow(0, 0, n)?, out.narrow(0, n, n)?);
        let guided = (&uncond + ((cond - &uncond)? * cfg_scale)?)?;
        match self.config.prediction {
            Prediction::Epsilon => x - (guided * sigma)?,
            Prediction::V => {
                let c_skip = 1.0 / (sigma * sigma + 1.0);
                let c_out = -sigma / (sigma * sigma + 1.0).sqrt();
                (x * c_skip)? + (guided * c_out)?
            }
        }
    }

    fn decode(&self, latents: &Tensor) -> Result<Vec<RgbImage>, Error> {
        let latents = (latents / self.config.family.latent_scale())?;
        let pixels = self.vae.decoder.decode(&latents)?;
        let pixels = ((pixels.to_dtype(DType::F32)?.clamp(-1f32, 1f32)? + 1.0)? * 127.5)?
            .round()?
            .to_dtype(DType::U8)?;
        let (n, _, h, w) = pixels.dims4()?;
        (0..n)
            .map(|i| {
                let data = pixels
                    .get(i)?
                    .permute((1, 2, 0))?
                    .flatten_all()?
                    .to_vec1::<u8>()?;
                RgbImage::from_raw(w as u32, h as u32, data)
                    .ok_or_else(|| Error::InvalidRequest("decoded image has the wrong size".into()))
            })
            .collect()
    }
}

/// SDXL's vector conditioning (the UNet's `label_emb` input): the pooled text `[batch, P]`, then
/// each of the six `time_ids` `[batch, 6]` (original height and width, the crop's top and left,
/// target height and width, as diffusers' pipeline orders them) as a sinusoidal embedding of
/// `(adm_in_channels − P) / 6` channels.
pub fn sdxl_vector(
    pooled: &Tensor,
    time_ids: &Tensor,
    adm_in_channels: usize,
) -> candle_core::Result<Tensor> {
    let (batch, pooled_dim) = pooled.dims2()?;
    let per_value = adm_in_channels.saturating_sub(pooled_dim) / 6;
    let sizes = timestep_embedding(&time_ids.flatten_all()?, per_value)?
        .reshape((batch, 6 * per_value))?
        .to_dtype(pooled.dtype())?;
    Tensor::cat(&[pooled, &sizes], 1)
}

fn weights_error(index: &TensorIndex, e: candle_core::Error) -> Error {
    Error::Layout {
        path: index.path().into(),
        reason: e.to_string(),
    }
}
