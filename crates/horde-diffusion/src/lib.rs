//! The Stable Diffusion engine of the worker, on candle.
//!
//! What the worker uses is at the root: [`Model`] loads a checkpoint (reporting each
//! [`LoadStage`]) with [`LoadOptions`], and generates the images a [`Generation`] asks for, with
//! any [`SamplerKind`], from noise or from a [`SourceImage`] (image-to-image, inpainting,
//! outpainting) and with [`HiresFix`] (`Model::generate_with`); [`ModelConfig`] is what it read off the checkpoint; [`LatentDraw`] says
//! which latents an image encodes to for image-to-image (the VAE encoder's mean or a seeded
//! sample); [`dtype_named`] checks a configured dtype; every failure is an [`Error`]. A
//! [`ControlNet`] (loaded on its own, checked against the model) steers a job as its
//! [`Control`] (`Model::generate_controlled`). [`LoraFile`]s apply to the jobs that follow at
//! their strengths ([`LoraApplication`]) with `Model::set_loras` (merged into the weights; `lora`).
//!
//! Seven modules are public besides, each for a reason of its own:
//! * [`nn`], the layers other networks of the product build on: the post-processors of
//!   `horde-postprocess` (upscalers, face fixers, background removal) are built from the same
//!   convolutions, norms, linear layers and attention, on the same CPU kernels.
//! * [`tiny`] writes tiny random checkpoints of the real architectures: the tests of every
//!   crate, and the post-processors' own tiny checkpoints, are written with it.
//! * [`source`] has the public horde's rules for a source image and hires fix (resize, mask,
//!   first-pass size, second-pass steps), which the worker also needs to price and time a job.
//! * [`annotators`] computes the control maps whose annotator is plain image processing (canny,
//!   scribble), which the worker runs on a source and may return (`return_control_map`).
//! * [`pickled`] converts pickled PyTorch checkpoints (`.ckpt`) to `.safetensors`, which the
//!   worker does to downloaded ones and `horde model convert` by hand.
//! * [`prompt`] parses the prompt syntax (A1111 attention weights), which the `horde` crate's
//!   fuzz corpus exercises on its own.
//! * [`parts`] names the engine's parts one by one (networks, kernels, samplers, schedules) for
//!   this crate's benchmarks and its numeric tests against diffusers, which are built as crates
//!   of their own; nothing else should use it.
//!
//! Inside: `checkpoint` opens single-file (LDM layout) checkpoints, memory-mapped, and
//! `diffusers` folders; `config` reads the model's family and shapes off its tensors; `unet`,
//! `vae` and `clip` are the three networks, written with the LDM tensor names, and `controlnet`
//! the ControlNet, built from the UNet's blocks; `text` and
//! `prompt` turn a prompt (any length) into conditioning, with the textual-inversion
//! [`Embedding`]s a job names (`embeddings`); `sampling` has the noise schedules
//! and the seeded noise, `samplers` every AI Horde sampler as a plain function of a denoiser;
//! `pipeline` ties everything into one `generate` call; `kernels` has our own CPU kernels where
//! candle's are slow (fused attention, convolutions); on other devices and dtypes the networks
//! use candle's ops.

pub mod annotators;
mod checkpoint;
mod clip;
mod config;
mod controlnet;
mod diffusers;
mod embeddings;
mod kernels;
mod lora;
pub mod nn;
pub mod pickled;
mod pipeline;
pub mod prompt;
mod samplers;
mod sampling;
pub mod source;
mod text;
pub mod tiny;
mod unet;
mod vae;

pub use config::{Family, ModelConfig, Prediction};
pub use controlnet::{scale_map, Control, ControlNet, ControlNetConfig};
pub use embeddings::{embedding_names, Embedding};
pub use lora::{LoraApplication, LoraFile};
pub use pipeline::{dtype_named, Generation, LoadOptions, LoadStage, Model};
pub use samplers::SamplerKind;
pub use source::{HiresFix, SourceImage, SourceProcessing};
pub use vae::LatentDraw;

