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
        let mut all = self.encode_all_with_embeddings(
            &[tokens],
            embeddings,
            chunks,
            clip_skip,
            dtype,
            device,
        )?;
        Ok(all.remove(0))
    }

    /// [`TextConditioner::encode_with_embeddings`] of several prompts (a job's prompts and
    /// negative prompts) padded to the same `chunks`, as one batch through each encoder: its
    /// weights are read (and rearranged for the bf16 kernels) once for them all rather than
    /// once per prompt. Each prompt's conditioning is its own, as if encoded alone.
    pub fn encode_all_with_embeddings(
        &self,
        prompts: &[&WeightedTokens],
        embeddings: &[Arc<Embedding>],
        chunks: usize,
        clip_skip: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Vec<Encoded>> {
        // Run once per job: the layers keep no rearranged weights (`kernels::kept`).
        crate::kernels::kept::without_keeping(|| {
            self.encode_chunks(prompts, embeddings, chunks, clip_skip, (dtype, device))
        })
    }

    /// [`TextConditioner::encode_all_with_embeddings`], chunk by chunk.
    fn encode_chunks(
        &self,
        prompts: &[&WeightedTokens],
        embeddings: &[Arc<Embedding>],
        chunks: usize,
        clip_skip: usize,
        (dtype, device): (DType, &Device),
    ) -> Result<Vec<Encoded>> {
        let choice = self.choice(clip_skip);
        // Each prompt's context, chunk by chunk, and its pooled output (SDXL's).
        let mut per_chunk = vec![Vec::with_capacity(chunks); prompts.len()];
        let mut pooled = None;
        let extra = self.embedding_vectors(embeddings, device)?;
        for i in 0..chunks {
            let mut parts = vec![Vec::with_capacity(self.encoders.len()); prompts.len()];
            for (e, encoder) in self.encoders.iter().enumerate() {
                let pad = match encoder.config().layout {
                    ClipLayout::HuggingFace => END,
                    ClipLayout::OpenClip => 0,
                };
                let mut ids = Vec::with_capacity(prompts.len());
                let mut inputs = Vec::with_capacity(prompts.len());
                let mut weights = Vec::with_capacity(prompts.len());
                for tokens in prompts {
                    let (chunk_ids, chunk_weights) = tokens.chunk(i, pad);
                    let (chunk_ids, chunk_inputs) =
                        input_embeddings(encoder, chunk_ids, extra.get(e), device)?;
                    ids.push(chunk_ids);
                    inputs.push(chunk_inputs);
                    weights.push(chunk_weights);
                }
                let (ids, inputs) = (Tensor::cat(&ids, 0)?, Tensor::cat(&inputs, 0)?);
                let layers = encoder.layer_count();
                let skip = choice.skip.saturating_sub(encoder.config().layers_removed);
                let run = layers.saturating_sub(skip).max(1);
                let needs_pooled = i == 0
                    && self.family == Family::Sdxl
                    && encoder.config().projection_dim.is_some();
                let mut hidden = if needs_pooled {
                    let (hidden, last) = encoder.hidden_states_and_last(&inputs, run)?;
                    pooled = encoder.pooled(&ids, &last)?;
                    hidden
                } else {
                    encoder.hidden_states_of(&inputs, run)?
                };
                if choice.final_norm {
                    hidden = encoder.final_norm(&hidden)?;
                }
                for (p, weights) in weights.iter().enumerate() {
                    parts[p].push(apply_weights(&hidden.narrow(0, p, 1)?, weights)?);
                }
            }
            for (p, parts) in parts.iter().enumerate() {
                per_chunk[p].push(Tensor::cat(parts, D::Minus1)?);
            }
        }
        (per_chunk.iter().enumerate())
            .map(|(p, chunks)| {
                let pooled = (pooled.as_ref())
                    .map(|pooled| pooled.narrow(0, p, 1)?.to_dtype(dtype))
                    .transpose()?;
                Ok(Encoded {
                    context: Tensor::cat(chunks, 1)?.to_dtype(dtype)?,
                    pooled,
                })
            })
            .collect()
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
    use crate::kernels::test_support::max_difference as max_diff;
    use crate::tiny::{random_tensors, tiny_config, TinyArch};

    /// The tiny SDXL's two text encoders (CLIP-L and OpenCLIP bigG's structure), random f32
    /// weights.
    fn tiny_sdxl_text() -> TextConditioner {
        let config = tiny_config(TinyArch::Sdxl);
        let tensors = random_tensors(&config, 5).unwrap();
        let vb = candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        let prefixes = [
            crate::config::SDXL_CLIP_L_PREFIX,
            crate::config::SDXL_CLIP_G_PREFIX,
        ];
        let encoders = (config.text_encoders.iter().zip(prefixes))
            .map(|(encoder, prefix)| {
                TextTransformer::new(encoder, vb.pp(prefix.trim_end_matches('.'))).unwrap()
            })
            .collect();
        TextConditioner::new(Family::Sdxl, encoders)
    }

    #[test]
    fn prompts_encoded_in_one_batch_get_what_each_gets_alone() {
        // A weighted prompt (its weights and mean restored over its own tokens only), a plain
        // one and a long one of two chunks; SDXL's pooled output row by row.
        let text = tiny_sdxl_text();
        let prompts = [
            WeightedTokens::from_prompt("a (red:1.5) cat"),
            WeightedTokens::from_prompt("blurry"),
            WeightedTokens::from_prompt(&"dog ".repeat(90)),
        ];
        let all: Vec<&WeightedTokens> = prompts.iter().collect();
        let together = text
            .encode_all_with_embeddings(&all, &[], 2, 1, DType::F32, &Device::Cpu)
            .unwrap();
        for (tokens, batched) in prompts.iter().zip(&together) {
            let alone = text.encode(tokens, 2, 1, DType::F32, &Device::Cpu).unwrap();
            assert_eq!(batched.context.dims(), &[1, 154, 64]);
            let scale = alone.context.abs().unwrap().max_all().unwrap();
            let scale: f32 = scale.to_scalar().unwrap();
            assert!(max_diff(&batched.context, &alone.context) <= 1e-5 * scale);
            let (batched, alone) = (batched.pooled.as_ref(), alone.pooled.as_ref());
            let (batched, alone) = (batched.unwrap(), alone.unwrap());
            assert_eq!(batched.dims(), &[1, 32]);
            assert!(max_diff(batched, alone) <= 1e-5);
        }
        assert!(max_diff(&together[0].context, &together[1].context) > 1e-3);
    }

    #[test]
    fn one_pass_gives_the_penultimate_and_the_last_hidden_states() {
        let text = tiny_sdxl_text();
        let bigg = &text.encoders[1];
        let ids = Tensor::arange(0u32, 77, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let inputs = bigg.token_embeddings(&ids).unwrap();
        let layers = bigg.layer_count();
        let (penultimate, last) = bigg.hidden_states_and_last(&inputs, layers - 1).unwrap();
        let each = |n| bigg.hidden_states_of(&inputs, n).unwrap();
        assert_eq!(max_diff(&penultimate, &each(layers - 1)), 0.0);
        assert_eq!(max_diff(&last, &each(layers)), 0.0);
        assert!(max_diff(&penultimate, &last) > 1e-3);
    }

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
