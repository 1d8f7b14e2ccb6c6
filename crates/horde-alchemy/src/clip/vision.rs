//! CLIP's image tower (transformers' `CLIPVisionTransformer`: patch and position embeddings,
//! `pre_layrnorm`, the encoder, `post_layernorm` of the class token), with the layers written
//! here rather than taken from candle-transformers, to spend fewer passes over the activations
//! around the matrix products, which are most of the time:
//!
//! * the attention's softmax is candle's fused last-axis softmax (one pass), not the generic
//!   one of five (max, subtract, exp, sum, divide) over every head's 257 × 257 scores;
//! * the query's scale `head_dim^-0.5` is folded into `q_proj`'s weight and bias at load, not
//!   applied to every query;
//! * quick GELU, `x · σ(1.702 x)`, is one pass instead of three, and with `fc1`'s bias added
//!   in it; `out_proj`'s and `fc2`'s biases are added in the same pass as the
//!   residual ([`Projection`]): one pass after each of those products where candle takes two or
//!   four, all on rayon's threads (the ones the products run on) rather than candle's own pool,
//!   whose threads spin a while after each of its operations, taking cores from the products.
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
    q_proj: Projection,
    k_proj: Projection,
    v_proj: Projection,
    out_proj: Projection,
    layer_norm2: LayerNorm,
    fc1: Projection,
    fc2: Projection,
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
            q_proj: Projection::new(stored_transposed(q_proj)?)?,
            k_proj: Projection::new(candle_nn::linear(width, width, attention.pp("k_proj"))?)?,
            v_proj: Projection::new(candle_nn::linear(width, width, attention.pp("v_proj"))?)?,
            out_proj: Projection::new(candle_nn::linear(width, width, attention.pp("out_proj"))?)?,
            layer_norm2: candle_nn::layer_norm(width, LAYER_NORM_EPS, vb.pp("layer_norm2"))?,
            fc1: Projection::new(candle_nn::linear(width, inner, mlp.pp("fc1"))?)?,
            fc2: Projection::new(candle_nn::linear(inner, width, mlp.pp("fc2"))?)?,
            heads,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let context = self.attention(&self.layer_norm1.forward(x)?)?;
        let x = self.out_proj.plus_residual(&context, x)?;
        let inner = self.fc1.quick_gelu(&self.layer_norm2.forward(&x)?)?;
        self.fc2.plus_residual(&inner, &x)
    }

    /// Multi-head self-attention over `h` `[B, S, D]`, no mask, before `out_proj`.
    fn attention(&self, h: &Tensor) -> Result<Tensor> {
        let (batch, seq, width) = h.dims3()?;
        let head_dim = width / self.heads;
        let q = self.q_proj.heads(h, self.heads)?;
        let k = self.k_proj.heads(h, self.heads)?;
        let v = self.v_proj.heads(h, self.heads)?;
        let weights = candle_nn::ops::softmax_last_dim(&q.matmul(&k.transpose(1, 2)?)?)?;
        let context = weights
            .matmul(&v)?
            .reshape((batch, self.heads, seq, head_dim))?
            .transpose(1, 2)?
            .reshape((batch, seq, width))?;
        Ok(context)
    }
}

/// A linear layer whose bias is added in the one pass after its product that also applies
/// what follows the layer: quick GELU, or the residual stream's sum.
struct Projection {
    /// `[out, in]`, stored transposed (`weights::transpose_product_weights`).
    weight: Tensor,
    bias: Tensor,
    bias_values: Vec<f32>,
}

impl Projection {
    fn new(linear: Linear) -> Result<Projection> {
        let Some(bias) = linear.bias().cloned() else {
            candle_core::bail!("a CLIP projection without its bias");
        };
        let bias_values = bias.to_dtype(DType::F32)?.to_vec1()?;
        Ok(Projection {
            weight: linear.weight().clone(),
            bias,
            bias_values,
        })
    }

    /// `x · Wᵀ` of `x` `[B, S, in]`, without the bias.
    fn product(&self, x: &Tensor) -> Result<Tensor> {
        let (batch, seq, width) = x.dims3()?;
        x.reshape((batch * seq, width))?
            .matmul(&self.weight.t()?)?
            .reshape((batch, seq, ()))
    }

    /// Whether the fused passes run: f32 on the CPU.
    fn fused(&self, y: &Tensor) -> bool {
        y.device().is_cpu() && y.dtype() == DType::F32
    }

