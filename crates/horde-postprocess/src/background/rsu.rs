//! The blocks of the U²-Net family: `REBNCONV` (a 3×3 convolution, batch norm, ReLU) and the
//! residual U-blocks `RSU7` … `RSU4` and `RSU4F` they form, with the max pooling (ceil mode)
//! and bilinear resizing (`align_corners=False`) between their levels.
//!
//! Batch norm runs in eval mode only, so it is folded into the convolution at load time (one
//! convolution a level instead of a convolution and four broadcasts). Widths come from the
//! tensors; depths from which `rebnconvN` keys exist.

use super::Tensors;
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;
use horde_diffusion::nn::{conv, Conv2d};
use std::collections::HashMap;

/// PyTorch's `BatchNorm2d` default.
const BATCH_NORM_EPS: f64 = 1e-5;

/// A 3×3 convolution, dilated or not, with its bias.
pub enum Conv3x3 {
    /// Dilation 1: the diffusion engine's fast kernels.
    Plain(Conv2d),
    /// Dilation > 1 (padding = dilation, as `REBNCONV` sets it): candle's convolution.
    Dilated {
        weight: Tensor,
        bias: Tensor,
        dilation: usize,
    },
}

impl Conv3x3 {
    /// From a weight `[out, in, 3, 3]` and bias `[out]`.
    pub fn new(weight: Tensor, bias: Tensor, dilation: usize) -> Result<Self> {
        if dilation == 1 {
            let (out_c, in_c, _, _) = weight.dims4()?;
            let tensors = HashMap::from([("weight".to_string(), weight), ("bias".into(), bias)]);
            let device = tensors["weight"].device().clone();
            let vb = VarBuilder::from_tensors(tensors, DType::F32, &device);
            return Ok(Conv3x3::Plain(conv(in_c, out_c, 3, 1, 1, vb)?));
        }
        let bias = bias.reshape((1, (), 1, 1))?;
        Ok(Conv3x3::Dilated {
            weight,
            bias,
            dilation,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Conv3x3::Plain(conv) => conv.forward(x),
            Conv3x3::Dilated {
                weight,
                bias,
                dilation,
            } => x
                .conv2d(weight, *dilation, 1, *dilation, 1)?
                .broadcast_add(bias),
        }
    }
}

/// `REBNCONV`: convolution, batch norm (folded in), ReLU.
pub struct ConvBnRelu {
    conv: Conv3x3,
}

impl ConvBnRelu {
    /// The block at `prefix` (`…conv_s1.{weight,bias}`, `…bn_s1.{weight,bias,running_mean,
    /// running_var}`), its batch norm folded into the convolution.
    pub fn load(tensors: &Tensors, prefix: &str, dilation: usize) -> std::result::Result<Self, String> {
        let weight = tensors.get(&format!("{prefix}.conv_s1.weight"))?;
        let bias = tensors.get(&format!("{prefix}.conv_s1.bias"))?;
        let bn = |name: &str| tensors.get(&format!("{prefix}.bn_s1.{name}"));
        let (gamma, beta, mean, var) = (
            bn("weight")?,
            bn("bias")?,
            bn("running_mean")?,
            bn("running_var")?,
        );
        let fold = || -> Result<Conv3x3> {
            let (out_c, _, k_h, k_w) = weight.dims4()?;
            if (k_h, k_w) != (3, 3) {
                candle_core::bail!("{prefix}: a {k_h}×{k_w} kernel where 3×3 is expected");
            }
            // y = γ (conv(x) + b − μ) / √(σ² + ε) + β
            let scale = (gamma / (var + BATCH_NORM_EPS)?.sqrt()?)?;
            let weight = weight.broadcast_mul(&scale.reshape((out_c, 1, 1, 1))?)?;
            let bias = ((bias - mean)? * &scale)?.add(&beta)?;
            Conv3x3::new(weight, bias, dilation)
        };
        Ok(ConvBnRelu {
            conv: fold().map_err(|e| format!("{prefix}: {e}"))?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv.forward(x)?.relu()
    }
}

/// `MaxPool2d(2, stride=2, ceil_mode=True)`: an odd side's last row or column is pooled alone
/// (repeating the edge does that, since max(v, v) = v).
pub fn max_pool_ceil(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    x.pad_with_same(2, 0, h % 2)?
        .pad_with_same(3, 0, w % 2)?
        .max_pool2d(2)
}

/// `F.interpolate(x, size, mode="bilinear", align_corners=False)`: each output pixel samples
/// the input at `(i + 0.5)·in/out − 0.5` (clamped at 0), between two neighbours.
pub fn resize_bilinear(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    resize_axis(&resize_axis(x, 2, h)?, 3, w)
}

/// `_upsample_like(src, tar)`: `src` resized bilinearly to `tar`'s height and width.
pub fn upsample_like(src: &Tensor, tar: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = tar.dims4()?;
    resize_bilinear(src, h, w)
}

fn resize_axis(x: &Tensor, dim: usize, out_len: usize) -> Result<Tensor> {
    let in_len = x.dim(dim)?;
    if in_len == out_len {
        return Ok(x.clone());
    }
    let scale = in_len as f32 / out_len as f32;
    let (mut lo, mut hi, mut w_lo, mut w_hi) = (vec![], vec![], vec![], vec![]);
    for i in 0..out_len {
        let src = (scale * (i as f32 + 0.5) - 0.5).max(0.0);
        let i0 = (src as usize).min(in_len - 1);
        let frac = (src - i0 as f32).min(1.0);
        lo.push(i0 as u32);
        hi.push((i0 + 1).min(in_len - 1) as u32);
        w_lo.push(1.0 - frac);
        w_hi.push(frac);
    }
    let device = x.device();
    let mut shape = vec![1usize; x.rank()];
    shape[dim] = out_len;
    let weights = |w: Vec<f32>| Tensor::from_vec(w, shape.as_slice(), device);
    let a = x.index_select(&Tensor::new(lo, device)?, dim)?;
    let b = x.index_select(&Tensor::new(hi, device)?, dim)?;
    a.broadcast_mul(&weights(w_lo)?)? + b.broadcast_mul(&weights(w_hi)?)?
}

/// A residual U-block: `RSU{L}` (levels joined by max pooling and bilinear upsampling, the
/// deepest level dilated by 2) or `RSU4F` (no resampling; level `i` dilated by 2^(i−1)).
pub struct Rsu {
    input: ConvBnRelu,
    /// `rebnconv1` … `rebnconv{L}`.
    encoder: Vec<ConvBnRelu>,
    /// `rebnconv1d` … `rebnconv{L−1}d`.
    decoder: Vec<ConvBnRelu>,
    fused: bool,
}

impl Rsu {
    /// The block at `prefix`, with as many levels as it has `rebnconvN` tensors; `fused` for
    /// an `RSU4F`, which the keys cannot tell from an `RSU4` (the architecture places them).
    pub fn load(tensors: &Tensors, prefix: &str, fused: bool) -> std::result::Result<Self, String> {
        let levels = (1..)
            .take_while(|n| tensors.has(&format!("{prefix}.rebnconv{n}.conv_s1.weight")))
            .count();
        if !(3..=7).contains(&levels) || (fused && levels != 4) {
            return Err(format!(
                "{prefix}: {levels} levels (`rebnconvN`), not an RSU{}",
                if fused { "4F" } else { "4 … RSU7" }
            ));
        }
        let dilation = |level: usize| match (fused, level == levels) {
            (true, _) => 1 << (level - 1),
            (false, true) => 2,
            (false, false) => 1,
        };
        let input = ConvBnRelu::load(tensors, &format!("{prefix}.rebnconvin"), 1)?;
        let encoder = (1..=levels)
            .map(|n| ConvBnRelu::load(tensors, &format!("{prefix}.rebnconv{n}"), dilation(n)))
            .collect::<std::result::Result<_, _>>()?;
        let decoder = (1..levels)
            .map(|n| {
                let d = if fused { dilation(n) } else { 1 };
                ConvBnRelu::load(tensors, &format!("{prefix}.rebnconv{n}d"), d)
            })
            .collect::<std::result::Result<_, _>>()?;
        Ok(Rsu {
            input,
            encoder,
            decoder,
            fused,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let levels = self.encoder.len();
        let hxin = self.input.forward(x)?;
        // hx[i] is level i+1's output; each level below the first sees the one above it pooled
        // (unless fused), the deepest sees the one above it as is.
        let mut hx = vec![self.encoder[0].forward(&hxin)?];
        for level in 1..levels {
            let above = &hx[level - 1];
            let input = if self.fused || level == levels - 1 {
                above.clone()
            } else {
                max_pool_ceil(above)?
            };
            hx.push(self.encoder[level].forward(&input)?);
        }
        let mut d = self.decoder[levels - 2].forward(&Tensor::cat(&[&hx[levels - 1], &hx[levels - 2]], 1)?)?;
        for level in (0..levels - 2).rev() {
            let skip = &hx[level];
            let up = if self.fused {
                d
            } else {
                upsample_like(&d, skip)?
            };
            d = self.decoder[level].forward(&Tensor::cat(&[&up, skip], 1)?)?;
        }
        d + hxin
    }
}

