//! ESRGAN's RRDBNet (Real-ESRGAN's `RRDBNet`, basicsr's `rrdbnet_arch`), in the new key layout
//! (`conv_first`, `body.N.rdbK.convJ`, `conv_body`, `conv_upN`, `conv_hr`, `conv_last`) and the
//! old one of the original ESRGAN and most community models (`model.0`,
//! `model.1.sub.N.RDBK.convJ.0`, …), which [`to_new_layout`] renames. The shape comes from the
//! tensors: features from `conv_first`, growth channels from a block's first convolution (not
//! assumed to be 32), blocks by counting, the upsampling convolutions by counting, and a
//! pixel-unshuffle (×2 and ×1 models) from `conv_first`'s input channels.

use crate::tensors::{leaky_relu_in_place, pixel_unshuffle};
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use horde_diffusion::nn::{conv, Conv2d};
use std::collections::HashMap;

/// What the tensors say about the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub features: usize,
    pub growth: usize,
    pub blocks: usize,
    /// Nearest-neighbour ×2 steps, each followed by a convolution.
    pub upsamplings: usize,
    /// The pixel-unshuffle applied first (1 when none).
    pub unshuffle: usize,
    pub in_channels: usize,
    pub out_channels: usize,
}

impl Shape {
    /// Output pixels per input pixel, per side.
    pub fn scale(&self) -> usize {
        (1 << self.upsamplings) / self.unshuffle
    }
}

/// Whether the tensors are an RRDBNet's, in either layout.
pub fn recognises(tensors: &HashMap<String, Tensor>) -> bool {
    tensors.contains_key("conv_first.weight")
        || (tensors.contains_key("model.0.weight")
            && tensors.keys().any(|k| k.starts_with("model.1.sub.0.RDB1.")))
}

/// The old layout's names in the new one (a new-layout map is returned unchanged).
pub fn to_new_layout(tensors: HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    if tensors.contains_key("conv_first.weight") {
        return tensors;
    }
    // The top-level convolutions after the trunk, in order: the upsampling ones, then
    // `conv_hr`, then `conv_last`.
    let mut tops: Vec<usize> = tensors
        .keys()
        .filter_map(|k| {
            k.strip_prefix("model.")?
                .strip_suffix(".weight")?
                .parse()
                .ok()
        })
        .filter(|&i| i >= 2)
        .collect();
    tops.sort_unstable();
    let ups = tops.len().saturating_sub(2);
    let blocks = tensors
        .keys()
        .filter_map(|k| {
            let rest = k.strip_prefix("model.1.sub.")?;
            let (n, rest) = rest.split_once('.')?;
            rest.starts_with("RDB").then(|| n.parse::<usize>().ok())?
        })
        .max()
        .map_or(0, |n| n + 1);
    let mut renamed = HashMap::new();
    for (name, tensor) in tensors {
        let new = if let Some(rest) = name.strip_prefix("model.0.") {
            format!("conv_first.{rest}")
        } else if let Some(rest) = name.strip_prefix("model.1.sub.") {
            let (n, rest) = rest.split_once('.').unwrap_or((rest, ""));
            if n.parse() == Ok(blocks) {
                format!("conv_body.{rest}")
            } else {
                // RDB1.conv1.0.weight → rdb1.conv1.weight
                let rest = rest.replacen("RDB", "rdb", 1).replacen(".0.", ".", 1);
                format!("body.{n}.{rest}")
            }
        } else if let Some(rest) = name.strip_prefix("model.") {
            let (i, param) = rest.split_once('.').unwrap_or((rest, ""));
            match tops.iter().position(|t| i.parse() == Ok(*t)) {
                Some(p) if p < ups => format!("conv_up{}.{param}", p + 1),
                Some(p) if p == ups => format!("conv_hr.{param}"),
                Some(_) => format!("conv_last.{param}"),
                None => name,
            }
        } else {
            name
        };
        renamed.insert(new, tensor);
    }
    renamed
}

/// The shape of a new-layout RRDBNet, from its tensors.
pub fn shape_of(tensors: &HashMap<String, Tensor>) -> std::result::Result<Shape, String> {
    let dims = |name: &str| -> std::result::Result<Vec<usize>, String> {
        tensors
            .get(name)
            .map(|t| t.dims().to_vec())
            .ok_or_else(|| format!("no tensor `{name}`"))
    };
    let first = dims("conv_first.weight")?;
    let last = dims("conv_last.weight")?;
    let growth = dims("body.0.rdb1.conv1.weight")?[0];
    let blocks = (0..)
        .take_while(|n| tensors.contains_key(&format!("body.{n}.rdb1.conv1.weight")))
        .count();
    let upsamplings = (1..)
        .take_while(|n| tensors.contains_key(&format!("conv_up{n}.weight")))
        .count();
    let (features, in_total, out_channels) = (first[0], first[1], last[0]);
    // Image channels in = out (RGB, or grey): the rest of `conv_first`'s input channels come
    // from the pixel-unshuffle.
    let unshuffle = match (in_total % out_channels, in_total / out_channels) {
        (0, 1) => 1,
        (0, 4) => 2,
        (0, 16) => 4,
        _ => {
            return Err(format!(
                "conv_first takes {in_total} channels for {out_channels} out: not an RGB or grey RRDBNet"
            ))
        }
    };
    Ok(Shape {
        features,
        growth,
        blocks,
        upsamplings,
        unshuffle,
        in_channels: in_total / (unshuffle * unshuffle),
        out_channels,
    })
}

