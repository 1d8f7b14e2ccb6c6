//! The built-in text engine of the horde worker: GGUF llama-family models ([`llama::TextModel`];
//! llama — Llama 1/2/3, Mistral — and qwen2) on candle's quantized kernels, with the transformer
//! between the matrix products written here (`transformer`) and AVX-512 kernels for the
//! single-row Q4_K/Q6_K products of a decode step (`kquants`); the tokenizers of their GGUF
//! vocabularies ([`tokenizer`]: SentencePiece, and byte-level BPE with the Llama 3 or Qwen2
//! pre-tokenizer), their header ([`gguf`]) and the horde's (KoboldAI's) samplers ([`sampling`]).
//!
//! Text jobs arrive as a Kobold prompt and sampler settings; the worker continues the prompt
//! (no chat template: the Kobold API is plain continuation) and submits the whole text, so
//! nothing here streams to the coordinator; the tokens/s go to the log.

use std::path::PathBuf;

pub mod gguf;
mod kquants;
pub mod llama;
pub mod sampling;
pub mod tokenizer;
mod transformer;

pub use llama::{Generation, StopReason, TextModel};
pub use sampling::{SamplerKind, SamplerParams};

/// Why a model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a GGUF model candle can read: {source}", path.display())]
    Gguf {
        path: PathBuf,
        source: candle_core::Error,
    },
    #[error("{}: GGUF field {field}: {reason}", path.display())]
    Metadata {
        path: PathBuf,
        field: String,
        reason: String,
    },
    #[error("max_length {max_length} leaves no room for a prompt in the model's context of {context_length} tokens")]
    TooLong {
        max_length: usize,
        context_length: usize,
    },
    #[error("the prompt has no tokens")]
    EmptyPrompt,
    #[error("the model failed: {0}")]
    Candle(#[from] candle_core::Error),
}
