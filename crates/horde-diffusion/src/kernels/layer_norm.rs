//! Layer normalisation over a tensor's last dimension on the CPU, in f32, or in bf16 read and
//! written in place.
//!
//! candle's CPU layer norm sums each row one scalar at a time (a bf16 value widened by `half`'s
//! scalar conversion) and writes each output through a scalar narrowing into a zeroed buffer:
//! in SDXL's bf16 UNet step on the Xeon with AMX its closure took 4–6 % (three norms in every
//! transformer block, on 2 048 × 1 280 and 8 192 × 640 tokens). Here a task takes a run of
//! rows; a bf16 row is widened once into L1, summed in vector lanes, and normalised, scaled and
//! shifted in one vector pass, narrowed as it is written. The statistics are candle's (the sum
//! and the sum of squares, the variance biased), summed in 16 lanes and combined in f64.

use super::convert::{narrow_slice, widen_slice};
use super::{contiguous_values, filled, unfilled};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, WithDType};
use half::bf16;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Rows per task: enough work per task to outweigh handing it out, and tasks enough for
/// every thread (SDXL's smallest, 2 × 77 text tokens, make three).
const ROWS_PER_TASK: usize = 64;

/// `(x − mean) / √(variance + eps) · weight + bias` over the last dimension of `x`, f32 or bf16,
/// in `x`'s dtype. `weight` and `bias` are that dimension's length.
pub(crate) fn layer_norm(x: &Tensor, weight: &[f32], bias: &[f32], eps: f32) -> Result<Tensor> {
    let op = LayerNorm { weight, bias, eps };
    x.contiguous()?.apply_op1_no_bwd(&op)
}

struct LayerNorm<'a> {
    weight: &'a [f32],
    bias: &'a [f32],
    eps: f32,
}

impl CustomOp1 for LayerNorm<'_> {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        match storage {
            CpuStorage::BF16(_) => self.normalise::<bf16>(storage, layout),
            CpuStorage::F32(_) => self.normalise::<f32>(storage, layout),
            _ => candle_core::bail!("layer norm: f32 or bf16 only"),
        }
    }
}

impl LayerNorm<'_> {
    /// The op on rows of `T`, the result in `T`.
    fn normalise<T: Element>(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let width = layout.shape().dims().last().copied().unwrap_or(1);
        if self.weight.len() != width || self.bias.len() != width {
            candle_core::bail!(
                "layer norm over {width} values with {} weights and {} biases",
                self.weight.len(),
                self.bias.len()
            );
        }
        let x = contiguous_values::<T>(storage, layout, self.name())?;
        let mut out = unfilled(x.len());
        if width > 0 {
            let task = width * ROWS_PER_TASK;
            out.par_chunks_mut(task)
                .zip(x.par_chunks(task))
                .for_each(|(out, x)| {
                    let mut rows = Rows::new(width);
                    for (out, x) in out.chunks_mut(width).zip(x.chunks(width)) {
                        T::normalise_row(x, out, self, &mut rows);
                    }
                });
        }
        // SAFETY: every row was written whole by `normalise_row` (none when `width` is 0,
        // and then the output is empty).
        #[allow(unsafe_code)]
        let out = unsafe { filled(out) };
        Ok((T::to_cpu_storage_owned(out), layout.shape().clone()))
    }
}

/// A task's two rows of f32, for a bf16 row widened and normalised before it is narrowed.
struct Rows {
    wide: Vec<MaybeUninit<f32>>,
    done: Vec<MaybeUninit<f32>>,
}

impl Rows {
    fn new(width: usize) -> Rows {
        Rows {
            wide: vec![MaybeUninit::new(0.0); width],
            done: vec![MaybeUninit::new(0.0); width],
        }
    }
}

/// A row's element type.
trait Element: WithDType {
    /// Normalises row `x` into `out` (the same length) by `norm`, `rows` its scratch.
    fn normalise_row(
        x: &[Self],
        out: &mut [MaybeUninit<Self>],
        norm: &LayerNorm<'_>,
        rows: &mut Rows,
    );
}

impl Element for f32 {
    fn normalise_row(x: &[f32], out: &mut [MaybeUninit<f32>], norm: &LayerNorm<'_>, _: &mut Rows) {
        normalise(x, out, (norm.weight, norm.bias), norm.eps);
    }
}

impl Element for bf16 {
    fn normalise_row(
        x: &[bf16],
        out: &mut [MaybeUninit<bf16>],
        norm: &LayerNorm<'_>,
        rows: &mut Rows,
    ) {
        widen_slice(x, &mut rows.wide);
        // SAFETY: `widen_slice` wrote every value of the row.
        #[allow(unsafe_code)]
        let wide = unsafe { rows.wide.assume_init_ref() };
        normalise(wide, &mut rows.done, (norm.weight, norm.bias), norm.eps);
        // SAFETY: `normalise` wrote every value of the row.
        #[allow(unsafe_code)]
        let done = unsafe { rows.done.assume_init_ref() };
        narrow_slice(done, out);
    }
}

