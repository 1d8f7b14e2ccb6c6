//! LoRAs: low-rank (and LyCORIS LoHa) changes to the UNet and the text encoders, applied to a
//! loaded model between jobs without reloading it.
//!
//! [`LoraFile::open`] reads a file in any of the formats people share (`lora::parse`: kohya,
//! LyCORIS LoCon and LoHa, diffusers/PEFT and diffusers' older forms) into one adapter per
//! module. [`Model::set_loras`](crate::Model::set_loras) maps each module to the tensor it
//! modifies in this model (`lora::targets`: SD 1.x, SD 2.x with OpenCLIP's fused q/k/v, SDXL's
//! two encoders) and **merges**: every modified tensor becomes `base + Σ strength · scale · Δ`
//! (computed in f32, stored in the model's dtype), and the UNet and text encoders are rebuilt
//! around the merged tensors and the unmodified base ones (shared, not copied). The base
//! tensors are kept as loaded, so the next set merges from them again and the empty set runs the
//! base networks themselves: nothing is ever subtracted, and removing every LoRA gives the base
//! model's outputs bit for bit.
//!
//! Why merging rather than a low-rank branch run at every layer: a merged step costs exactly
//! what a step without LoRAs costs, where the branch adds two products per modified layer per
//! step; switching sets costs the rank-r products and one pass over the modified tensors, far
//! less than one step (ARCHITECTURE.md has the measurements). The price is memory: while a set
//! is applied, each tensor it modifies exists twice (base and merged), and in bf16 so do their
//! weights kept rearranged for the kernels (`kernels::kept`; the layers a set leaves alone share
//! the base ones', made once).
//!
//! A file of another family than the model (modules that map to nothing, shapes that do not
//! fit), a corrupt file, or an adapter kind this engine does not apply (LoKr, DoRA, …) is an
//! [`Error::Lora`] naming the file and why.

mod merge;
mod parse;
mod targets;

use crate::Error;
use candle_core::Tensor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub(crate) use merge::{recording, Active, Loras};

/// The network of the model a LoRA module belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Network {
    UNet,
    /// The text encoder at this index (SDXL: 0 is CLIP-L, 1 OpenCLIP-G).
    Text(usize),
}

/// The weights of one module's adapter and the factor its product is scaled by (`alpha / rank`,
/// or 1 without an alpha).
#[derive(Debug, Clone)]
pub(crate) enum Weights {
    /// `Δ = scale · up · [mid] · down`: kohya and PEFT LoRA, LyCORIS LoCon (with `mid`, its
    /// Tucker core).
    LowRank {
        down: Tensor,
        up: Tensor,
        mid: Option<Tensor>,
        scale: f64,
    },
    /// LyCORIS LoHa: `Δ = scale · (w1a · w1b) ⊙ (w2a · w2b)`.
    Hadamard {
        w1a: Tensor,
        w1b: Tensor,
        w2a: Tensor,
        w2b: Tensor,
        scale: f64,
    },
}

/// The adapter of one module.
#[derive(Debug, Clone)]
pub(crate) struct Adapter {
    pub network: Network,
    /// The module path with `_` for `.` (`lora::parse`).
    pub module: String,
    /// One of its keys in the file, for messages.
    pub key: String,
    pub weights: Weights,
}

/// A LoRA file, read and parsed (its tensors in memory, on the CPU); apply it with
/// [`Model::set_loras`](crate::Model::set_loras). Which model it fits is only known then.
#[derive(Debug)]
pub struct LoraFile {
    path: PathBuf,
    adapters: Vec<Adapter>,
    /// Keys of no format we know (refused unless few, see `merge`).
    unknown: Vec<String>,
}

impl LoraFile {
    /// Reads and parses `path` (`.safetensors`).
    pub fn open(path: &Path) -> Result<LoraFile, Error> {
        let fail = |reason: String| lora_error(path, reason);
        let tensors = parse::load(path).map_err(fail)?;
        let peft = parse::peft_metadata(path).map_err(fail)?;
        let (adapters, unknown) = parse::adapters(tensors, &peft).map_err(fail)?;
        if adapters.is_empty() {
            let example = unknown
                .first()
                .map_or(String::new(), |k| format!(" (e.g. `{k}`)"));
            return Err(fail(format!(
                "no LoRA, LoCon or LoHa weights among its {} tensors{example}",
                unknown.len()
            )));
        }
        Ok(LoraFile {
            path: path.into(),
            adapters,
            unknown,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many modules it changes (in any network).
    pub fn modules(&self) -> usize {
        self.adapters.len()
    }
}

/// One LoRA of a job: the file and its strengths on the UNet (the horde's `model`) and on the
/// text encoders (`clip`).
#[derive(Debug, Clone)]
pub struct LoraApplication {
    pub file: Arc<LoraFile>,
    pub model_strength: f64,
    pub clip_strength: f64,
}

/// The model's UNet as it runs now (with its LoRA set), on given inputs: for the numeric tests
/// against diffusers (`parts`); the worker generates with [`Model::generate_with`](crate::Model).
pub fn unet_forward_now(
    model: &crate::Model,
    xs: &Tensor,
    timesteps: &Tensor,
    cond: &crate::unet::Conditioning<'_>,
) -> Result<Tensor, Error> {
    Ok(model.unet_now().forward(xs, timesteps, cond)?)
}

/// The model's text conditioning as it is now (with its LoRA set), for the numeric tests
/// (`parts`; an f32 model on the CPU): the context `[1, 77·chunks, C]` and SDXL's pooled
/// embedding.
pub fn encode_text_now(
    model: &crate::Model,
    tokens: &crate::text::WeightedTokens,
    clip_skip: usize,
) -> Result<(Tensor, Option<Tensor>), Error> {
    let encoded = model.text_now()?.encode(
        tokens,
        tokens.chunks(),
        clip_skip,
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )?;
    Ok((encoded.context, encoded.pooled))
}

pub(crate) fn lora_error(path: &Path, reason: String) -> Error {
    Error::Lora {
        path: path.into(),
        reason,
    }
}

#[cfg(test)]
mod tests;
