//! CLIP's image tower (transformers' `CLIPVisionTransformer`: patch and position embeddings,
//! `pre_layrnorm`, the encoder, `post_layernorm` of the class token), with the layers written
//! here rather than taken from candle-transformers, to spend fewer passes over the activations
//! around the matrix products, which are most of the time:
//!
//! * the attention's softmax is candle's fused last-axis softmax (one pass), not the generic
//!   one of five (max, subtract, exp, sum, divide) over every head's 257 × 257 scores;
//! * the query's scale `head_dim^-0.5` is folded into `q_proj`'s weight and bias at load, not
//!   applied to every query;
//! * quick GELU, `x · σ(1.702 x)`, is one pass ([`quick_gelu`]) instead of three.
//!
//! The arithmetic is otherwise the same, layer by layer, and `tests/clip_numbers.rs` and
//! `tests/safety_numbers.rs` hold it to transformers' outputs. The text tower, which runs once
//! per model for the term lists, stays candle-transformers'.

use candle_core::{CpuStorage, CustomOp1, DType, IndexOp, Layout, Module, Result, Shape, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, LayerNorm, Linear, VarBuilder};
use rayon::prelude::*;

use super::config::ClipFileConfig;

/// transformers' `layer_norm_eps` for CLIP.
const LAYER_NORM_EPS: f64 = 1e-5;

/// The image tower: pixels `[B, 3, H, W]` to the pooled, normalised class token `[B, D]`.
pub struct VisionTower {
    patch_embedding: Conv2d,
    class_embedding: Tensor,
    position_embedding: Tensor,
    pre_layer_norm: LayerNorm,
    layers: Vec<EncoderLayer>,
    post_layer_norm: LayerNorm,
}

impl VisionTower {
    /// The tower under `vb` (`vision_model` in `CLIPModel`, `vision_model.vision_model` in the
    /// safety checker), shaped by `config`'s vision part.
    pub fn new(vb: VarBuilder<'_>, config: &ClipFileConfig) -> Result<VisionTower> {
        let v = &config.vision_config;
        let width = v.hidden_size;
        let embeddings = vb.pp("embeddings");
        let patch_embedding = candle_nn::conv2d_no_bias(
            v.num_channels,
            width,
            v.patch_size,
            Conv2dConfig {
                stride: v.patch_size,
                ..Default::default()
            },
            embeddings.pp("patch_embedding"),
        )?;
        let positions = (v.image_size / v.patch_size).pow(2) + 1;
        let layers = (0..v.num_hidden_layers)
            .map(|i| {
                EncoderLayer::new(
                    vb.pp(format!("encoder.layers.{i}")),
                    width,
                    v.intermediate_size,
                    v.num_attention_heads,
                )
            })
            .collect::<Result<_>>()?;
        Ok(VisionTower {
            patch_embedding,
            class_embedding: embeddings.get(width, "class_embedding")?,
            position_embedding: embeddings.get((positions, width), "position_embedding.weight")?,
            pre_layer_norm: candle_nn::layer_norm(width, LAYER_NORM_EPS, vb.pp("pre_layrnorm"))?,
            layers,
            post_layer_norm: candle_nn::layer_norm(width, LAYER_NORM_EPS, vb.pp("post_layernorm"))?,
        })
    }

    /// `pooler_output`: the last layer's class token through `post_layernorm`, `[B, D]`.
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let patches = self
            .patch_embedding
            .forward(pixels)?
            .flatten_from(2)?
            .transpose(1, 2)?;
        let (batch, _, width) = patches.dims3()?;
        let class = self
            .class_embedding
            .reshape((1, 1, width))?
            .expand((batch, 1, width))?;
        let mut hidden = Tensor::cat(&[class, patches], 1)?
            .broadcast_add(&self.position_embedding)?
            .apply(&self.pre_layer_norm)?;
        for layer in &self.layers {
            hidden = layer.forward(&hidden)?;
        }
        self.post_layer_norm.forward(&hidden.i((.., 0, ..))?)
    }
}

/// One pre-norm encoder layer: attention and the MLP, each added to the residual stream.
struct EncoderLayer {
    layer_norm1: LayerNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
}

