//! GEGLU, the gate of the transformer's feed-forward: `a · gelu(b)` where `[a, b]` are the two
//! halves of the last dimension, with GELU's exact (erf) form, on the CPU in f32.
//!
//! candle evaluates it as a view of each half, libm's scalar `erf` on one thread over the
//! strided view, and a product: 99 ms for `[2, 4096, 2560]` on 2 cores, about 10 % of a UNet
//! step over its 15 transformer blocks. Here both halves are read in place, in parallel over
//! rows, with an `erf` written to vectorise ([`erf`]).

use super::attention::fast_exp;
use super::{contiguous_f32, filled, unfilled};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// `a · gelu(b)` for `[a, b]` the halves of `x + bias` along the last dimension (which must be
/// even): the bias of the linear layer before, added here rather than in a pass of its own.
pub(crate) fn geglu(x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let bias = bias
        .map(|b| b.flatten_all()?.to_vec1::<f32>())
        .transpose()?;
    x.contiguous()?.apply_op1_no_bwd(&Geglu { bias })
}

struct Geglu {
    bias: Option<Vec<f32>>,
}

impl CustomOp1 for Geglu {
    fn name(&self) -> &'static str {
        "geglu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, self.name())?;
        let dims = layout.shape().dims();
        let Some(&width) = dims.last() else {
            candle_core::bail!("geglu needs at least one dimension");
        };
        if width % 2 != 0 {
            candle_core::bail!("geglu: the last dimension ({width}) is odd");
        }
        let half = width / 2;
        let zeros;
        let bias = match &self.bias {
            Some(bias) if bias.len() != width => {
                candle_core::bail!("geglu: a bias of {} for width {width}", bias.len())
            }
            Some(bias) => bias,
            None => {
                zeros = vec![0f32; width];
                &zeros
            }
        };
        // Written whole: a value per pair of inputs.
        let mut out = unfilled(x.len() / 2);
        if half > 0 {
            out.par_chunks_mut(half)
                .zip(x.par_chunks(width))
                .for_each(|(out_row, row)| gate_row(row, bias, out_row));
        }
        // SAFETY: each output row was written whole by `gate_row` (none when `half` is 0).
        #[allow(unsafe_code)]
        let out = unsafe { filled(out) };
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().expect("checked above") = half;
        Ok((CpuStorage::F32(out), Shape::from(out_dims)))
    }
}

with_widest_vectors! {
    fn gate_row(row: &[f32], bias: &[f32], out: &mut [MaybeUninit<f32>]) => gate_row_lanes
}

#[inline(always)]
fn gate_row_lanes(row: &[f32], bias: &[f32], out: &mut [MaybeUninit<f32>]) {
    let (a, b) = row.split_at(out.len());
    let (bias_a, bias_b) = bias.split_at(out.len());
    for ((((o, a), b), bias_a), bias_b) in out.iter_mut().zip(a).zip(b).zip(bias_a).zip(bias_b) {
        o.write((a + bias_a) * gelu(b + bias_b));
    }
}

/// `x · Φ(x) = x/2 · (1 + erf(x/√2))`.
#[inline(always)]
pub(crate) fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// `erf(x)` within 10⁻⁶ (Abramowitz and Stegun 7.1.26, whose 1.5·10⁻⁷ grows by f32 rounding),
/// branch-free so that it vectorises.
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_8,
        -1.453_152_1,
        1.061_405_4,
    ];
    let ax = x.abs();
    let t = 1.0 / (1.0 + P * ax);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let magnitude = 1.0 - poly * fast_exp(-ax * ax);
    magnitude.copysign(x)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{max_difference, random};
    use super::*;

    #[test]
    fn erf_is_within_its_bound_of_the_exact_one() {
        let mut worst = 0f64;
        for i in -600_000..=600_000 {
            let x = i as f64 * 1e-5;
            let exact = libm_erf(x);
            worst = worst.max((f64::from(erf(x as f32)) - exact).abs());
        }
        assert!(worst < 1e-6, "off by {worst}");
        assert!(erf(0.0).abs() < 1e-7);
        assert!(erf(-0.5) == -erf(0.5), "odd");
        assert!((erf(100.0) - 1.0).abs() < 1e-7 && (erf(-100.0) + 1.0).abs() < 1e-7);
    }

    /// erf by its series (|x| ≤ 6 is plenty: erf(6) is 1 to 17 digits), as the exact value.
    fn libm_erf(x: f64) -> f64 {
        if x.abs() > 5.0 {
            return x.signum();
        }
        // erf x = 2/√π Σ (-1)ⁿ x^(2n+1) / (n! (2n+1)), summed until the terms vanish.
        let (mut term, mut sum, mut n) = (x, x, 0.0);
        while term.abs() > 1e-18 * sum.abs().max(1e-300) && n < 400.0 {
            n += 1.0;
            term *= -x * x / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn geglu_equals_candles_halves_and_gelu() {
        for (shape, seed) in [
            (vec![1, 2], 1),
            (vec![3, 10], 2),
            (vec![2, 7, 64], 3),
            (vec![2, 33, 2560], 4),
        ] {
            let x = (random(&shape, seed, 1.0) * 4.0).unwrap();
            let width = *shape.last().unwrap();
            let bias = random(&[width], seed + 100, 1.0);
            for bias in [None, Some(&bias)] {
                let ours = geglu(&x, bias).unwrap();
                let biased = match bias {
                    Some(b) => x.broadcast_add(b).unwrap(),
                    None => x.clone(),
                };
                let halves = biased.chunk(2, candle_core::D::Minus1).unwrap();
                let candle = (&halves[0] * halves[1].gelu_erf().unwrap()).unwrap();
                assert_eq!(ours.dims(), candle.dims());
                let worst = max_difference(&ours, &candle);
                assert!(
                    worst < 4e-6,
                    "shape {shape:?}, bias {}: off by {worst}",
                    bias.is_some()
                );
            }
        }
    }

    #[test]
    fn an_odd_last_dimension_or_a_wrong_bias_is_refused() {
        assert!(geglu(&random(&[2, 5], 1, 1.0), None).is_err());
        let bias = random(&[4], 2, 1.0);
        assert!(geglu(&random(&[2, 6], 1, 1.0), Some(&bias)).is_err());
    }
}
