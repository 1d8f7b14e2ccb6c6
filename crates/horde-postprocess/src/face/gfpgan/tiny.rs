//! A tiny random GFPGAN checkpoint in the published key layout, for tests and first runs
//! (`horde model tiny`): the structure of GFPGAN v1.4 (U-Net, SFT on half the channels, a
//! latent per layer, an 8-layer style MLP, stored noise) at 64² with 16-wide latents.
//!
//! Every tensor is random (none left at 0 or 1), drawn from a seeded generator with the same
//! scales as the fixture tool (`tools/postprocess-fixtures/gfpgan.py`), so activations stay of
//! order one through the network.

use super::Shape;
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// The tiny network's shape: out_size 64, num_style_feat 16, `narrow` 1/32, channel
/// multiplier 1 (the fixtures' hyper-parameters).
pub fn tiny_shape() -> Shape {
    Shape {
        out_size: 64,
        num_style_feat: 16,
        unet_channels: vec![8, 8, 8, 8, 4],
        decoder_channels: vec![16, 16, 16, 16, 8],
        condition_channels: vec![8, 8, 8, 4],
        different_w: true,
        sft_half: true,
        num_mlp: 8,
    }
}

/// Every tensor name of a GFPGANv1Clean state dict of `shape`, with its shape, in the order
/// PyTorch lists them.
pub fn key_layout(shape: &Shape) -> Vec<(String, Vec<usize>)> {
    let mut keys = Layout(Vec::new());
    let u = &shape.unet_channels;
    let top = u.len() - 1;
    keys.conv("conv_body_first", 3, u[top], 1);
    for k in 0..top {
        keys.res_block(&format!("conv_body_down.{k}"), u[top - k], u[top - k - 1]);
    }
    keys.conv("final_conv", u[0], u[0], 3);
    for k in 0..top {
        keys.res_block(&format!("conv_body_up.{k}"), u[k], u[k + 1]);
    }
    for k in 0..top {
        keys.conv(&format!("toRGB.{k}"), u[k + 1], 3, 1);
    }
    keys.linear("final_linear", u[0] * 16, shape.final_linear_width());
    decoder_layout(&mut keys, shape);
    for name in ["condition_scale", "condition_shift"] {
        for k in 0..top {
            keys.conv(&format!("{name}.{k}.0"), u[k + 1], u[k + 1], 3);
            keys.conv(
                &format!("{name}.{k}.2"),
                u[k + 1],
                shape.condition_channels[k],
                3,
            );
        }
    }
    keys.0
}

fn decoder_layout(keys: &mut Layout, shape: &Shape) {
    let (d, style) = (&shape.decoder_channels, shape.num_style_feat);
    let p = "stylegan_decoder";
    for m in 0..shape.num_mlp {
        keys.linear(&format!("{p}.style_mlp.{}", 2 * m + 1), style, style);
    }
    keys.push(format!("{p}.constant_input.weight"), vec![1, d[0], 4, 4]);
    keys.style_conv(&format!("{p}.style_conv1"), d[0], d[0], style);
    keys.rgb_conv(&format!("{p}.to_rgb1"), d[0], style);
    for l in 0..d.len() - 1 {
        keys.style_conv(&format!("{p}.style_convs.{}", 2 * l), d[l], d[l + 1], style);
        keys.style_conv(
            &format!("{p}.style_convs.{}", 2 * l + 1),
            d[l + 1],
            d[l + 1],
            style,
        );
    }
    for l in 0..d.len() - 1 {
        keys.rgb_conv(&format!("{p}.to_rgbs.{l}"), d[l + 1], style);
    }
    for j in 0..2 * d.len() - 1 {
        let side = 1 << ((j + 5) / 2);
        keys.push(format!("{p}.noises.noise{j}"), vec![1, 1, side, side]);
    }
}

struct Layout(Vec<(String, Vec<usize>)>);

impl Layout {
    fn push(&mut self, name: String, dims: Vec<usize>) {
        self.0.push((name, dims));
    }

