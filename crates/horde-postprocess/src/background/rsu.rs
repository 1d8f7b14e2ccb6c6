//! The blocks of the U²-Net family: `REBNCONV` (a 3×3 convolution, batch norm, ReLU) and the
//! residual U-blocks `RSU7` … `RSU4` and `RSU4F` they form, with the max pooling (ceil mode)
//! and bilinear resizing (`align_corners=False`) between their levels (`super::maps`).
//!
//! Batch norm runs in eval mode only, so it is folded into the convolution at load time (one
//! convolution a level instead of a convolution and four broadcasts). Widths come from the
//! tensors; depths from which `rebnconvN` keys exist.

use super::Tensors;
use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;
use horde_diffusion::nn::{conv, conv_dilated, Conv2d};
use std::collections::HashMap;

/// PyTorch's `BatchNorm2d` default.
const BATCH_NORM_EPS: f64 = 1e-5;

/// A 3×3 convolution with its bias, dilated by `dilation` and padded by as much (as
/// `REBNCONV` sets it): the diffusion engine's kernels (its dilated ones on `kernels::im2col`,
/// where candle's own took about 3.7× as long).
pub struct Conv3x3 {
    conv: Conv2d,
}

impl Conv3x3 {
    /// From a weight `[out, in, 3, 3]` and bias `[out]`.
    pub fn new(weight: Tensor, bias: Tensor, dilation: usize) -> Result<Self> {
        let (out_c, in_c, _, _) = weight.dims4()?;
        let device = weight.device().clone();
        let tensors = HashMap::from([("weight".to_string(), weight), ("bias".into(), bias)]);
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &device);
        let conv = if dilation == 1 {
            conv(in_c, out_c, 3, 1, 1, vb)?
        } else {
            conv_dilated(in_c, out_c, 3, dilation, dilation, vb)?
        };
        Ok(Conv3x3 { conv })
    }

    /// The convolution, then ReLU, applied as the outputs are written.
    pub fn forward_then_relu(&self, x: &Tensor) -> Result<Tensor> {
        self.conv.forward_then_relu(x)
    }
}

/// `REBNCONV`: convolution, batch norm (folded in), ReLU.
pub struct ConvBnRelu {
    conv: Conv3x3,
    /// `(in, out)` channels, for checking the wiring at load time.
    pub channels: (usize, usize),
}

impl ConvBnRelu {
    /// The block at `prefix` (`…conv_s1.{weight,bias}`, `…bn_s1.{weight,bias,running_mean,
    /// running_var}`), its batch norm folded into the convolution.
    pub fn load(
        tensors: &Tensors,
        prefix: &str,
        dilation: usize,
    ) -> std::result::Result<Self, String> {
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
        let (out_c, in_c) = (weight.dims()[0], weight.dims().get(1).copied().unwrap_or(0));
        Ok(ConvBnRelu {
            conv: fold().map_err(|e| format!("{prefix}: {e}"))?,
            channels: (in_c, out_c),
        })
    }

    /// The ReLU is applied as the convolution writes its outputs (no second pass over them).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv.forward_then_relu(x)
    }
}

pub use super::maps::max_pool_ceil;

/// `F.interpolate(x, size, mode="bilinear", align_corners=False)`; an unchanged size is
/// returned as is, as PyTorch does.
pub fn resize_bilinear(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (_, _, in_h, in_w) = x.dims4()?;
    if (in_h, in_w) == (h, w) {
        return Ok(x.clone());
    }
    super::maps::resize_bilinear(x, h, w)
}

/// `_upsample_like(src, tar)`: `src` resized bilinearly to `tar`'s height and width.
pub fn upsample_like(src: &Tensor, tar: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = tar.dims4()?;
    resize_bilinear(src, h, w)
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
        let rsu = Rsu {
            input,
            encoder,
            decoder,
            fused,
        };
        rsu.check_wiring().map_err(|e| format!("{prefix}: {e}"))?;
        Ok(rsu)
    }

    /// Channels in and out of the block.
    pub fn channels(&self) -> (usize, usize) {
        self.input.channels
    }

    /// Each level takes what the one before gives: `rebnconv1` the block's width, the others
    /// the middle width, the decoder's levels twice the middle width (a skip beside it).
    fn check_wiring(&self) -> std::result::Result<(), String> {
        let (_, out) = self.input.channels;
        let mid = self.encoder[0].channels.1;
        let encoder = self.encoder.iter().enumerate().map(|(i, level)| {
            let input = if i == 0 { out } else { mid };
            (format!("rebnconv{}", i + 1), level.channels, (input, mid))
        });
        let decoder = self.decoder.iter().enumerate().map(|(i, level)| {
            let output = if i == 0 { out } else { mid };
            (
                format!("rebnconv{}d", i + 1),
                level.channels,
                (2 * mid, output),
            )
        });
        match encoder.chain(decoder).find(|(_, got, want)| got != want) {
            Some((name, got, want)) => Err(format!(
                "`{name}` takes {} channels to {} where the block's widths (out {out}, middle \
                 {mid}) need {} to {}",
                got.0, got.1, want.0, want.1
            )),
            None => Ok(()),
        }
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
        let mut d = self.decoder[levels - 2]
            .forward(&Tensor::cat(&[&hx[levels - 1], &hx[levels - 2]], 1)?)?;
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
