//! The text encoders' feed-forward activations, elementwise on the CPU in one pass: GELU's
//! exact (erf) form (OpenCLIP, SDXL's bigG) and `x · sigmoid(1.702 x)` (OpenAI's CLIP).
//!
//! candle runs GELU as libm's scalar `erf` over each value, and the sigmoid form as three ops
//! (a scale, a sigmoid, a product), each a pass writing a new tensor; with its bf16 values
//! converted one at a time. On SDXL's `[154, 5120]` feed-forward maps that was about a sixth of
//! the bigG encoder's time. Here each block of values is widened in L1 (bf16), activated by
//! [`gelu`]'s vectorising `erf` or [`sigmoid`], and narrowed back.

use super::convert::{narrow_slice, widen_slice};
use super::geglu::gelu;
use super::group_norm::sigmoid;
use super::{contiguous_values, filled, unfilled};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, WithDType};
use half::bf16;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Which activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Activation {
    /// `x · Φ(x)`, Φ by `erf`.
    GeluErf,
    /// `x · sigmoid(1.702 x)`.
    QuickGelu,
}

/// `activation(x)` elementwise, for an f32 or bf16 `x` on the CPU, in `x`'s dtype.
pub(crate) fn activate(x: &Tensor, activation: Activation) -> Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&Activate(activation))
}

/// Values activated at a time: 16 KiB of f32, in L1 with their output.
const BLOCK: usize = 4096;

struct Activate(Activation);

impl CustomOp1 for Activate {
    fn name(&self) -> &'static str {
        "activation"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (name, activation) = (self.name(), self.0);
        let activated = match storage {
            CpuStorage::BF16(_) => CpuStorage::BF16(by_blocks(storage, layout, name, |x, out| {
                activate_bf16(x, out, activation)
            })?),
            CpuStorage::F32(_) => CpuStorage::F32(by_blocks(storage, layout, name, |x, out| {
                apply(x, out, activation)
            })?),
            _ => candle_core::bail!("{name}: f32 and bf16 only"),
        };
        Ok((activated, layout.shape().clone()))
    }
}

/// A new map of `storage`'s values, [`BLOCK`] at a time in parallel, each block written whole
/// by `block`.
fn by_blocks<T: WithDType>(
    storage: &CpuStorage,
    layout: &Layout,
    op: &str,
    block: impl Fn(&[T], &mut [MaybeUninit<T>]) + Sync,
) -> Result<Vec<T>> {
    let x = contiguous_values::<T>(storage, layout, op)?;
    let mut out = unfilled::<T>(x.len());
    out.par_chunks_mut(BLOCK)
        .zip(x.par_chunks(BLOCK))
        .for_each(|(out, x)| block(x, out));
    // SAFETY: the blocks cover the output, each written whole by `block`.
    #[allow(unsafe_code)]
    Ok(unsafe { filled(out) })
}

/// One block of bf16 values (at most [`BLOCK`]), through f32 in L1.
fn activate_bf16(x: &[bf16], out: &mut [MaybeUninit<bf16>], activation: Activation) {
    let n = x.len();
    let mut wide = [MaybeUninit::new(0f32); BLOCK];
    let mut done = [MaybeUninit::new(0f32); BLOCK];
    widen_slice(x, &mut wide[..n]);
    // SAFETY: `widen_slice` wrote the first `n`.
    #[allow(unsafe_code)]
    let wide = unsafe { wide[..n].assume_init_ref() };
    apply(wide, &mut done[..n], activation);
    // SAFETY: `apply` wrote the first `n`.
    #[allow(unsafe_code)]
    let done = unsafe { done[..n].assume_init_ref() };
    narrow_slice(done, out);
}

with_widest_vectors! {
    fn apply(x: &[f32], out: &mut [MaybeUninit<f32>], activation: Activation) => apply_lanes
}

#[inline(always)]
fn apply_lanes(x: &[f32], out: &mut [MaybeUninit<f32>], activation: Activation) {
    match activation {
        Activation::GeluErf => {
            for (o, v) in out.iter_mut().zip(x) {
                o.write(gelu(*v));
            }
        }
        Activation::QuickGelu => {
            for (o, v) in out.iter_mut().zip(x) {
                o.write(v * sigmoid(1.702 * v));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{max_abs, max_difference, random};
    use super::*;
    use candle_core::DType;

    /// candle's own ops, in f32: the reference.
    fn by_candle(x: &Tensor, activation: Activation) -> Tensor {
        let x = x.to_dtype(DType::F32).unwrap();
        match activation {
            Activation::GeluErf => x.gelu_erf().unwrap(),
            Activation::QuickGelu => {
                (&x * candle_nn::ops::sigmoid(&(&x * 1.702).unwrap()).unwrap()).unwrap()
            }
        }
    }

    #[test]
    fn equals_candles_ops_in_f32_and_bf16_on_many_sizes() {
        for activation in [Activation::GeluErf, Activation::QuickGelu] {
            // Below a block, a block and a partial one, several blocks over two threads.
            for (seed, shape) in [[1, 7], [3, 4096], [5, 1000], [154, 5120]]
                .into_iter()
                .enumerate()
            {
                // Values to ±6: both tails and the middle.
                let x = random(&shape, seed as u64, 6.0);
                let expected = by_candle(&x, activation);
                let ours = activate(&x, activation).unwrap();
                assert_eq!(ours.dtype(), DType::F32);
                let off = max_difference(&ours, &expected);
                assert!(off < 2e-6, "{activation:?} {shape:?} f32: off by {off}");
                // bf16 in and out: within bf16's rounding of the f32 result (2⁻⁸ relative).
                let half = x.to_dtype(DType::BF16).unwrap();
                let ours = activate(&half, activation).unwrap();
                assert_eq!(ours.dtype(), DType::BF16);
                let expected = by_candle(&half, activation);
                let ours = ours.to_dtype(DType::F32).unwrap();
                let off = max_difference(&ours, &expected) / max_abs(&expected);
                assert!(off < 4e-3, "{activation:?} {shape:?} bf16: off by {off}");
            }
        }
    }
}