    fn conv(&mut self, name: &str, c_in: usize, c_out: usize, k: usize) {
        self.push(format!("{name}.weight"), vec![c_out, c_in, k, k]);
        self.push(format!("{name}.bias"), vec![c_out]);
    }

    fn linear(&mut self, name: &str, d_in: usize, d_out: usize) {
        self.push(format!("{name}.weight"), vec![d_out, d_in]);
        self.push(format!("{name}.bias"), vec![d_out]);
    }

    fn res_block(&mut self, name: &str, c_in: usize, c_out: usize) {
        self.conv(&format!("{name}.conv1"), c_in, c_in, 3);
        self.conv(&format!("{name}.conv2"), c_in, c_out, 3);
        self.push(format!("{name}.skip.weight"), vec![c_out, c_in, 1, 1]);
    }

    fn modulated(&mut self, name: &str, c_in: usize, c_out: usize, k: usize, style: usize) {
        self.push(
            format!("{name}.modulated_conv.weight"),
            vec![1, c_out, c_in, k, k],
        );
        self.linear(&format!("{name}.modulated_conv.modulation"), style, c_in);
    }

    fn style_conv(&mut self, name: &str, c_in: usize, c_out: usize, style: usize) {
        self.modulated(name, c_in, c_out, 3, style);
        self.push(format!("{name}.weight"), vec![1]);
        self.push(format!("{name}.bias"), vec![1, c_out, 1, 1]);
    }

    fn rgb_conv(&mut self, name: &str, c_in: usize, style: usize) {
        self.modulated(name, c_in, 3, 1, style);
        self.push(format!("{name}.bias"), vec![1, 3, 1, 1]);
    }
}

/// The random tensors of a checkpoint of `shape`, by published name.
pub fn tiny_tensors(shape: &Shape, seed: u64) -> candle_core::Result<HashMap<String, Tensor>> {
    key_layout(shape)
        .into_iter()
        .map(|(name, dims)| {
            let mut rng = SplitMix(seed ^ fnv1a(&name));
            let (mean, std) = scale_of(&name, &dims);
            let count = dims.iter().product();
            let values: Vec<f32> = (0..count)
                .map(|_| (mean + std * rng.normal()) as f32)
                .collect();
            Ok((name, Tensor::from_vec(values, dims, &Device::Cpu)?))
        })
        .collect()
}

/// The mean and spread of a tensor's values, by its role (as `gfpgan.py`'s `randomize`).
fn scale_of(name: &str, dims: &[usize]) -> (f64, f64) {
    let fan_in = |from: usize| dims[from..].iter().product::<usize>() as f64;
    if name.ends_with("constant_input.weight") || name.contains(".noises.noise") {
        (0.0, 1.0)
    } else if name.ends_with("modulation.bias") {
        (1.0, 0.1)
    } else if name.ends_with("modulated_conv.weight") {
        (0.0, 1.0 / fan_in(2).sqrt())
    } else if name.starts_with("stylegan_decoder.") && name.ends_with(".weight") && dims.len() == 1
    {
        (0.0, 0.3) // a StyleConv's noise strength
    } else if name.ends_with(".bias") {
        (0.0, 0.05)
    } else {
        (0.0, (1.0 / fan_in(1).sqrt()).clamp(0.05, 0.5))
    }
}

/// Writes a tiny random GFPGAN ([`tiny_shape`]) to `path` as `.safetensors`.
pub fn write_tiny_checkpoint(path: &Path, seed: u64) -> Result<()> {
    let tensors = tiny_tensors(&tiny_shape(), seed)?;
    candle_core::safetensors::save(&tensors, path).map_err(|e| Error::Unreadable {
        path: path.display().to_string(),
        reason: format!("cannot write: {e}"),
    })
}

/// SplitMix64, with Box–Muller normals: enough randomness for test weights, no dependency.
struct SplitMix(u64);

impl SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
