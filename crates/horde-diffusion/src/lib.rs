//! The Stable Diffusion engine of the worker, on candle.
//!
//! * [`checkpoint`] opens single-file (LDM layout) checkpoints, memory-mapped, and
//!   [`config`] reads the model's family and shapes off its tensors.
//! * [`unet`], [`vae`] and [`clip`] are the three networks, written with the LDM tensor names.
//! * [`text`] and [`prompt`] turn a prompt (A1111 attention syntax, any length) into conditioning.
//! * [`sampling`] has the noise schedules and the seeded noise, [`samplers`] every AI Horde
//!   sampler as a plain function of a denoiser; [`pipeline`] ties everything into one `generate` call.
//! * [`tiny`] writes tiny random checkpoints of the real architectures for tests.
//! * [`kernels`] has our own CPU kernels where candle's are slow (fused attention); on other
//!   devices and dtypes the networks use candle's ops.

pub mod checkpoint;
pub mod clip;
pub mod config;
pub mod diffusers;
pub mod kernels;
pub mod nn;
pub mod pipeline;
pub mod prompt;
pub mod samplers;
pub mod sampling;
pub mod text;
pub mod tiny;
pub mod unet;
pub mod vae;

pub use config::{Family, ModelConfig, Prediction};
pub use pipeline::{Generation, LoadOptions, LoadStage, Model};
pub use samplers::SamplerKind;

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
    /// A device or dtype that is unknown, or that this build cannot use.
    #[error("{0}")]
    Device(String),
    /// A generation the model cannot do (size, steps, …).
    #[error("cannot generate: {0}")]
    InvalidRequest(String),
    #[error("tensor computation failed: {0}")]
    Tensor(#[from] candle_core::Error),
}
