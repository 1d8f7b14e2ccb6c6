//! From prompt text to the UNet's conditioning: A1111 attention weights, chunks of 75 tokens
//! for prompts longer than CLIP's 77 positions, each family's choice of layer, and SDXL's
//! pooled embedding.

use crate::clip::TextTransformer;
use crate::config::{ClipLayout, Family};
use crate::embeddings::{self, Embedding, Piece, FIRST_EMBEDDING_ID};
use crate::prompt;
use candle_core::{DType, Device, Result, Tensor, D};
use instant_clip_tokenizer::Tokenizer;
use std::sync::{Arc, OnceLock};

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
        Self::with_embeddings(text, &[])
    }

    /// The prompt's tokens, each `embedding:NAME` of one of `embeddings` taking as many slots
    /// as it has vectors, with ids from [`FIRST_EMBEDDING_ID`] on (in the order of
    /// `embeddings`) and the weight of the text around it. An embedding may cross a chunk
    /// boundary, as ComfyUI lets words of 8 tokens or more (ordinary words here too).
    pub fn with_embeddings(text: &str, embeddings: &[Arc<Embedding>]) -> Self {
        let mut out = WeightedTokens::default();
        let mut buffer = Vec::new();
        for fragment in prompt::parse(text) {
            for piece in embeddings::split_prompt(&fragment.text, embeddings) {
                buffer.clear();
                match piece {
                    Piece::Text(text) => tokenizer().encode(text, &mut buffer),
                    Piece::Embedding(k) => out.ids.extend(embeddings::token_ids(embeddings, k)),
                }
                out.ids.extend(buffer.iter().map(|t| u32::from(t.to_u16())));
                out.weights.resize(out.ids.len(), fragment.weight);
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
        self.encode_with_embeddings(tokens, &[], chunks, clip_skip, dtype, device)
    }

    /// [`TextConditioner::encode`] of tokens made with
    /// [`WeightedTokens::with_embeddings`]`(…, embeddings)`: their vectors go in place of the
    /// token embeddings of their slots.
    pub fn encode_with_embeddings(
        &self,
        tokens: &WeightedTokens,
        embeddings: &[Arc<Embedding>],
        chunks: usize,
        clip_skip: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Encoded> {
        // Run once per job: the layers keep no rearranged weights (`kernels::kept`).
        crate::kernels::kept::without_keeping(|| {
            self.encode_chunks(tokens, embeddings, chunks, clip_skip, (dtype, device))
        })
    }

    /// [`TextConditioner::encode_with_embeddings`], chunk by chunk.
    fn encode_chunks(
        &self,
        tokens: &WeightedTokens,
        embeddings: &[Arc<Embedding>],
        chunks: usize,
        clip_skip: usize,
        (dtype, device): (DType, &Device),
    ) -> Result<Encoded> {
        let choice = self.choice(clip_skip);
        let mut per_chunk = Vec::with_capacity(chunks);
        let mut pooled = None;
        let extra = self.embedding_vectors(embeddings, device)?;
        for i in 0..chunks {
            let mut parts = Vec::with_capacity(self.encoders.len());
            for (e, encoder) in self.encoders.iter().enumerate() {
                let pad = match encoder.config().layout {
                    ClipLayout::HuggingFace => END,
                    ClipLayout::OpenClip => 0,
                };
                let (ids, weights) = tokens.chunk(i, pad);
                let (ids, inputs) = input_embeddings(encoder, ids, extra.get(e), device)?;
                let layers = encoder.layer_count();
                let skip = choice.skip.saturating_sub(encoder.config().layers_removed);
                let run = layers.saturating_sub(skip).max(1);
                let needs_pooled = i == 0
                    && self.family == Family::Sdxl
                    && encoder.config().projection_dim.is_some();
                let mut hidden = encoder.hidden_states_of(&inputs, run)?;
                if needs_pooled {
                    let last = encoder.hidden_states_of(&inputs, layers)?;
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

impl TextConditioner {
    /// Each encoder's vectors of `embeddings`, stacked in token-id order (none without any).
    fn embedding_vectors(
        &self,
        embeddings: &[Arc<Embedding>],
        device: &Device,
    ) -> Result<Vec<Tensor>> {
        if embeddings.is_empty() {
            return Ok(Vec::new());
        }
        (self.encoders.iter().enumerate())
            .map(|(e, encoder)| {
                embeddings::stacked_vectors(embeddings, self.family, e, encoder.config())
                    .map_err(|err| candle_core::Error::Msg(err.to_string()))?
                    .to_device(device)
            })
            .collect()
    }
}

/// A chunk's ids `[1, 77]` (embedding slots as id 0, so the end token stays the highest id
/// for the pooled output) and its input embeddings `[1, 77, width]`: the encoder's token
/// embeddings, with the rows of `extra` in embedding slots.
fn input_embeddings(
    encoder: &TextTransformer,
    ids: Vec<u32>,
    extra: Option<&Tensor>,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let slots: Vec<Option<u32>> = ids
        .iter()
        .map(|&id| id.checked_sub(FIRST_EMBEDDING_ID))
        .collect();
    let vocab: Vec<u32> = (ids.iter().zip(&slots))
        .map(|(&id, slot)| if slot.is_some() { 0 } else { id })
        .collect();
    let vocab = Tensor::from_vec(vocab, (1, CHUNK + 2), device)?;
    let inputs = encoder.token_embeddings(&vocab)?;
    let Some(last) = slots.iter().flatten().max() else {
        return Ok((vocab, inputs));
    };
    let Some(extra) = extra.filter(|e| e.dim(0).is_ok_and(|n| (*last as usize) < n)) else {
        candle_core::bail!(
            "token id {} names no embedding vector",
            FIRST_EMBEDDING_ID + last
        )
    };
    let rows: Vec<u32> = slots.iter().map(|s| s.unwrap_or(0)).collect();
    let rows = Tensor::from_vec(rows, CHUNK + 2, device)?;
    let injected = extra
        .index_select(&rows, 0)?
        .to_dtype(inputs.dtype())?
        .unsqueeze(0)?;
    let mask: Vec<u8> = slots.iter().map(|s| u8::from(s.is_some())).collect();
    let mask = Tensor::from_vec(mask, (1, CHUNK + 2, 1), device)?.broadcast_as(inputs.shape())?;
    Ok((vocab, mask.where_cond(&injected, &inputs)?))
}

/// Multiplies each token's embedding by its weight, then restores the chunk's mean, as A1111.
fn apply_weights(hidden: &Tensor, weights: &[f32]) -> Result<Tensor> {
    if weights.iter().all(|&w| w == 1.0) {
        return Ok(hidden.clone());
    }
    // The means in f64: they are near 0, so their ratio would magnify f32's rounding.
    let mean = |t: &Tensor| t.to_dtype(DType::F64)?.mean_all()?.to_scalar::<f64>();
    let original_mean = mean(hidden)?;
    let w = Tensor::from_slice(weights, (1, weights.len(), 1), hidden.device())?
        .to_dtype(hidden.dtype())?;
    let weighted = hidden.broadcast_mul(&w)?;
    let new_mean = mean(&weighted)?;
    if new_mean == 0.0 {
        return Ok(weighted);
    }
    weighted * (original_mean / new_mean)
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
