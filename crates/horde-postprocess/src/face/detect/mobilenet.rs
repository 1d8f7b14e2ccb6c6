//! The mobilenet0.25 body of facexlib's `detection_mobilenet0.25_Final.pth`: facexlib's own
//! `MobileNetV1`, three stages (`body.stage1..3`) whose outputs feed the FPN. The first
//! block is a 3×3 convolution (`.0`) with BatchNorm (`.1`); every other block is depthwise
//! separable: a 3×3 depthwise convolution (`.0`, `.1`) and a 1×1 pointwise one (`.3`, `.4`),
//! each followed by leaky ReLU 0.1. Strides are MobileNetV1's, by position: 2,1,2,1,2,1 in
//! the first stage, 2 then 1s in the others. Widths and block counts come from the tensors.

use super::net::Weights;
use crate::tensors::leaky_relu;
use candle_core::{Module, Result, Tensor};
use horde_diffusion::nn::Conv2d;
use std::collections::HashMap;

const SLOPE: f64 = 0.1;

/// One depthwise-separable block: depthwise 3×3 (the stride), then pointwise 1×1.
struct Separable {
    depthwise: Depthwise,
    pointwise: Conv2d,
}

/// A depthwise 3×3 convolution (padding 1) as nine shifted, scaled copies of the input:
/// candle's grouped convolution runs one small convolution a channel, which made the
/// mobilenet body 2.7× slower than PyTorch's on a 512² image.
struct Depthwise {
    /// `[C, 1, 3, 3]`, BatchNorm folded in.
    weight: Tensor,
    /// `[1, C, 1, 1]`.
    bias: Tensor,
    stride: usize,
}

impl Depthwise {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let s = self.stride;
        let (out_h, out_w) = ((h - 1) / s + 1, (w - 1) / s + 1);
        // one zero before, and after as many as the last tap's strided window needs
        let padded = x
            .pad_with_zeros(2, 1, 2 + s * out_h - h - 1)?
            .pad_with_zeros(3, 1, 2 + s * out_w - w - 1)?;
        let mut sum = self.bias.broadcast_as((b, c, out_h, out_w))?.contiguous()?;
        for i in 0..3 {
            for j in 0..3 {
                let mut tap = padded.narrow(2, i, s * out_h)?.narrow(3, j, s * out_w)?;
                if s > 1 {
                    tap = tap
                        .reshape((b, c, out_h, s, out_w, s))?
                        .narrow(3, 0, 1)?
                        .narrow(5, 0, 1)?
                        .reshape((b, c, out_h, out_w))?;
                }
                let k = self
                    .weight
                    .narrow(2, i, 1)?
                    .narrow(3, j, 1)?
                    .reshape((1, c, 1, 1))?;
                sum = (sum + tap.broadcast_mul(&k)?)?;
            }
        }
        Ok(sum)
    }
}

/// The MobileNetV1 body, returning the outputs of its three stages.
pub(super) struct MobilenetBody {
    stem: Conv2d,
    stages: Vec<Vec<Separable>>,
}

/// Blocks in `body.stage{stage}`.
pub(super) fn blocks_in(tensors: &HashMap<String, Tensor>, stage: usize) -> usize {
    (0..)
        .take_while(|i| tensors.contains_key(&format!("body.stage{stage}.{i}.0.weight")))
        .count()
}

/// MobileNetV1's stride for block `index` of `stage`.
fn stride_of(stage: usize, index: usize) -> usize {
    match (stage, index) {
        (1, 0 | 2 | 4) | (2 | 3, 0) => 2,
        _ => 1,
    }
}

/// Block `prefix`'s depthwise convolution (`.0`) with its BatchNorm (`.1`) folded in.
fn depthwise(w: &Weights<'_>, prefix: &str, stride: usize) -> Result<Depthwise> {
    let (weight, bias) = w.depthwise_bn(&format!("{prefix}.0"), &format!("{prefix}.1"))?;
    let channels = weight.dim(0)?;
    Ok(Depthwise {
        weight,
        bias: bias.reshape((1, channels, 1, 1))?,
        stride,
    })
}

impl MobilenetBody {
    pub(super) fn new(w: &Weights<'_>) -> Result<Self> {
        let stem = w.conv_bn("body.stage1.0.0", "body.stage1.0.1", 2)?;
        let stages = (1..=3)
            .map(|stage| {
                let first = if stage == 1 { 1 } else { 0 };
                let blocks = blocks_in(w.tensors, stage);
                if blocks <= first {
                    candle_core::bail!("no tensor `body.stage{stage}.{first}.0.weight`");
                }
                (first..blocks)
                    .map(|i| {
                        let p = format!("body.stage{stage}.{i}");
                        Ok(Separable {
                            depthwise: depthwise(w, &p, stride_of(stage, i))?,
                            pointwise: w.conv_bn(&format!("{p}.3"), &format!("{p}.4"), 1)?,
                        })
                    })
                    .collect()
            })
            .collect::<Result<_>>()?;
        Ok(MobilenetBody { stem, stages })
    }

    pub(super) fn forward(&self, x: &Tensor) -> Result<[Tensor; 3]> {
        let mut x = leaky_relu(&self.stem.forward(x)?, SLOPE)?;
        let mut outs = Vec::with_capacity(3);
        for stage in &self.stages {
            for block in stage {
                x = leaky_relu(&block.depthwise.forward(&x)?, SLOPE)?;
                x = leaky_relu(&block.pointwise.forward(&x)?, SLOPE)?;
            }
            outs.push(x.clone());
        }
        let [c1, c2, c3]: [Tensor; 3] = outs.try_into().expect("three stages");
        Ok([c1, c2, c3])
    }
}