with_widest_vectors! {
    /// `out = (x − mean) · inverse_std · weight + bias` for one row `x`.
    fn normalise(x: &[f32], out: &mut [MaybeUninit<f32>], affine: (&[f32], &[f32]), eps: f32) => normalise_lanes
}

#[inline(always)]
fn normalise_lanes(
    x: &[f32],
    out: &mut [MaybeUninit<f32>],
    (weight, bias): (&[f32], &[f32]),
    eps: f32,
) {
    let (mean, variance) = mean_and_variance(x);
    let inverse_std = 1.0 / (variance + eps).sqrt();
    for (((o, v), w), b) in out.iter_mut().zip(x).zip(weight).zip(bias) {
        o.write((v - mean) * inverse_std * w + b);
    }
}

/// The mean and (biased) variance of `x`: its sum and sum of squares in 16 f32 lanes,
/// combined in f64.
#[inline(always)]
fn mean_and_variance(x: &[f32]) -> (f32, f32) {
    const LANES: usize = 16;
    let mut lanes = [0f32; LANES];
    let mut squares = [0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for chunk in &mut chunks {
        for i in 0..LANES {
            lanes[i] += chunk[i];
            squares[i] += chunk[i] * chunk[i];
        }
    }
    for (i, v) in chunks.remainder().iter().enumerate() {
        lanes[i] += v;
        squares[i] += v * v;
    }
    let sum: f64 = lanes.iter().map(|v| f64::from(*v)).sum();
    let sum_of_squares: f64 = squares.iter().map(|v| f64::from(*v)).sum();
    let n = x.len() as f64;
    let mean = sum / n;
    let variance = (sum_of_squares / n - mean * mean).max(0.0);
    (mean as f32, variance as f32)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{max_difference, random};
    use super::*;
    use candle_core::DType;

    /// Off-centre rows of several widths (SDXL's and CLIP's, and widths that are not whole
    /// vectors), each with its own weights and biases.
    fn cases() -> Vec<(Vec<usize>, u64)> {
        vec![
            (vec![1, 1], 1),
            (vec![3, 7], 2),
            (vec![2, 77, 33], 3),
            (vec![130, 320], 4),
            (vec![2, 77, 768], 5),
            (vec![70, 1280], 6),
            (vec![5, 4100], 7),
        ]
    }

    fn affine(width: usize, seed: u64) -> (Tensor, Tensor) {
        (
            random(&[width], seed + 1, 1.0),
            random(&[width], seed + 2, 1.0),
        )
    }

    #[test]
    fn equals_candles_layer_norm_in_f32() {
        for (shape, seed) in cases() {
            let width = *shape.last().unwrap();
            let x = (random(&shape, seed, 3.0) + 1.5).unwrap();
            let (weight, bias) = affine(width, seed);
            let reference = candle_nn::ops::layer_norm(&x, &weight, &bias, 1e-5).unwrap();
            let (w, b) = (
                weight.to_vec1::<f32>().unwrap(),
                bias.to_vec1::<f32>().unwrap(),
            );
            let ours = layer_norm(&x, &w, &b, 1e-5).unwrap();
            assert_eq!(ours.dims(), x.dims());
            let off = max_difference(&ours, &reference);
            assert!(off < 5e-5, "{shape:?}: off by {off}");
        }
    }

    #[test]
    fn a_bf16_row_is_normalised_as_its_f32_values_are_then_rounded() {
        for (shape, seed) in cases() {
            let width = *shape.last().unwrap();
            let half = (random(&shape, seed, 3.0) + 1.5)
                .unwrap()
                .to_dtype(DType::BF16)
                .unwrap();
            let (weight, bias) = affine(width, seed);
            let (w, b) = (
                weight.to_vec1::<f32>().unwrap(),
                bias.to_vec1::<f32>().unwrap(),
            );
            let ours = layer_norm(&half, &w, &b, 1e-5).unwrap();
            assert_eq!(ours.dtype(), DType::BF16);
            let wide = half.to_dtype(DType::F32).unwrap();
            let expected = layer_norm(&wide, &w, &b, 1e-5)
                .unwrap()
                .to_dtype(DType::BF16)
                .unwrap();
            assert_eq!(
                ours.flatten_all().unwrap().to_vec1::<bf16>().unwrap(),
                expected.flatten_all().unwrap().to_vec1::<bf16>().unwrap(),
                "{shape:?}"
            );
        }
    }

    #[test]
    fn a_row_of_other_width_than_its_weights_is_refused() {
        let x = random(&[2, 8], 1, 1.0);
        let short = vec![1.0; 7];
        assert!(layer_norm(&x, &short, &[0.0; 8], 1e-5).is_err());
        assert!(layer_norm(&x, &[1.0; 8], &short, 1e-5).is_err());
    }
}
