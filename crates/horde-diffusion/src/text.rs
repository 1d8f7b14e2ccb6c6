//! From prompt text to the UNet's conditioning: A1111 attention weights, chunks of 75 tokens
//! for prompts longer than CLIP's 77 positions, each family's choice of layer, and SDXL's
//! pooled embedding.

use crate::clip::TextTransformer;
use crate::config::{ClipLayout, Family};
use crate::prompt;
use candle_core::{DType, Device, Result, Tensor, D};
use instant_clip_tokenizer::Tokenizer;
use std::sync::OnceLock;

/// Tokens per chunk between the start and end tokens.
const CHUNK: usize = 75;
const START: u32 = 49406;
const END: u32 = 49407;

fn tokenizer() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(Tokenizer::new)
}

/// A prompt as token ids with a weight per token, not yet chunked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WeightedTokens {
    pub ids: Vec<u32>,
    pub weights: Vec<f32>,
}

impl WeightedTokens {
    pub fn from_prompt(text: &str) -> Self {
        let mut out = WeightedTokens::default();
        let mut buffer = Vec::new();
        for fragment in prompt::parse(text) {
            buffer.clear();
            tokenizer().encode(&fragment.text, &mut buffer);
            for token in &buffer {
                out.ids.push(u32::from(token.to_u16()));
                out.weights.push(fragment.weight);
            }
        }
        out
    }

    /// How many 77-token chunks the prompt needs (at least one).
    pub fn chunks(&self) -> usize {
        self.ids.len().div_ceil(CHUNK).max(1)
    }

    /// Chunk `i` as 77 ids (start, 75 tokens padded with `pad`, end) and their weights.
    fn chunk(&self, i: usize, pad: u32) -> (Vec<u32>, Vec<f32>) {
        let from = (i * CHUNK).min(self.ids.len());
        let to = ((i + 1) * CHUNK).min(self.ids.len());
        let mut ids = vec![START];
        let mut weights = vec![1.0];
        ids.extend_from_slice(&self.ids[from..to]);
        weights.extend_from_slice(&self.weights[from..to]);
        // CLIP-L pads with the end token; OpenCLIP with 0 after the first end token.
        ids.push(END);
        weights.push(1.0);
        while ids.len() < CHUNK + 2 {
            ids.push(pad);
            weights.push(1.0);
        }
        (ids, weights)
    }
}

/// Which hidden state of a text encoder conditions the UNet.
#[derive(Debug, Clone, Copy)]
struct LayerChoice {
    /// Layers from the end to skip (0: the last layer).
    skip: usize,
    final_norm: bool,
}

/// The text encoders of a model and how the family combines them.
pub struct TextConditioner {
    family: Family,
    encoders: Vec<TextTransformer>,
}

/// The conditioning of one prompt: `[1, 77·chunks, context]`, and SDXL's pooled `[1, P]`.
pub struct Encoded {
    pub context: Tensor,
    pub pooled: Option<Tensor>,
}

impl TextConditioner {
    pub fn new(family: Family, encoders: Vec<TextTransformer>) -> Self {
        TextConditioner { family, encoders }
    }

    fn choice(&self, clip_skip: usize) -> LayerChoice {
        let extra = clip_skip.max(1) - 1;
        match self.family {
            Family::Sd1 => LayerChoice {
                skip: extra,
                final_norm: true,
            },
            Family::Sd2 => LayerChoice {
                skip: 1 + extra,
                final_norm: true,
            },
            Family::Sdxl => LayerChoice {
                skip: 1 + extra,
                final_norm: false,
            },
        }
    }

    /// Encodes `tokens` padded to `chunks` chunks (so a prompt and its negative line up).
    pub fn encode(
        &self,
        tokens: &WeightedTokens,
        chunks: usize,
        clip_skip: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Encoded> {
        let choice = self.choice(clip_skip);
        let mut per_chunk = Vec::with_capacity(chunks);
        let mut pooled = None;
        for i in 0..chunks {
            let mut parts = Vec::with_capacity(self.encoders.len());
            for encoder in &self.encoders {
                let pad = match encoder.config().layout {
                    ClipLayout::HuggingFace => END,
                    ClipLayout::OpenClip => 0,
                };
                let (ids, weights) = tokens.chunk(i, pad);
                let ids = Tensor::from_vec(ids, (1, CHUNK + 2), device)?;
                let layers = encoder.layer_count();
                let skip = choice.skip.saturating_sub(encoder.config().layers_removed);
                let run = layers.saturating_sub(skip).max(1);
                let needs_pooled = i == 0
                    && self.family == Family::Sdxl
                    && encoder.config().projection_dim.is_some();
                let mut hidden = encoder.hidden_states(&ids, run)?;
                if needs_pooled {
                    let last = encoder.hidden_states(&ids, layers)?;
                    pooled = encoder.pooled(&ids, &last)?;
                }
                if choice.final_norm {
                    hidden = encoder.final_norm(&hidden)?;
                }
                parts.push(apply_weights(&hidden, &weights)?);
            }
            per_chunk.push(Tensor::cat(&parts, D::Minus1)?);
        }
        Ok(Encoded {
            context: Tensor::cat(&per_chunk, 1)?.to_dtype(dtype)?,
            pooled: pooled.map(|p| p.to_dtype(dtype)).transpose()?,
        })
    }
}

/// Multiplies each token's embedding by its weight, then restores the chunk's mean, as A1111.
fn apply_weights(hidden: &Tensor, weights: &[f32]) -> Result<Tensor> {
    if weights.iter().all(|&w| w == 1.0) {
        return Ok(hidden.clone());
    }
    let original_mean = hidden
        .to_dtype(DType::F32)?
        .mean_all()?
        .to_scalar::<f32>()?;
    let w = Tensor::from_slice(weights, (1, weights.len(), 1), hidden.device())?
        .to_dtype(hidden.dtype())?;
    let weighted = hidden.broadcast_mul(&w)?;
    let new_mean = weighted
        .to_dtype(DType::F32)?
        .mean_all()?
        .to_scalar::<f32>()?;
    if new_mean == 0.0 {
        return Ok(weighted);
    }
    weighted * f64::from(original_mean / new_mean)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_are_tokenized_with_weights_and_chunked() {
        let t = WeightedTokens::from_prompt("a (red:1.5) cat");
        assert_eq!(t.ids.len(), 3);
        assert_eq!(t.weights, vec![1.0, 1.5, 1.0]);
        let (ids, weights) = t.chunk(0, END);
        assert_eq!(ids.len(), 77);
        assert_eq!((ids[0], ids[4], ids[76]), (START, END, END));
        assert_eq!(weights[2], 1.5);
        let long = WeightedTokens::from_prompt(&"cat ".repeat(100));
        assert_eq!(long.ids.len(), 100);
        assert_eq!(long.chunks(), 2);
        let (second, _) = long.chunk(1, 0);
        assert_eq!((second[0], second[26], second[27]), (START, END, 0));
    }
}
