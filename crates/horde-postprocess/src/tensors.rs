//! Reading a checkpoint's tensors (`.safetensors`, or PyTorch's `.pth` as the upscalers ship,
//! in the zip format or the legacy one older checkpoints use) and the pixel rearrangements and
//! activations the networks share.

mod legacy_pth;

use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// The tensors of a checkpoint, by name, in f32 on `device`. A `.pth` wrapping its state dict
/// in `params_ema` or `params` (as Real-ESRGAN's do) is unwrapped, preferring `params_ema`.
/// A `.pth` is read in PyTorch's zip format (torch.save since 1.6) or, failing its `PK`
/// signature, in the legacy format (`_use_new_zipfile_serialization=False`).
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
        read_pth(path).map_err(unreadable)?
    };
    tensors
        .into_iter()
        .map(|(name, t)| Ok((name, t.to_device(device)?.to_dtype(DType::F32)?)))
        .collect::<candle_core::Result<_>>()
        .map_err(Error::Run)
}

/// A `.pth`'s tensors, by its first bytes: a zip archive (PyTorch's format since 1.6) or a
/// pickle (the legacy format), only then read whole into memory.
fn read_pth(path: &Path) -> std::result::Result<Vec<(String, Tensor)>, String> {
    use std::io::Read;
    let mut head = [0u8; 4];
    let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let read = file.read(&mut head).map_err(|e| e.to_string())?;
    let head = &head[..read];
    if head.starts_with(b"PK\x03\x04") {
        for key in [Some("params_ema"), Some("params"), None] {
            if let Ok(read) = candle_core::pickle::read_all_with_key(path, key) {
                if !read.is_empty() {
                    return Ok(read);
                }
            }
        }
        Err("not a PyTorch checkpoint this build reads".into())
    } else if head.first() == Some(&0x80) {
        let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
        legacy_pth::read(&bytes)
    } else {
        Err("neither a zip nor a legacy PyTorch checkpoint".into())
    }
}

/// The leaky ReLU of ESRGAN (slope `0.2` below zero).
pub fn leaky_relu(xs: &Tensor, slope: f64) -> candle_core::Result<Tensor> {
    xs.maximum(&(xs * slope)?)
}

/// [`leaky_relu`] written over `xs` itself (f32 on the CPU; a view such as a `narrow` of a
/// larger tensor changes only its own values): one pass and no allocation, where the
/// functional form makes two passes and two tensors. Elsewhere it falls back to replacing
/// nothing and returning the functional result.
pub fn leaky_relu_in_place(xs: &Tensor, slope: f32) -> candle_core::Result<Tensor> {
    if xs.device().is_cpu() && xs.dtype() == DType::F32 {
        xs.inplace_op1(&LeakyRelu(slope))?;
        Ok(xs.clone())
    } else {
        leaky_relu(xs, f64::from(slope))
    }
}

struct LeakyRelu(f32);

impl candle_core::InplaceOp1 for LeakyRelu {
    fn name(&self) -> &'static str {
        "leaky-relu-in-place"
    }

    fn cpu_fwd(
        &self,
        storage: &mut candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        use rayon::prelude::*;
        let candle_core::CpuStorage::F32(values) = storage else {
            candle_core::bail!("leaky-relu-in-place: f32 only");
        };
        let slope = self.0;
        // `+ 0.0` turns the −0 a zero slope would leave into +0, as ReLU gives.
        let apply = |v: &mut f32| {
            if *v < 0.0 {
                *v = *v * slope + 0.0
            }
        };
        match layout.contiguous_offsets() {
            Some((start, end)) => values[start..end]
                .par_chunks_mut(1 << 14)
                .for_each(|chunk| chunk.iter_mut().for_each(apply)),
            None => for_each_offset(layout, |i| apply(&mut values[i])),
        }
        Ok(())
    }
}

/// Calls `f` with the storage offset of every element of a strided `layout`, in order.
fn for_each_offset(layout: &candle_core::Layout, mut f: impl FnMut(usize)) {
    let (dims, strides) = (layout.dims(), layout.stride());
    if dims.contains(&0) {
        return;
    }
    let mut index = vec![0usize; dims.len()];
    let mut offset = layout.start_offset();
    loop {
        f(offset);
        // Advance like an odometer, last dimension fastest.
        let mut d = dims.len();
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            index[d] += 1;
            offset += strides[d];
            if index[d] < dims[d] {
                break;
            }
            offset -= strides[d] * dims[d];
            index[d] = 0;
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_in_place_leaky_relu_changes_only_its_view_and_matches_the_functional_one() {
        let device = Device::Cpu;
        let whole = Tensor::randn(0f32, 1f32, (2, 5, 3, 4), &device).unwrap();
        let before = whole.copy().unwrap();
        // A channel range at batch 2: not contiguous, walked by strides.
        let view = whole.narrow(1, 1, 3).unwrap();
        leaky_relu_in_place(&view, 0.2).unwrap();
        let expected = leaky_relu(&before.narrow(1, 1, 3).unwrap(), 0.2).unwrap();
        let diff = crate::test_support::max_difference;
        assert_eq!(diff(&whole.narrow(1, 1, 3).unwrap(), &expected), 0.0);
        for (start, len) in [(0, 1), (4, 1)] {
            assert_eq!(
                diff(
                    &whole.narrow(1, start, len).unwrap(),
                    &before.narrow(1, start, len).unwrap()
                ),
                0.0,
                "channels outside the view are untouched"
            );
        }
        // Contiguous: the fast path.
        let flat = before.copy().unwrap();
        leaky_relu_in_place(&flat, 0.2).unwrap();
        assert_eq!(diff(&flat, &leaky_relu(&before, 0.2).unwrap()), 0.0);
        assert!(
            before
                .flatten_all()
                .unwrap()
                .min(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                < 0.0
        );
    }
}