impl EncoderLayer {
    fn new(vb: VarBuilder<'_>, width: usize, inner: usize, heads: usize) -> Result<EncoderLayer> {
        let attention = vb.pp("self_attn");
        let scale = ((width / heads) as f64).powf(-0.5);
        let q_proj = candle_nn::linear(width, width, attention.pp("q_proj"))?;
        let q_proj = Linear::new(
            (q_proj.weight() * scale)?,
            q_proj.bias().map(|b| b * scale).transpose()?,
        );
        let mlp = vb.pp("mlp");
        Ok(EncoderLayer {
            layer_norm1: candle_nn::layer_norm(width, LAYER_NORM_EPS, vb.pp("layer_norm1"))?,
            q_proj: stored_transposed(q_proj)?,
            k_proj: candle_nn::linear(width, width, attention.pp("k_proj"))?,
            v_proj: candle_nn::linear(width, width, attention.pp("v_proj"))?,
            out_proj: candle_nn::linear(width, width, attention.pp("out_proj"))?,
            layer_norm2: candle_nn::layer_norm(width, LAYER_NORM_EPS, vb.pp("layer_norm2"))?,
            fc1: candle_nn::linear(width, inner, mlp.pp("fc1"))?,
            fc2: candle_nn::linear(inner, width, mlp.pp("fc2"))?,
            heads,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let attended = self.attention(&self.layer_norm1.forward(x)?)?;
        let x = (x + attended)?;
        let inner = quick_gelu(&self.fc1.forward(&self.layer_norm2.forward(&x)?)?)?;
        x + self.fc2.forward(&inner)?
    }

    /// Multi-head self-attention over `h` `[B, S, D]`, no mask.
    fn attention(&self, h: &Tensor) -> Result<Tensor> {
        let (batch, seq, width) = h.dims3()?;
        let head_dim = width / self.heads;
        let split = |t: Tensor| -> Result<Tensor> {
            t.reshape((batch, seq, self.heads, head_dim))?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((batch * self.heads, seq, head_dim))
        };
        let q = split(self.q_proj.forward(h)?)?;
        let k = split(self.k_proj.forward(h)?)?;
        let v = split(self.v_proj.forward(h)?)?;
        let weights = candle_nn::ops::softmax_last_dim(&q.matmul(&k.transpose(1, 2)?)?)?;
        let context = weights
            .matmul(&v)?
            .reshape((batch, self.heads, seq, head_dim))?
            .transpose(1, 2)?
            .reshape((batch, seq, width))?;
        self.out_proj.forward(&context)
    }
}

/// `linear` with its (new) weight stored transposed, as `weights::transpose_product_weights`
/// stores the loaded ones.
fn stored_transposed(linear: Linear) -> Result<Linear> {
    let weight = linear.weight().t()?.contiguous()?.t()?;
    Ok(Linear::new(weight, linear.bias().cloned()))
}

/// transformers' `quick_gelu`, `x · sigmoid(1.702 x)`, in one pass on the CPU in f32 (as
/// `x / (1 + e^(−1.702 x))`), and as candle's three ops elsewhere.
pub fn quick_gelu(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        x.contiguous()?.apply_op1_no_bwd(&QuickGelu)
    } else {
        x * candle_nn::ops::sigmoid(&(x * 1.702)?)?
    }
}

struct QuickGelu;

impl CustomOp1 for QuickGelu {
    fn name(&self) -> &'static str {
        "quick-gelu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(values) = storage else {
            candle_core::bail!("quick-gelu: f32 only");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("quick-gelu: a contiguous input only");
        };
        let input = &values[start..end];
        let mut out = vec![0f32; input.len()];
        out.par_chunks_mut(4096)
            .zip(input.par_chunks(4096))
            .for_each(|(out, input)| {
                for (o, &x) in out.iter_mut().zip(input) {
                    *o = x / (1.0 + (-1.702 * x).exp());
                }
            });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn quick_gelu_is_candles_three_ops_in_one() {
        let x = Tensor::randn(0f32, 3.0, (7, 1031), &Device::Cpu).unwrap();
        let ours = quick_gelu(&x).unwrap();
        let candle = (&x * candle_nn::ops::sigmoid(&(&x * 1.702).unwrap()).unwrap()).unwrap();
        assert_eq!(ours.dims(), &[7, 1031]);
        let difference: f32 = (ours - candle)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(difference < 1e-5, "{difference}");
        // Not the identity nor plain sigmoid: a mis-wired activation is caught.
        let at_one = quick_gelu(&Tensor::new(&[1f32, -1.0], &Device::Cpu).unwrap())
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!((at_one[0] - 0.845_796).abs() < 1e-5, "{at_one:?}");
        assert!((at_one[1] + 0.154_204).abs() < 1e-5, "{at_one:?}");
    }
}
