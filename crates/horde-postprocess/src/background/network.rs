//! The two-level U-structure shared by U²-Net, U²-NetP and ISNet (DIS's `ISNetDIS`): six
//! encoder stages (RSU7, RSU6, RSU5, RSU4, RSU4F, RSU4F) joined by ceil-mode max pooling, five
//! decoder stages (RSU4F, RSU4, RSU5, RSU6, RSU7) each fed its upsampled predecessor beside
//! the encoder's skip, and a 3×3 side convolution on each decoder stage and on stage 6.
//!
//! Where they differ:
//! * U²-Net / U²-NetP upsample the side outputs to side 1's size and fuse all six with a 1×1
//!   `outconv`; the outputs are `sigmoid` of `[fused, side1, …, side6]`.
//! * ISNet first runs a stride-2 `conv_in` (no batch norm; its `pool_in` exists but its
//!   forward does not call it), has no fusion, and upsamples every side output to the input's
//!   size; the outputs are `sigmoid` of `[side1, …, side6]`.
//!
//! In both, the first output is the mask rembg uses. Widths are whatever the tensors say, so
//! the published checkpoints and narrow test ones load alike.

use super::rsu::{max_pool_ceil, upsample_like, Rsu};
use super::Tensors;
use candle_core::{DType, Module, Tensor};
use candle_nn::VarBuilder;
use horde_diffusion::nn::{conv, Conv2d};
use std::collections::HashMap;
use std::result::Result;

const ENCODER: [&str; 6] = ["stage1", "stage2", "stage3", "stage4", "stage5", "stage6"];
const DECODER: [&str; 5] = ["stage5d", "stage4d", "stage3d", "stage2d", "stage1d"];
/// The stages built as RSU4F (their keys are an RSU4's).
const FUSED: [&str; 3] = ["stage5", "stage6", "stage5d"];

/// A U²-Net-family network ready to run.
pub struct SalientNet {
    /// ISNet's stride-2 `conv_in`.
    stem: Option<Conv2d>,
    encoder: Vec<Rsu>,
    /// `stage5d` … `stage1d`.
    decoder: Vec<Rsu>,
    /// `side1` … `side6`.
    sides: Vec<Conv2d>,
    /// U²-Net's 1×1 `outconv` over the six side outputs.
    fuse: Option<Conv2d>,
}

impl SalientNet {
    /// Builds the network from its tensors: with `conv_in` (ISNet) or `outconv` (U²-Net).
    pub fn load(tensors: &Tensors) -> std::result::Result<Self, String> {
        let stem = match tensors.has("conv_in.weight") {
            true => Some(plain_conv(tensors, "conv_in", 2, 1)?),
            false => None,
        };
        let fuse = match tensors.has("outconv.weight") {
            true => Some(plain_conv(tensors, "outconv", 1, 0)?),
            false => None,
        };
        let rsu = |name: &&str| Rsu::load(tensors, name, FUSED.contains(name));
        let encoder: Vec<Rsu> = ENCODER.iter().map(rsu).collect::<Result<_, _>>()?;
        let decoder: Vec<Rsu> = DECODER.iter().map(rsu).collect::<Result<_, _>>()?;
        let sides: Vec<(Conv2d, (usize, usize))> = (1..=6)
            .map(|n| plain_conv(tensors, &format!("side{n}"), 1, 1))
            .collect::<Result<_, _>>()?;
        check_wiring(&stem, &encoder, &decoder, &sides, &fuse)?;
        Ok(SalientNet {
            stem: stem.map(|(conv, _)| conv),
            encoder,
            decoder,
            sides: sides.into_iter().map(|(conv, _)| conv).collect(),
            fuse: fuse.map(|(conv, _)| conv),
        })
    }

