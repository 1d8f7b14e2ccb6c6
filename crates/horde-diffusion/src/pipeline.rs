//! Text-to-image: a loaded model and one generation call that runs the text encoders, the
//! sampler over the UNet with classifier-free guidance, and the VAE decoder.

use crate::checkpoint::{self, TensorIndex};
use crate::clip::TextTransformer;
use crate::config::*;
use crate::nn::timestep_embedding;
use crate::samplers::{self, SamplerKind};
use crate::sampling::{DiscreteSchedule, Noise, SeededNoise};
use crate::text::{TextConditioner, WeightedTokens};
use crate::unet::{Conditioning, UNet};
use crate::vae::Vae;
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

    fn sample(
        &self,
        job: &Generation,
        on_step: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor, Error> {
        let n = job.seeds.len();
        let positive = WeightedTokens::from_prompt(&job.prompt);
        let negative = WeightedTokens::from_prompt(&job.negative_prompt);
        let chunks = positive.chunks().max(negative.chunks());
        let cond = self
            .text
            .encode(&positive, chunks, job.clip_skip, self.dtype, &self.device)?;
        let uncond =
            self.text
                .encode(&negative, chunks, job.clip_skip, self.dtype, &self.device)?;
        let context = Tensor::cat(
            &[
                uncond.context.repeat((n, 1, 1))?,
                cond.context.repeat((n, 1, 1))?,
            ],
            0,
        )?;
        let vector =
            self.size_conditioning(job, uncond.pooled.as_ref(), cond.pooled.as_ref(), n)?;

        let scale = self.config.vae.downscale();
        let latent_shape = [
            self.config.unet.in_channels,
            job.height / scale,
            job.width / scale,
        ];
        let mut noise = SeededNoise::new(&job.seeds);
        let sigmas = self.schedule.sigmas_for(job.sampler, job.steps, job.karras);
        let x = (noise
            .sample(&latent_shape, &self.device)?
            .to_dtype(self.dtype)?
            * sigmas[0])?;
        let mut denoise = |x: &Tensor, sigma: f64| {
            self.denoise(x, sigma, &context, vector.as_ref(), job.cfg_scale)
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

    /// SDXL's vector conditioning: pooled text, then the original size, crop (0, 0) and target
    /// size ([`sdxl_vector`]).
    fn size_conditioning(
        &self,
        job: &Generation,
        uncond: Option<&Tensor>,
        cond: Option<&Tensor>,
        n: usize,
    ) -> Result<Option<Tensor>, Error> {
        let (Some(adm), Some(uncond), Some(cond)) =
            (self.config.unet.adm_in_channels, uncond, cond)
        else {
            return Ok(None);
        };
        let (h, w) = (job.height as f32, job.width as f32);
        let time_ids = Tensor::from_vec(vec![h, w, 0.0, 0.0, h, w], (1, 6), &self.device)?;
        let row = |pooled: &Tensor| -> Result<Tensor, Error> {
            Ok(sdxl_vector(pooled, &time_ids, adm)?
                .to_dtype(self.dtype)?
                .repeat((n, 1))?)
        };
        Ok(Some(Tensor::cat(&[row(uncond)?, row(cond)?], 0)?))
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
