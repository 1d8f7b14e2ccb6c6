//! The VQGAN pieces CodeFormer and RestoreFormer share: residual blocks, single- and multi-head
//! spatial attention, the strided downsampling and nearest upsampling, the face crop to and
//! from `[-1, 1]`, reading shapes from a checkpoint's tensors, and the seeded random tensors of
//! the tiny checkpoints.
//!
//! Both networks descend from the VQGAN of "Taming Transformers" (CodeFormer through
//! Unleashing Transformers), so their blocks compute the same things under different names:
//! the names are arguments here, the arithmetic is written once.

use candle_core::{DType, Device, Module, Result, Shape, Tensor};
use candle_nn::{Init, VarBuilder};
use horde_diffusion::nn::{attention, conv, from_tokens, group_norm, to_tokens, Conv2d, GroupNorm};
use image::RgbImage;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The GroupNorm of both VQGANs: 32 groups, eps 1e-6.
pub(crate) fn norm(channels: usize, vb: VarBuilder<'_>) -> Result<GroupNorm> {
    group_norm(channels, 1e-6, vb)
}

/// A residual block: `x + conv2(silu(norm2(conv1(silu(norm1(x))))))`, the skip through a 1×1
/// convolution (`shortcut`, CodeFormer's `conv_out`, RestoreFormer's `nin_shortcut`) when the
/// width changes.
pub(crate) struct ResBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
}

impl ResBlock {
    pub(crate) fn new(
        in_c: usize,
        out_c: usize,
        shortcut_name: &str,
        vb: VarBuilder<'_>,
    ) -> Result<Self> {
        Ok(ResBlock {
            norm1: norm(in_c, vb.pp("norm1"))?,
            conv1: conv(in_c, out_c, 3, 1, 1, vb.pp("conv1"))?,
            norm2: norm(out_c, vb.pp("norm2"))?,
            conv2: conv(out_c, out_c, 3, 1, 1, vb.pp("conv2"))?,
            shortcut: if in_c == out_c {
                None
            } else {
                Some(conv(in_c, out_c, 1, 1, 0, vb.pp(shortcut_name))?)
            },
        })
    }
}

impl Module for ResBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward_silu(x)?)?;
        let h = self.conv2.forward(&self.norm2.forward_silu(&h)?)?;
        match &self.shortcut {
            Some(shortcut) => shortcut.forward(x)? + h,
            None => x + h,
        }
    }
}

/// Attention over the pixels of a map, with a residual: queries, keys and values are 1×1
/// convolutions of the normalised map, split into `heads`. RestoreFormer's decoder takes its
/// queries from another map (the encoder's, normalised by `norm2`): [`Attention::forward_cross`].
pub(crate) struct Attention {
    norm: GroupNorm,
    /// RestoreFormer's norm of the map the queries come from.
    query_norm: Option<GroupNorm>,
    q: Conv2d,
    k: Conv2d,
    v: Conv2d,
    proj_out: Conv2d,
    heads: usize,
}

impl Attention {
    /// CodeFormer's `AttnBlock`: one head, the norm named `norm`.
    pub(crate) fn single_head(channels: usize, vb: VarBuilder<'_>) -> Result<Self> {
        Self::new(channels, 1, "norm", None, vb)
    }

    /// RestoreFormer's `MultiHeadAttnBlock`: `norm1` for the map, `norm2` for the queries' map.
    pub(crate) fn multi_head(channels: usize, heads: usize, vb: VarBuilder<'_>) -> Result<Self> {
        Self::new(channels, heads, "norm1", Some("norm2"), vb)
    }

    fn new(
        channels: usize,
        heads: usize,
        norm_name: &str,
        query_norm_name: Option<&str>,
        vb: VarBuilder<'_>,
    ) -> Result<Self> {
        let one_by_one = |name: &str| conv(channels, channels, 1, 1, 0, vb.pp(name));
        Ok(Attention {
            norm: norm(channels, vb.pp(norm_name))?,
            query_norm: query_norm_name
                .map(|name| norm(channels, vb.pp(name)))
                .transpose()?,
            q: one_by_one("q")?,
            k: one_by_one("k")?,
            v: one_by_one("v")?,
            proj_out: one_by_one("proj_out")?,
            heads,
        })
    }

