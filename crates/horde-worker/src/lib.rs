//! The worker daemon a GPU owner runs (`horde worker`): it advertises its models and limits,
//! pops jobs from a horde (ours or the public AI Horde, through `horde-client`), runs them on a
//! [`backend::Backend`] — the built-in candle engine of `horde-diffusion` — and submits the
//! images, surviving network faults ([`daemon`]). A job with a source image has it fetched and
//! read first ([`source`]). Text jobs are served by [`text`]: GGUF models on the built-in
//! `horde-text` engine, or forwarded to an inference server the owner runs. Alchemy forms
//! (interrogation, captions, NSFW verdicts, post-processors on an image) are served by
//! [`alchemy`].

pub mod alchemy;
pub mod backend;
pub mod censor;
pub mod config;
pub mod control;
pub mod daemon;
pub mod hardware;
pub mod job;
pub mod library;
pub mod models;
pub mod networks;
pub mod payload;
pub mod postprocess;
pub mod retry;
pub mod source;
pub mod text;

pub use backend::{Backend, DiffusionBackend};
pub use config::WorkerConfig;
pub use daemon::{RunSummary, Worker};
