//! CLIP text transformers in both key layouts found in checkpoints: Hugging Face's
//! (`text_model.encoder.layers.N`, SD 1.x and SDXL's first encoder) and OpenCLIP's
//! (`transformer.resblocks.N` with a fused `in_proj`, SD 2.x and SDXL's second encoder).
//!
//! The causal mask is built for the whole batch (candle's own CLIP fails for batch > 1).

use crate::config::{ClipConfig, ClipLayout};
use crate::nn;
use crate::nn::LayerNorm;
use crate::nn::Linear;
use candle_core::{DType, Device, IndexOp, Module, Result, Tensor, D};
use candle_nn::{Embedding, VarBuilder};

#[derive(Debug)]
struct EncoderLayer {
    norm1: LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl EncoderLayer {
    fn hugging_face(c: &ClipConfig, vb: VarBuilder<'_>) -> Result<Self> {
        let w = c.width;
        Ok(EncoderLayer {
            norm1: nn::layer_norm(w, vb.pp("layer_norm1"))?,
            q: nn::linear(w, w, vb.pp("self_attn.q_proj"))?,
            k: nn::linear(w, w, vb.pp("self_attn.k_proj"))?,
            v: nn::linear(w, w, vb.pp("self_attn.v_proj"))?,
            out: nn::linear(w, w, vb.pp("self_attn.out_proj"))?,
            norm2: nn::layer_norm(w, vb.pp("layer_norm2"))?,
            fc1: nn::linear(w, c.intermediate, vb.pp("mlp.fc1"))?,
            fc2: nn::linear(c.intermediate, w, vb.pp("mlp.fc2"))?,
        })
    }

    fn open_clip(c: &ClipConfig, vb: VarBuilder<'_>) -> Result<Self> {
        let w = c.width;
        let in_weight = vb.get((3 * w, w), "attn.in_proj_weight")?;
        let in_bias = vb.get(3 * w, "attn.in_proj_bias")?;
        let part = |i: usize| -> Result<Linear> {
            Ok(Linear::new(
                in_weight.narrow(0, i * w, w)?.contiguous()?,
                Some(in_bias.narrow(0, i * w, w)?.contiguous()?),
            ))
        };
        Ok(EncoderLayer {
            norm1: nn::layer_norm(w, vb.pp("ln_1"))?,
            q: part(0)?,
            k: part(1)?,
            v: part(2)?,
            out: nn::linear(w, w, vb.pp("attn.out_proj"))?,
            norm2: nn::layer_norm(w, vb.pp("ln_2"))?,
            fc1: nn::linear(w, c.intermediate, vb.pp("mlp.c_fc"))?,
            fc2: nn::linear(c.intermediate, w, vb.pp("mlp.c_proj"))?,
        })
    }

    fn forward(
        &self,
        xs: &Tensor,
        mask: &Tensor,
        heads: usize,
        layout: ClipLayout,
    ) -> Result<Tensor> {
        let h = self.norm1.forward(xs)?;
        let attended = nn::attention(
            &self.q.forward(&h)?,
            &self.k.forward(&h)?,
            &self.v.forward(&h)?,
            heads,
            Some(mask),
        )?;
        let xs = self.out.forward_plus(&attended, xs)?;
        let h = self.fc1.forward(&self.norm2.forward(&xs)?)?;
        let h = match layout {
            ClipLayout::HuggingFace => nn::quick_gelu(&h)?,
            ClipLayout::OpenClip => nn::gelu_erf(&h)?,
        };
        self.fc2.forward_plus(&h, &xs)
    }
}

#[derive(Debug)]
pub struct TextTransformer {
    config: ClipConfig,
    token_embedding: Embedding,
    position_embedding: Tensor,
    layers: Vec<EncoderLayer>,
    final_norm: LayerNorm,
    projection: Option<Tensor>,
}

impl TextTransformer {
    /// `vb` points at the encoder's root (`cond_stage_model.transformer.` for SD 1.x,
    /// `cond_stage_model.model.` for SD 2.x, …).
    pub fn new(config: &ClipConfig, vb: VarBuilder<'_>) -> Result<Self> {
        let c = config;
        match c.layout {
            ClipLayout::HuggingFace => {
                let vb = vb.pp("text_model");
                let layers = (0..c.layers)
                    .map(|i| EncoderLayer::hugging_face(c, vb.pp(format!("encoder.layers.{i}"))))
                    .collect::<Result<_>>()?;
                Ok(TextTransformer {
                    config: c.clone(),
                    token_embedding: candle_nn::embedding(
                        c.vocab_size,
                        c.width,
                        vb.pp("embeddings.token_embedding"),
                    )?,
                    position_embedding: vb.get(
                        (c.max_positions, c.width),
                        "embeddings.position_embedding.weight",
                    )?,
                    layers,
                    final_norm: nn::layer_norm(c.width, vb.pp("final_layer_norm"))?,
                    projection: None,
                })
            }
            ClipLayout::OpenClip => {
                let layers = (0..c.layers)
                    .map(|i| {
                        EncoderLayer::open_clip(c, vb.pp(format!("transformer.resblocks.{i}")))
                    })
                    .collect::<Result<_>>()?;
                let projection = match c.projection_dim {
                    Some(p) => Some(vb.get((c.width, p), "text_projection")?),
                    None => None,
                };
                Ok(TextTransformer {
                    config: c.clone(),
                    token_embedding: candle_nn::embedding(
                        c.vocab_size,
                        c.width,
                        vb.pp("token_embedding"),
                    )?,
                    position_embedding: vb
                        .get((c.max_positions, c.width), "positional_embedding")?,
                    layers,
                    final_norm: nn::layer_norm(c.width, vb.pp("ln_final"))?,
                    projection,
                })
            }
        }
    }

    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    /// Runs the first `layers` layers over `[batch, positions]` token ids.
    pub fn hidden_states(&self, tokens: &Tensor, layers: usize) -> Result<Tensor> {
        self.hidden_states_of(&self.token_embeddings(tokens)?, layers)
    }

