//! CodeFormer's code predictor: the encoder's latent map as tokens, a linear embedding, pre-norm
//! transformer layers (`ft_layers.N`, PyTorch's `nn.MultiheadAttention` with the learned
//! position embedding added to queries and keys only), and a linear head giving each position's
//! logits over the codebook, of which the largest is the code (upstream takes the top-1 of the
//! softmax: the same index).

use super::Shape;
use candle_core::{Module, Result, Tensor, D};
use candle_nn::VarBuilder;
use horde_diffusion::nn::{attention, layer_norm, linear, linear_no_bias, LayerNorm, Linear};

/// One `TransformerSALayer`: self-attention then a GELU feed-forward, each after a LayerNorm
/// and added back.
struct SelfAttentionLayer {
    norm1: LayerNorm,
    /// The query and key projections (the first two thirds of `in_proj_weight`), one product.
    query_key: Linear,
    value: Linear,
    out_proj: Linear,
    norm2: LayerNorm,
    linear1: Linear,
    linear2: Linear,
    heads: usize,
}

impl SelfAttentionLayer {
    fn new(shape: &Shape, vb: VarBuilder<'_>) -> Result<Self> {
        let e = shape.width;
        let attn = vb.pp("self_attn");
        let in_weight = attn.get((3 * e, e), "in_proj_weight")?;
        let in_bias = attn.get(3 * e, "in_proj_bias")?;
        Ok(SelfAttentionLayer {
            norm1: layer_norm(e, vb.pp("norm1"))?,
            query_key: Linear::new(
                in_weight.narrow(0, 0, 2 * e)?,
                Some(in_bias.narrow(0, 0, 2 * e)?),
            ),
            value: Linear::new(
                in_weight.narrow(0, 2 * e, e)?,
                Some(in_bias.narrow(0, 2 * e, e)?),
            ),
            out_proj: linear(e, e, attn.pp("out_proj"))?,
            norm2: layer_norm(e, vb.pp("norm2"))?,
            linear1: linear(e, shape.mlp_width, vb.pp("linear1"))?,
            linear2: linear(shape.mlp_width, e, vb.pp("linear2"))?,
            heads: shape.heads,
        })
    }

    /// `x`: `[B, L, E]` tokens; `position`: `[1, L, E]`.
    fn forward(&self, x: &Tensor, position: &Tensor) -> Result<Tensor> {
        let e = x.dim(D::Minus1)?;
        let normed = self.norm1.forward(x)?;
        let query_key = self.query_key.forward(&normed.broadcast_add(position)?)?;
        let q = query_key.narrow(D::Minus1, 0, e)?.contiguous()?;
        let k = query_key.narrow(D::Minus1, e, e)?.contiguous()?;
        let v = self.value.forward(&normed)?;
        let attended = attention(&q, &k, &v, self.heads, None)?;
        let x = self.out_proj.forward_plus(&attended, x)?;
        let hidden = self.linear1.forward(&self.norm2.forward(&x)?)?.gelu_erf()?;
        self.linear2.forward_plus(&hidden, &x)
    }
}

/// The transformer and its head.
pub(super) struct CodePredictor {
    feat_emb: Linear,
    position: Tensor,
    layers: Vec<SelfAttentionLayer>,
    head_norm: LayerNorm,
    head: Linear,
}

impl CodePredictor {
    pub(super) fn new(shape: &Shape, vb: VarBuilder<'_>) -> Result<Self> {
        let tokens = shape.latent_side * shape.latent_side;
        Ok(CodePredictor {
            feat_emb: linear(shape.codebook_width, shape.width, vb.pp("feat_emb"))?,
            position: vb
                .get((tokens, shape.width), "position_emb")?
                .unsqueeze(0)?,
            layers: (0..shape.layers)
                .map(|i| SelfAttentionLayer::new(shape, vb.pp(format!("ft_layers.{i}"))))
                .collect::<Result<_>>()?,
            head_norm: layer_norm(shape.width, vb.pp("idx_pred_layer.0"))?,
            head: linear_no_bias(shape.width, shape.codebook_size, vb.pp("idx_pred_layer.1"))?,
        })
    }

    /// The logits over the codebook (`[B, L, N]`) for the encoder's latent tokens (`[B, L, C]`).
    pub(super) fn logits(&self, latent: &Tensor) -> Result<Tensor> {
        let mut x = self.feat_emb.forward(latent)?;
        for layer in &self.layers {
            x = layer.forward(&x, &self.position)?;
        }
        self.head.forward(&self.head_norm.forward(&x)?)
    }

    /// The code of each token: `[B, L]`, u32.
    pub(super) fn codes(&self, latent: &Tensor) -> Result<Tensor> {
        self.logits(latent)?.argmax(D::Minus1)
    }
}