struct DenseBlock {
    convs: [Conv2d; 5],
}

impl DenseBlock {
    fn new(features: usize, growth: usize, vb: VarBuilder<'_>) -> Result<Self> {
        let conv_n = |n: usize| {
            let out = if n == 5 { features } else { growth };
            conv(
                features + (n - 1) * growth,
                out,
                3,
                1,
                1,
                vb.pp(format!("conv{n}")),
            )
        };
        Ok(DenseBlock {
            convs: [conv_n(1)?, conv_n(2)?, conv_n(3)?, conv_n(4)?, conv_n(5)?],
        })
    }

    /// The block on `x`, each convolution reading the input and every output before it. They
    /// are gathered in `scratch` (`[B, features + 4·growth, H, W]`, reused by every block)
    /// rather than concatenated anew for each convolution: at batch 1 each prefix of its
    /// channels is itself contiguous, so a convolution reads it in place.
    fn forward(&self, x: &Tensor, scratch: &Tensor) -> Result<Tensor> {
        let features = x.dim(1)?;
        scratch.slice_set(x, 1, 0)?;
        let mut width = features;
        for conv in &self.convs[..4] {
            let out = conv.forward(&scratch.narrow(1, 0, width)?)?;
            let grown = out.dim(1)?;
            scratch.slice_set(&out, 1, width)?;
            leaky_relu_in_place(&scratch.narrow(1, width, grown)?, 0.2)?;
            width += grown;
        }
        let x5 = self.convs[4].forward(scratch)?;
        x5.affine(0.2, 0.0)? + x
    }
}

struct ResidualInResidual {
    blocks: [DenseBlock; 3],
}

impl ResidualInResidual {
    fn forward(&self, x: &Tensor, scratch: &Tensor) -> Result<Tensor> {
        let mut out = x.clone();
        for block in &self.blocks {
            out = block.forward(&out, scratch)?;
        }
        out.affine(0.2, 0.0)? + x
    }
}

/// An RRDBNet ready to run.
pub struct Rrdbnet {
    pub shape: Shape,
    conv_first: Conv2d,
    body: Vec<ResidualInResidual>,
    conv_body: Conv2d,
    ups: Vec<Conv2d>,
    conv_hr: Conv2d,
    conv_last: Conv2d,
}

impl Rrdbnet {
    pub fn new(shape: Shape, vb: VarBuilder<'_>) -> Result<Self> {
        let nf = shape.features;
        let in_total = shape.in_channels * shape.unshuffle * shape.unshuffle;
        let body = (0..shape.blocks)
            .map(|n| {
                let vb = vb.pp(format!("body.{n}"));
                let block = |k: usize| DenseBlock::new(nf, shape.growth, vb.pp(format!("rdb{k}")));
                Ok(ResidualInResidual {
                    blocks: [block(1)?, block(2)?, block(3)?],
                })
            })
            .collect::<Result<_>>()?;
        Ok(Rrdbnet {
            shape,
            conv_first: conv(in_total, nf, 3, 1, 1, vb.pp("conv_first"))?,
            body,
            conv_body: conv(nf, nf, 3, 1, 1, vb.pp("conv_body"))?,
            ups: (1..=shape.upsamplings)
                .map(|n| conv(nf, nf, 3, 1, 1, vb.pp(format!("conv_up{n}"))))
                .collect::<Result<_>>()?,
            conv_hr: conv(nf, nf, 3, 1, 1, vb.pp("conv_hr"))?,
            conv_last: conv(nf, shape.out_channels, 3, 1, 1, vb.pp("conv_last"))?,
        })
    }

    /// `[B, C, H, W]` in `[0, 1]` → `[B, C, H·scale, W·scale]`, unclamped. `H` and `W` must be
    /// multiples of the unshuffle factor.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = match self.shape.unshuffle {
            1 => x.clone(),
            s => pixel_unshuffle(x, s)?,
        };
        let feat = self.conv_first.forward(&x)?;
        let (b, features, h, w) = feat.dims4()?;
        let dense = features + 4 * self.shape.growth;
        let scratch = Tensor::zeros((b, dense, h, w), feat.dtype(), feat.device())?;
        let mut trunk = feat.clone();
        for block in &self.body {
            trunk = block.forward(&trunk, &scratch)?;
        }
        let mut feat = (feat + self.conv_body.forward(&trunk)?)?;
        for up in &self.ups {
            let (_, _, h, w) = feat.dims4()?;
            let up = up.forward(&feat.upsample_nearest2d(h * 2, w * 2)?)?;
            feat = leaky_relu_in_place(&up, 0.2)?;
        }
        let hr = leaky_relu_in_place(&self.conv_hr.forward(&feat)?, 0.2)?;
        self.conv_last.forward(&hr)
    }
}