    /// Self-attention: `x + proj_out(attend(q(n), k(n), v(n)))` for `n = norm(x)`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let normed = self.norm.forward(x)?;
        self.attend(x, &normed, &normed)
    }

    /// Cross-attention: the queries from `query_map` (through `norm2`), keys and values from
    /// `x` (through `norm1`).
    pub(crate) fn forward_cross(&self, x: &Tensor, query_map: &Tensor) -> Result<Tensor> {
        let normed = self.norm.forward(x)?;
        let query_norm = self.query_norm.as_ref().unwrap_or(&self.norm);
        self.attend(x, &normed, &query_norm.forward(query_map)?)
    }

    fn attend(&self, x: &Tensor, normed: &Tensor, query_source: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let q = to_tokens(&self.q.forward(query_source)?)?;
        let k = to_tokens(&self.k.forward(normed)?)?;
        let v = to_tokens(&self.v.forward(normed)?)?;
        let out = from_tokens(&attention(&q, &k, &v, self.heads, None)?, h, w)?;
        x + self.proj_out.forward(&out)?
    }
}

/// Halves a map: one row and column of zeros below and to the right, then a 3×3 convolution
/// of stride 2 without padding (both networks' `Downsample`).
pub(crate) struct Downsample(Conv2d);

impl Downsample {
    pub(crate) fn new(channels: usize, vb: VarBuilder<'_>) -> Result<Self> {
        Ok(Downsample(conv(
            channels,
            channels,
            3,
            2,
            0,
            vb.pp("conv"),
        )?))
    }
}

impl Module for Downsample {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.0
            .forward(&x.pad_with_zeros(2, 0, 1)?.pad_with_zeros(3, 0, 1)?)
    }
}

/// Doubles a map: nearest-neighbour, then a 3×3 convolution (both networks' `Upsample`).
pub(crate) struct Upsample(Conv2d);

impl Upsample {
    pub(crate) fn new(channels: usize, vb: VarBuilder<'_>) -> Result<Self> {
        Ok(Upsample(conv(channels, channels, 3, 1, 1, vb.pp("conv"))?))
    }
}

impl Module for Upsample {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        self.0.forward(&x.upsample_nearest2d(2 * h, 2 * w)?)
    }
}

/// An aligned face crop as the networks take it: `[1, 3, H, W]`, RGB, `(v / 255 − 0.5) / 0.5`
/// (basicsr's `img2tensor` then `normalize` with mean and std 0.5).
pub(crate) fn face_to_tensor(face: &RgbImage, device: &Device) -> Result<Tensor> {
    let (w, h) = (face.width() as usize, face.height() as usize);
    let data: Vec<f32> = face
        .as_raw()
        .iter()
        .map(|&v| f32::from(v) / 127.5 - 1.0)
        .collect();
    Tensor::from_vec(data, (h, w, 3), device)?
        .permute((2, 0, 1))?
        .unsqueeze(0)
}

/// The networks' `[1, 3, H, W]` output back to a face: clamped to `[−1, 1]`, mapped to
/// `[0, 255]` and rounded (basicsr's `tensor2img` with `min_max=(-1, 1)`).
pub(crate) fn tensor_to_face(y: &Tensor) -> Result<RgbImage> {
    let (_, _, h, w) = y.dims4()?;
    let data: Vec<u8> = ((y.squeeze(0)?.permute((1, 2, 0))?.clamp(-1f32, 1f32)? + 1.0)? * 127.5)?
        .round()?
        .flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(|v| v as u8)
        .collect();
    RgbImage::from_raw(w as u32, h as u32, data)
        .ok_or_else(|| candle_core::Error::Msg("the output is not an RGB image".into()))
}

/// The shape of a tensor of a checkpoint, or why not.
pub(crate) fn dims<'a>(
    tensors: &'a HashMap<String, Tensor>,
    name: &str,
) -> std::result::Result<&'a [usize], String> {
    tensors
        .get(name)
        .map(|t| t.dims())
        .ok_or_else(|| format!("no tensor `{name}`"))
}

/// One dimension of a tensor of a checkpoint, or why not (missing, or of too few dimensions).
pub(crate) fn dim(
    tensors: &HashMap<String, Tensor>,
    name: &str,
    axis: usize,
) -> std::result::Result<usize, String> {
    let shape = dims(tensors, name)?;
    shape
        .get(axis)
        .copied()
        .ok_or_else(|| format!("`{name}` has shape {shape:?}: no dimension {axis}"))
}