    /// `[1, 3, H, W]` (a normalised image) → the network's outputs, each `[1, 1, H, W]` in
    /// `(0, 1)`; the first is the mask.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        let mut hx = match &self.stem {
            Some(stem) => stem.forward(x)?,
            None => x.clone(),
        };
        // Encoder: every stage after the first sees the previous one pooled.
        let mut skips = Vec::with_capacity(6);
        for (n, stage) in self.encoder.iter().enumerate() {
            if n > 0 {
                hx = max_pool_ceil(&hx)?;
            }
            hx = stage.forward(&hx)?;
            skips.push(hx.clone());
        }
        // Decoder: stage kd sees stage (k+1)d (or 6) upsampled to stage k's size, beside it.
        let mut decoded = Vec::with_capacity(5);
        let mut below = skips[5].clone();
        for (stage, skip) in self.decoder.iter().zip(skips[..5].iter().rev()) {
            let up = upsample_like(&below, skip)?;
            below = stage.forward(&Tensor::cat(&[&up, skip], 1)?)?;
            decoded.push(below.clone());
        }
        // Side outputs from stage 1d, 2d, …, 5d and 6.
        let sources = decoded.iter().rev().chain(std::iter::once(&skips[5]));
        let sides: Vec<Tensor> = self
            .sides
            .iter()
            .zip(sources)
            .map(|(side, source)| side.forward(source))
            .collect::<candle_core::Result<_>>()?;
        let outputs = match &self.fuse {
            Some(fuse) => {
                let target = &sides[0];
                let mut all = vec![target.clone()];
                for side in &sides[1..] {
                    all.push(upsample_like(side, target)?);
                }
                let fused = fuse.forward(&Tensor::cat(&all, 1)?)?;
                std::iter::once(fused).chain(all).collect()
            }
            None => sides
                .iter()
                .map(|side| upsample_like(side, x))
                .collect::<candle_core::Result<Vec<_>>>()?,
        };
        outputs.iter().map(candle_nn::ops::sigmoid).collect()
    }
}

/// A convolution with its bias and no batch norm (`conv_in`, `side{n}`, `outconv`), and its
/// `(in, out)` channels.
fn plain_conv(
    tensors: &Tensors,
    name: &str,
    stride: usize,
    padding: usize,
) -> Result<(Conv2d, (usize, usize)), String> {
    let weight = tensors.get(&format!("{name}.weight"))?;
    let bias = tensors.get(&format!("{name}.bias"))?;
    let (out_c, in_c, k, _) = weight.dims4().map_err(|e| format!("{name}.weight: {e}"))?;
    let device = weight.device().clone();
    let map = HashMap::from([("weight".to_string(), weight), ("bias".to_string(), bias)]);
    let vb = VarBuilder::from_tensors(map, DType::F32, &device);
    let conv = conv(in_c, out_c, k, stride, padding, vb).map_err(|e| format!("{name}: {e}"))?;
    Ok((conv, (in_c, out_c)))
}

/// Every stage takes what the wiring gives it: the image (or ISNet's `conv_in`) into stage 1,
/// each stage the one before, each decoder stage the one below beside its skip, each side
/// convolution its stage, and `outconv` the six sides.
fn check_wiring(
    stem: &Option<(Conv2d, (usize, usize))>,
    encoder: &[Rsu],
    decoder: &[Rsu],
    sides: &[(Conv2d, (usize, usize))],
    fuse: &Option<(Conv2d, (usize, usize))>,
) -> Result<(), String> {
    let out = |stage: &Rsu| stage.channels().1;
    let mut expected: Vec<(String, usize, usize)> = vec![];
    let image_channels = match stem {
        Some((_, (in_c, out_c))) => {
            expected.push(("conv_in".into(), *in_c, 3));
            *out_c
        }
        None => 3,
    };
    expected.push(("stage1".into(), encoder[0].channels().0, image_channels));
    for n in 1..6 {
        let want = out(&encoder[n - 1]);
        expected.push((ENCODER[n].into(), encoder[n].channels().0, want));
    }
    let mut below = out(&encoder[5]);
    for (n, stage) in decoder.iter().enumerate() {
        let skip = out(&encoder[4 - n]);
        expected.push((DECODER[n].into(), stage.channels().0, below + skip));
        below = out(stage);
    }
    let sources = decoder.iter().rev().chain(std::iter::once(&encoder[5]));
    for (n, ((_, (in_c, out_c)), source)) in sides.iter().zip(sources).enumerate() {
        expected.push((format!("side{}", n + 1), *in_c, out(source)));
        expected.push((format!("side{} (out)", n + 1), *out_c, 1));
    }
    if let Some((_, (in_c, _))) = fuse {
        expected.push(("outconv".into(), *in_c, 6));
    }
    match expected.into_iter().find(|(_, got, want)| got != want) {
        Some((name, got, want)) => Err(format!(
            "`{name}` has {got} channels where the network's wiring gives it {want}"
        )),
        None => Ok(()),
    }
}