    /// `x · Wᵀ + b` split into `heads` heads: `[B · heads, S, out / heads]`.
    fn heads(&self, x: &Tensor, heads: usize) -> Result<Tensor> {
        let (batch, seq, _) = x.dims3()?;
        let y = self.product(x)?;
        let head_dim = self.bias_values.len() / heads;
        if !self.fused(&y) {
            return y
                .broadcast_add(&self.bias)?
                .reshape((batch, seq, heads, head_dim))?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((batch * heads, seq, head_dim));
        }
        y.apply_op1_no_bwd(&SplitHeads {
            bias: &self.bias_values,
            heads,
        })
    }

    /// `quick_gelu(x · Wᵀ + b)`.
    fn quick_gelu(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.product(x)?;
        if !self.fused(&y) {
            return quick_gelu(&y.broadcast_add(&self.bias)?);
        }
        y.apply_op1_no_bwd(&Epilogue {
            bias: &self.bias_values,
        })
    }

    /// `x · Wᵀ + b + residual`.
    fn plus_residual(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let y = self.product(x)?;
        if !self.fused(&y) {
            return y.broadcast_add(&self.bias)? + residual;
        }
        y.apply_op2_no_bwd(
            &residual.contiguous()?,
            &Epilogue {
                bias: &self.bias_values,
            },
        )
    }
}

/// The pass after a projection's product: the bias added to each row, then quick GELU (one
/// input) or the residual added (two inputs).
struct Epilogue<'a> {
    bias: &'a [f32],
}

impl Epilogue<'_> {
    /// The rows of `y` `[.., bias.len()]` (contiguous f32) with `each(row_out, row_y, i)`.
    fn rows(
        &self,
        (storage, layout): (&CpuStorage, &Layout),
        each: impl Fn(&mut [f32], &[f32], usize) + Sync,
    ) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(values), Some((start, end))) = (storage, layout.contiguous_offsets())
        else {
            candle_core::bail!("clip epilogue: a contiguous f32 input only");
        };
        let width = self.bias.len();
        if layout.dims().last() != Some(&width) {
            candle_core::bail!(
                "clip epilogue: rows of {:?} for a bias of {width}",
                layout.dims()
            );
        }
        let input = &values[start..end];
        let mut out = vec![0f32; input.len()];
        out.par_chunks_mut(width)
            .zip(input.par_chunks(width))
            .enumerate()
            .for_each(|(i, (o, y))| each(o, y, i));
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

impl CustomOp1 for Epilogue<'_> {
    fn name(&self) -> &'static str {
        "clip-bias-quick-gelu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        self.rows((storage, layout), |out, y, _| {
            for ((o, &y), &b) in out.iter_mut().zip(y).zip(self.bias) {
                *o = quick_gelu_of(y + b);
            }
        })
    }
}

/// The pass after a query, key or value projection's product `[B, S, D]`: the bias added, and
/// the heads made contiguous, `[B · heads, S, D / heads]`.
struct SplitHeads<'a> {
    bias: &'a [f32],
    heads: usize,
}

impl CustomOp1 for SplitHeads<'_> {
    fn name(&self) -> &'static str {
        "clip-bias-split-heads"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(values), Some((start, end))) = (storage, layout.contiguous_offsets())
        else {
            candle_core::bail!("clip heads: a contiguous f32 input only");
        };
        let (batch, seq, width) = layout.shape().dims3()?;
        if width != self.bias.len() || width % self.heads != 0 {
            candle_core::bail!("clip heads: width {width}, bias {}", self.bias.len());
        }
        let head_dim = width / self.heads;
        let input = &values[start..end];
        let mut out = vec![0f32; input.len()];
        // One chunk per (image, head): its `seq` rows of `head_dim`.
        out.par_chunks_mut(seq * head_dim)
            .enumerate()
            .for_each(|(chunk, o)| {
                let (image, head) = (chunk / self.heads, chunk % self.heads);
                let bias = &self.bias[head * head_dim..(head + 1) * head_dim];
                for (position, o) in o.chunks_mut(head_dim).enumerate() {
                    let at = (image * seq + position) * width + head * head_dim;
                    for ((o, &y), &b) in o.iter_mut().zip(&input[at..at + head_dim]).zip(bias) {
                        *o = y + b;
                    }
                }
            });
        let shape = Shape::from((batch * self.heads, seq, head_dim));
        Ok((CpuStorage::F32(out), shape))
    }
}