/// How many `{prefix}.{i}.` groups of tensors there are, counting from 0 until one is missing.
pub(crate) fn count_indexed(tensors: &HashMap<String, Tensor>, prefix: &str) -> usize {
    (0..)
        .take_while(|i| {
            let start = format!("{prefix}.{i}.");
            tensors.keys().any(|k| k.starts_with(&start))
        })
        .count()
}

/// A `VarBuilder` whose every tensor is seeded random and remembered, so that building a
/// network from it writes that network's checkpoint in its own key layout (the tiny
/// checkpoints). Norm scales are `1 + N(0, 0.1)`, biases `N(0, 0.05)`, weights
/// `N(0, 1/√fan_in)`: none is left at 0 or 1.
pub(crate) struct RandomTensors {
    seed: u64,
    tensors: Arc<Mutex<HashMap<String, Tensor>>>,
}

impl RandomTensors {
    /// The builder, and the map its tensors land in.
    pub(crate) fn var_builder(
        seed: u64,
    ) -> (VarBuilder<'static>, Arc<Mutex<HashMap<String, Tensor>>>) {
        let tensors = Arc::new(Mutex::new(HashMap::new()));
        let backend = RandomTensors {
            seed,
            tensors: tensors.clone(),
        };
        let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, Device::Cpu);
        (vb, tensors)
    }
}

/// SplitMix64: a small, well-mixed seeded generator (no `rand` in this crate).
fn split_mix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `count` standard normal values (Box–Muller) from `seed`.
fn normals(seed: u64, count: usize) -> Vec<f64> {
    let mut state = seed;
    let mut uniform = || (split_mix(&mut state) >> 11) as f64 / (1u64 << 53) as f64;
    (0..count)
        .map(|_| {
            let (u1, u2) = (uniform().max(f64::MIN_POSITIVE), uniform());
            (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        })
        .collect()
}

fn name_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl candle_nn::var_builder::SimpleBackend for RandomTensors {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let dims = shape.dims().to_vec();
        let (mean, std) = match dims.len() {
            1 if name.ends_with("weight") => (1.0, 0.1),
            1 => (0.0, 0.05),
            _ => (
                0.0,
                1.0 / (dims[1..].iter().product::<usize>() as f64).sqrt(),
            ),
        };
        let values: Vec<f32> = normals(self.seed ^ name_hash(name), shape.elem_count())
            .into_iter()
            .map(|z| (mean + std * z) as f32)
            .collect();
        let tensor = Tensor::from_vec(values, shape, device)?.to_dtype(dtype)?;
        self.tensors
            .lock()
            .map_err(|_| candle_core::Error::Msg("random tensors: lock poisoned".into()))?
            .insert(name.to_string(), tensor.clone());
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> Result<Tensor> {
        Err(candle_core::Error::Msg(format!(
            "random tensors: `{name}` requested without a shape"
        )))
    }

    fn contains_tensor(&self, _: &str) -> bool {
        false
    }
}

/// The tensors a network asked `RandomTensors` for, written as a safetensors file.
pub(crate) fn save_random(
    tensors: &Arc<Mutex<HashMap<String, Tensor>>>,
    path: &std::path::Path,
) -> crate::Result<()> {
    let map = tensors
        .lock()
        .map_err(|_| crate::Error::Run(candle_core::Error::Msg("lock poisoned".into())))?
        .clone();
    candle_core::safetensors::save(&map, path).map_err(|e| crate::Error::Unreadable {
        path: path.display().to_string(),
        reason: format!("cannot write: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_face_survives_the_trip_to_a_tensor_and_back() {
        let face = RgbImage::from_fn(5, 3, |x, y| {
            image::Rgb([(x * 50) as u8, (y * 100) as u8, (x * 7 + y) as u8])
        });
        let x = face_to_tensor(&face, &Device::Cpu).unwrap();
        assert_eq!(x.dims(), &[1, 3, 3, 5]);
        let red: Vec<f32> = x
            .get(0)
            .unwrap()
            .get(0)
            .unwrap()
            .get(0)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(red[1], 50.0 / 127.5 - 1.0, "pixel (1, 0)'s red, in [-1, 1]");
        let back = tensor_to_face(&x).unwrap();
        assert_eq!(back, face);
    }
}