/// The dtype a CPU worker should run the networks in, and why (for its start-up log).
///
/// bf16 where the CPU multiplies bf16 itself (AVX512-BF16, checked at run time): the products
/// of the linear layers, attention and the stride-1 convolutions then run in bf16 with f32
/// accumulation, and an SD 1.5 step took less time than in f32 (BENCHMARKS.md, "Half
/// precision, round two"). f32 elsewhere: there bf16 is widened to f32 for every product, and
/// a step took longer than in f32 itself.
pub fn preferred_cpu_dtype() -> (candle_core::DType, &'static str) {
    if kernels::bf16_gemm::tiles_available() {
        (
            candle_core::DType::BF16,
            "bf16: this CPU has AMX tiles, and a step runs faster in bf16 (on the tiles) than \
             in f32",
        )
    } else if kernels::bf16_gemm::supported() {
        (
            candle_core::DType::BF16,
            "bf16: this CPU has AVX512-BF16, and a step runs faster in bf16 than in f32",
        )
    } else {
        (
            candle_core::DType::F32,
            "f32: this CPU has no AVX512-BF16, and bf16 widened to f32 runs slower than f32",
        )
    }
}

/// The engine's parts one by one, for this crate's benchmarks (`benches/`) and its numeric
/// tests (`tests/`), which measure or check a network, a kernel or a sampler alone and are
/// built as crates of their own. Not an API: the worker uses the crate's root, the
/// post-processors [`nn`](crate::nn).
pub mod parts {
    pub use crate::checkpoint::open as open_checkpoint;
    pub use crate::clip::TextTransformer;
    pub use crate::config::{
        SD1_CLIP_PREFIX, SD2_CLIP_PREFIX, SDXL_CLIP_G_PREFIX, SDXL_CLIP_L_PREFIX, UNET_PREFIX,
        VAE_PREFIX,
    };
    pub use crate::lora::{encode_text_now, unet_forward_now};
    pub use crate::pipeline::{
        model_from_var_builder, sample_controlled_latents, sample_latents, sdxl_vector,
    };
    pub use crate::sampling::{DiscreteSchedule, Noise, SeededNoise};
    pub use crate::text::{TextConditioner, WeightedTokens};
    pub use crate::unet::{Conditioning, ControlResiduals, UNet};
    pub use crate::vae::{encode_images, pixels_of, Encoder, LatentDistribution, Vae, BAND_PIXELS};

    /// The samplers as plain functions of a denoiser.
    pub mod samplers {
        pub use crate::samplers::{dpm_adaptive, dpm_fast, run, AdaptiveOptions};
    }

    /// The CPU kernels the benchmarks time alone.
    pub mod kernels {
        pub use crate::kernels::attention::fused_attention;
        pub use crate::kernels::bf16_gemm::{
            available as bf16_products, set_amx_enabled as use_amx_tiles,
            set_enabled as use_bf16_products,
        };
        pub use crate::kernels::conv::{
            conv2d_1x1, conv2d_bf16, conv2d_stride1, conv2d_stride2, keep_rearranged_weights,
        };
        pub use crate::kernels::im2col::conv2d as conv2d_im2col;
        pub use crate::kernels::linear::linear;
        pub use crate::kernels::winograd::conv2d_3x3;
        pub use crate::kernels::winograd4::conv2d_3x3 as conv2d_3x3_f4;
    }
}

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file is missing, truncated or not safetensors.
    #[error("{}: cannot read checkpoint: {reason}", path.display())]
    Unreadable { path: PathBuf, reason: String },
    /// The file is safetensors but not laid out as a Stable Diffusion checkpoint.
    #[error("{}: not a Stable Diffusion checkpoint we can load: {reason}", path.display())]
    Layout { path: PathBuf, reason: String },
    /// A model of an architecture this engine does not run.
    #[error("{}: unsupported architecture: {reason}", path.display())]
    Unsupported { path: PathBuf, reason: String },
    /// A textual-inversion embedding that cannot be read, or was made for another text encoder.
    #[error("{}: textual inversion embedding: {reason}", path.display())]
    Embedding { path: PathBuf, reason: String },
    /// A LoRA file that is unreadable, of a format or adapter kind we do not apply, or of
    /// another model family than the model it is applied to.
    #[error("{}: cannot apply LoRA: {reason}", path.display())]
    Lora { path: PathBuf, reason: String },
    /// A pickled PyTorch checkpoint that cannot be converted to safetensors (`pickled`), or
    /// a converted file that cannot be written.
    #[error("{}: cannot convert to safetensors: {reason}", path.display())]
    Convert { path: PathBuf, reason: String },
    /// A device or dtype that is unknown, or that this build cannot use.
    #[error("{0}")]
    Device(String),
    /// A generation the model cannot do (size, steps, …).
    #[error("cannot generate: {0}")]
    InvalidRequest(String),
    #[error("tensor computation failed: {0}")]
    Tensor(#[from] candle_core::Error),
}