impl candle_core::CustomOp2 for Epilogue<'_> {
    fn name(&self) -> &'static str {
        "clip-bias-residual"
    }

    fn cpu_fwd(
        &self,
        ys: &CpuStorage,
        yl: &Layout,
        rs: &CpuStorage,
        rl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(residual), Some((start, end))) = (rs, rl.contiguous_offsets()) else {
            candle_core::bail!("clip epilogue: a contiguous f32 residual only");
        };
        if rl.dims() != yl.dims() {
            candle_core::bail!(
                "clip epilogue: residual {:?} for {:?}",
                rl.dims(),
                yl.dims()
            );
        }
        let residual = &residual[start..end];
        let width = self.bias.len();
        self.rows((ys, yl), |out, y, i| {
            let r = &residual[i * width..(i + 1) * width];
            for (((o, &y), &b), &r) in out.iter_mut().zip(y).zip(self.bias).zip(r) {
                *o = y + b + r;
            }
        })
    }
}

/// `linear` with its (new) weight stored transposed, as `weights::transpose_product_weights`
/// stores the loaded ones.
fn stored_transposed(linear: Linear) -> Result<Linear> {
    let weight = crate::weights::stored_transposed(linear.weight())?;
    Ok(Linear::new(weight, linear.bias().cloned()))
}

/// transformers' `quick_gelu`, `x · sigmoid(1.702 x)`, as candle's ops (off the CPU).
fn quick_gelu(x: &Tensor) -> Result<Tensor> {
    x * candle_nn::ops::sigmoid(&(x * 1.702)?)?
}

/// transformers' `quick_gelu` of one value, as `x / (1 + e^(−1.702 x))`.
fn quick_gelu_of(x: f32) -> f32 {
    x / (1.0 + (-1.702 * x).exp())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn max_difference(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    /// A projection of random weights, stored transposed as loaded ones are.
    fn projection(inputs: usize, outputs: usize) -> (Projection, Tensor, Tensor) {
        let weight = Tensor::randn(0f32, 0.2, (outputs, inputs), &Device::Cpu).unwrap();
        let bias = Tensor::randn(0f32, 1.0, outputs, &Device::Cpu).unwrap();
        let linear = stored_transposed(Linear::new(weight.clone(), Some(bias.clone()))).unwrap();
        (Projection::new(linear).unwrap(), weight, bias)
    }

    /// Each fused pass against candle's ops on the same product: the bias with quick GELU,
    /// with the residual, and with the heads' split.
    #[test]
    fn the_fused_passes_are_candles_ops_in_one() {
        let (projection, weight, bias) = projection(48, 96);
        let x = Tensor::randn(0f32, 1.0, (2, 7, 48), &Device::Cpu).unwrap();
        let linear = Linear::new(weight, Some(bias)).forward(&x).unwrap();

        let gelu = projection.quick_gelu(&x).unwrap();
        assert_eq!(gelu.dims(), &[2, 7, 96]);
        assert!(max_difference(&gelu, &quick_gelu(&linear).unwrap()) < 1e-5);

        let residual = Tensor::randn(0f32, 1.0, (2, 7, 96), &Device::Cpu).unwrap();
        let summed = projection.plus_residual(&x, &residual).unwrap();
        assert!(max_difference(&summed, &(&linear + &residual).unwrap()) < 1e-5);

        let heads = projection.heads(&x, 4).unwrap();
        let expected = linear
            .reshape((2, 7, 4, 24))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((8, 7, 24))
            .unwrap();
        assert_eq!(heads.dims(), &[8, 7, 24]);
        assert!(max_difference(&heads, &expected) < 1e-5);
    }

    #[test]
    fn quick_gelu_is_neither_the_identity_nor_sigmoid() {
        let at = |x: f32| quick_gelu_of(x);
        assert!((at(1.0) - 0.845_796).abs() < 1e-5);
        assert!((at(-1.0) + 0.154_204).abs() < 1e-5);
        let candle = quick_gelu(&Tensor::new(&[1f32, -1.0], &Device::Cpu).unwrap())
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!((candle[0] - at(1.0)).abs() < 1e-6 && (candle[1] - at(-1.0)).abs() < 1e-6);
    }
}
