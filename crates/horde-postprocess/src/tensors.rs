//! Reading a checkpoint's tensors (`.safetensors`, or PyTorch's `.pth` as the upscalers ship)
//! and the pixel rearrangements and activations the networks share.

use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// The tensors of a checkpoint, by name, in f32 on `device`. A `.pth` wrapping its state dict
/// in `params_ema` or `params` (as Real-ESRGAN's do) is unwrapped, preferring `params_ema`.
pub fn read_checkpoint(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let unreadable = |reason: String| Error::Unreadable {
        path: path.display().to_string(),
        reason,
    };
    if !path.exists() {
        return Err(unreadable("no such file".into()));
    }
    let is_safetensors = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    let tensors: Vec<(String, Tensor)> = if is_safetensors {
        candle_core::safetensors::load(path, device)
            .map_err(|e| unreadable(format!("not a complete safetensors file ({e})")))?
            .into_iter()
            .collect()
    } else {
        let mut found = None;
        for key in [Some("params_ema"), Some("params"), None] {
            if let Ok(read) = candle_core::pickle::read_all_with_key(path, key) {
                if !read.is_empty() {
                    found = Some(read);
                    break;
                }
            }
        }
        found.ok_or_else(|| unreadable("not a PyTorch checkpoint this build reads".into()))?
    };
    tensors
        .into_iter()
        .map(|(name, t)| Ok((name, t.to_device(device)?.to_dtype(DType::F32)?)))
        .collect::<candle_core::Result<_>>()
        .map_err(Error::Run)
}

/// The leaky ReLU of ESRGAN (slope `0.2` below zero).
pub fn leaky_relu(xs: &Tensor, slope: f64) -> candle_core::Result<Tensor> {
    xs.maximum(&(xs * slope)?)
}

/// PReLU with one slope a channel (`weight`: `[C]`).
pub fn prelu(xs: &Tensor, weight: &Tensor) -> candle_core::Result<Tensor> {
    let slope = weight.reshape((1, (), 1, 1))?;
    let positive = xs.relu()?;
    let negative = xs.minimum(0f64)?.broadcast_mul(&slope)?;
    positive + negative
}

/// PyTorch's `pixel_unshuffle`: `[B, C, H·s, W·s]` → `[B, C·s², H, W]`, channel
/// `c·s² + i·s + j` holding the pixels at row offset `i` and column offset `j`.
pub fn pixel_unshuffle(xs: &Tensor, s: usize) -> candle_core::Result<Tensor> {
    let (b, c, h, w) = xs.dims4()?;
    xs.reshape((b, c, h / s, s, w / s, s))?
        .permute((0, 1, 3, 5, 2, 4))?
        .reshape((b, c * s * s, h / s, w / s))
}

/// PyTorch's `pixel_shuffle`, the inverse of [`pixel_unshuffle`].
pub fn pixel_shuffle(xs: &Tensor, s: usize) -> candle_core::Result<Tensor> {
    let (b, cs2, h, w) = xs.dims4()?;
    let c = cs2 / (s * s);
    xs.reshape((b, c, s, s, h, w))?
        .permute((0, 1, 4, 2, 5, 3))?
        .reshape((b, c, h * s, w * s))
}