    /// The token embeddings `[batch, positions, width]` of `[batch, positions]` token ids.
    pub fn token_embeddings(&self, tokens: &Tensor) -> Result<Tensor> {
        self.token_embedding.forward(tokens)
    }

    /// [`TextTransformer::hidden_states`] from token embeddings (textual-inversion vectors
    /// stand in some of them).
    pub fn hidden_states_of(&self, xs: &Tensor, layers: usize) -> Result<Tensor> {
        Ok(self.hidden_states_through(xs, layers, layers)?.0)
    }

    /// The hidden states after `layers` layers and after the last one, in one pass through
    /// the encoder: SDXL's OpenCLIP bigG gives its context from the penultimate layer and its
    /// pooled output from the last (running it twice for them took a 2-core VM 2 of the 3.4 s
    /// of an SDXL job's text encoding).
    pub fn hidden_states_and_last(&self, xs: &Tensor, layers: usize) -> Result<(Tensor, Tensor)> {
        self.hidden_states_through(xs, layers, self.layers.len())
    }

    /// The states after `kept` layers and after `through` layers (`kept ≤ through`; all of them
    /// where there are fewer), in one pass.
    fn hidden_states_through(
        &self,
        xs: &Tensor,
        kept: usize,
        through: usize,
    ) -> Result<(Tensor, Tensor)> {
        let (_, positions, _) = xs.dims3()?;
        let mut xs = xs.broadcast_add(
            &self
                .position_embedding
                .narrow(0, 0, positions)?
                .to_dtype(xs.dtype())?,
        )?;
        let mask = causal_mask(positions, xs.dtype(), xs.device())?;
        let mut kept_state = (kept == 0).then(|| xs.clone());
        for (done, layer) in (1..).zip(self.layers.iter().take(through)) {
            xs = layer.forward(&xs, &mask, self.config.heads(), self.config.layout)?;
            if done == kept {
                kept_state = Some(xs.clone());
            }
        }
        Ok((kept_state.unwrap_or_else(|| xs.clone()), xs))
    }

    pub fn final_norm(&self, xs: &Tensor) -> Result<Tensor> {
        self.final_norm.forward(xs)
    }

    /// The pooled, projected embedding (OpenCLIP): the final-normed state at each sequence's
    /// end-of-text token (its highest token id) times `text_projection`.
    pub fn pooled(&self, tokens: &Tensor, last_hidden: &Tensor) -> Result<Option<Tensor>> {
        let Some(projection) = &self.projection else {
            return Ok(None);
        };
        let normed = self.final_norm(last_hidden)?;
        let eos = tokens.argmax(D::Minus1)?.to_vec1::<u32>()?;
        let rows = eos
            .iter()
            .enumerate()
            .map(|(b, &p)| normed.i((b, p as usize)))
            .collect::<Result<Vec<_>>>()?;
        let pooled = Tensor::stack(&rows, 0)?;
        Ok(Some(pooled.matmul(&projection.to_dtype(pooled.dtype())?)?))
    }

    pub fn layer_count(&self) -> usize {
        self.layers.len()
    }
}

fn causal_mask(n: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let values: Vec<f32> = (0..n)
        .flat_map(|i| (0..n).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(values, (1, 1, n, n), device)?.to_dtype(dtype)
}
