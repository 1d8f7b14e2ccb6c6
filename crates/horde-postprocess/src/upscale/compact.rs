//! The compact SRVGG network (basicsr's `SRVGGNetCompact`, Real-ESRGAN's
//! `realesr-general-x4v3` and `realesr-animevideov3`): convolutions with PReLU between them
//! (`body.0`, `body.1`, … `body.{2n+2}`), the last one giving `out · scale²` channels that a
//! pixel shuffle spreads, added to the input enlarged by nearest neighbour. The number of
//! convolutions and the scale come from the tensors.

use crate::tensors::{pixel_shuffle, prelu};
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use horde_diffusion::nn::{conv, Conv2d};
use std::collections::HashMap;

/// What the tensors say about the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub features: usize,
    /// Convolutions between the first and the last.
    pub convs: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub scale: usize,
}

/// Whether the tensors are an SRVGG network's (PReLU after the first convolution).
pub fn recognises(tensors: &HashMap<String, Tensor>) -> bool {
    tensors.contains_key("body.0.weight")
        && tensors
            .get("body.1.weight")
            .is_some_and(|t| t.dims().len() == 1)
}

pub fn shape_of(tensors: &HashMap<String, Tensor>) -> std::result::Result<Shape, String> {
    let convs: Vec<usize> = (0..)
        .step_by(2)
        .take_while(|i| tensors.contains_key(&format!("body.{i}.weight")))
        .collect();
    let last = *convs.last().ok_or("no tensor `body.0.weight`")?;
    if convs.len() < 2 {
        return Err("an SRVGG network has at least two convolutions".into());
    }
    let first = tensors["body.0.weight"].dims().to_vec();
    let last_out = tensors[&format!("body.{last}.weight")].dims()[0];
    let in_channels = first[1];
    let out_channels = in_channels;
    let ratio = last_out / out_channels;
    let scale = (1..=8)
        .find(|s| s * s == ratio && last_out.is_multiple_of(out_channels))
        .ok_or_else(|| format!("the last convolution gives {last_out} channels: no scale"))?;
    Ok(Shape {
        features: first[0],
        convs: convs.len() - 2,
        in_channels,
        out_channels,
        scale,
    })
}

/// An SRVGG network ready to run.
pub struct Compact {
    pub shape: Shape,
    convs: Vec<Conv2d>,
    slopes: Vec<Tensor>,
}

impl Compact {
    pub fn new(shape: Shape, vb: VarBuilder<'_>) -> Result<Self> {
        let nf = shape.features;
        let mut convs = vec![conv(shape.in_channels, nf, 3, 1, 1, vb.pp("body.0"))?];
        let mut slopes = vec![vb.pp("body.1").get(nf, "weight")?];
        for n in 1..=shape.convs {
            convs.push(conv(nf, nf, 3, 1, 1, vb.pp(format!("body.{}", 2 * n)))?);
            slopes.push(vb.pp(format!("body.{}", 2 * n + 1)).get(nf, "weight")?);
        }
        let out = shape.out_channels * shape.scale * shape.scale;
        let last = 2 * shape.convs + 2;
        convs.push(conv(nf, out, 3, 1, 1, vb.pp(format!("body.{last}")))?);
        Ok(Compact {
            shape,
            convs,
            slopes,
        })
    }

    /// `[B, C, H, W]` → `[B, C, H·scale, W·scale]`, unclamped.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut out = x.clone();
        for (conv, slope) in self.convs.iter().zip(&self.slopes) {
            out = prelu(&conv.forward(&out)?, slope)?;
        }
        let last = self.convs.last().expect("at least two convolutions");
        let out = pixel_shuffle(&last.forward(&out)?, self.shape.scale)?;
        let (_, _, h, w) = x.dims4()?;
        let s = self.shape.scale;
        out + x.upsample_nearest2d(h * s, w * s)?
    }
}
