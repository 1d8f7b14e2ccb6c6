//! bf16 ↔ f32 on the CPU, for the kernels that compute half-precision networks in f32.
//!
//! A worker holding its weights in bf16 widens each op's inputs to f32 and narrows its output
//! back. candle converts through a vector intrinsic it calls once per 8 values without inlining:
//! a `perf` profile of a bf16 UNet step had 28 % of its samples in those two calls. A bf16 is
//! the top half of an f32, so widening is a shift and narrowing a rounding add and a shift,
//! loops the compiler turns into vector code of whatever width the CPU has.

use super::{contiguous_f32, contiguous_values, filled, unfilled};
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use half::bf16;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Values converted per task.
const CHUNK: usize = 64 * 1024;

/// `t` in f32: our conversion for bf16 on the CPU, candle's otherwise (a cheap clone when `t`
/// already is f32).
pub(crate) fn widen(t: &Tensor) -> Result<Tensor> {
    if t.device().is_cpu() && t.dtype() == DType::BF16 {
        return t.contiguous()?.apply_op1_no_bwd(&Convert);
    }
    t.to_dtype(DType::F32)
}

/// `t` (f32) in `dtype`: our conversion for bf16 on the CPU, candle's otherwise.
pub(crate) fn narrow(t: &Tensor, dtype: DType) -> Result<Tensor> {
    if t.device().is_cpu() && t.dtype() == DType::F32 && dtype == DType::BF16 {
        return t.contiguous()?.apply_op1_no_bwd(&Convert);
    }
    t.to_dtype(dtype)
}

/// bf16 to f32 or f32 to bf16, whichever the input is.
struct Convert;

impl CustomOp1 for Convert {
    fn name(&self) -> &'static str {
        "convert-bf16"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let converted = match storage {
            CpuStorage::BF16(_) => {
                let values = contiguous_values::<bf16>(storage, layout, self.name())?;
                // Written whole: a value per input.
                let mut out = unfilled::<f32>(values.len());
                out.par_chunks_mut(CHUNK)
                    .zip(values.par_chunks(CHUNK))
                    .for_each(|(out, values)| widen_slice(values, out));
                // SAFETY: the chunks cover the output, each written whole by `widen_slice`.
                #[allow(unsafe_code)]
                let out = unsafe { filled(out) };
                CpuStorage::F32(out)
            }
            CpuStorage::F32(_) => {
                let values = contiguous_f32(storage, layout, self.name())?;
                // Written whole: a value per input.
                let mut out = unfilled::<bf16>(values.len());
                out.par_chunks_mut(CHUNK)
                    .zip(values.par_chunks(CHUNK))
                    .for_each(|(out, values)| narrow_slice(values, out));
                // SAFETY: the chunks cover the output, each written whole by `narrow_slice`.
                #[allow(unsafe_code)]
                let out = unsafe { filled(out) };
                CpuStorage::BF16(out)
            }
            _ => candle_core::bail!("{} converts bf16 and f32 only", self.name()),
        };
        Ok((converted, layout.shape().clone()))
    }
}

with_widest_vectors! {
    fn widen_slice(values: &[bf16], out: &mut [MaybeUninit<f32>]) => widen_lanes
}

with_widest_vectors! {
    fn narrow_slice(values: &[f32], out: &mut [MaybeUninit<bf16>]) => narrow_lanes
}

#[inline(always)]
fn widen_lanes(values: &[bf16], out: &mut [MaybeUninit<f32>]) {
    for (o, v) in out.iter_mut().zip(values) {
        o.write(f32::from_bits(u32::from(v.to_bits()) << 16));
    }
}

#[inline(always)]
fn narrow_lanes(values: &[f32], out: &mut [MaybeUninit<bf16>]) {
    for (o, v) in out.iter_mut().zip(values) {
        o.write(bf16::from_bits(narrow_bits(*v)));
    }
}

/// The bf16 nearest `x` (ties to even), as `half::bf16::from_f32` rounds; a NaN stays a NaN
/// (quiet, its sign and top mantissa bits kept). Branch-free, so that it vectorises.
#[inline(always)]
fn narrow_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(0x7FFF + ((bits >> 16) & 1)) >> 16;
    let nan = (bits >> 16) | 0x0040;
    let is_nan = bits & 0x7FFF_FFFF > 0x7F80_0000;
    (if is_nan { nan } else { rounded }) as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::{Rng, SeedableRng};

    /// Random bit patterns (every exponent, NaNs and infinities among them) and the edge
    /// cases: ties either way, the largest finite values, subnormals, signed zeros.
    fn awkward_f32s() -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut values: Vec<f32> = (0..200_003).map(|_| f32::from_bits(rng.random())).collect();
        let edges = [
            0.0,
            -0.0,
            1.0,
            f32::from_bits(0x3F80_8000), // a tie, rounds down to even
            f32::from_bits(0x3F81_8000), // a tie, rounds up to even
            f32::from_bits(0x3F80_8001),
            f32::MAX,
            f32::MIN,
            f32::MIN_POSITIVE,
            f32::from_bits(1),
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::from_bits(0xFF80_0001), // a signalling NaN
        ];
        values.extend(edges);
        values
    }

    #[test]
    fn narrowing_rounds_as_the_half_crate_does_bit_for_bit() {
        let values = awkward_f32s();
        let ours = narrow(
            &Tensor::new(values.as_slice(), &Device::Cpu).unwrap(),
            DType::BF16,
        )
        .unwrap()
        .to_vec1::<bf16>()
        .unwrap();
        for (v, o) in values.iter().zip(&ours) {
            let expected = bf16::from_f32(*v);
            if v.is_nan() {
                assert!(o.is_nan(), "{v:e} (bits {:#x}) became {o}", v.to_bits());
            } else {
                assert_eq!(
                    o.to_bits(),
                    expected.to_bits(),
                    "{v:e} (bits {:#x})",
                    v.to_bits()
                );
            }
        }
    }

    #[test]
    fn widening_is_exact_and_a_round_trip_keeps_every_bf16() {
        let values = awkward_f32s();
        let halves: Vec<bf16> = values.iter().map(|v| bf16::from_f32(*v)).collect();
        let t = Tensor::new(halves.as_slice(), &Device::Cpu).unwrap();
        let wide = widen(&t).unwrap();
        assert_eq!(wide.dtype(), DType::F32);
        let wide_values = wide.to_vec1::<f32>().unwrap();
        for (h, w) in halves.iter().zip(&wide_values) {
            assert!(
                h.is_nan() && w.is_nan() || h.to_f32().to_bits() == w.to_bits(),
                "{h}"
            );
        }
        let back = narrow(&wide, DType::BF16)
            .unwrap()
            .to_vec1::<bf16>()
            .unwrap();
        for (h, b) in halves.iter().zip(&back) {
            assert!(
                h.is_nan() && b.is_nan() || h.to_bits() == b.to_bits(),
                "{h}"
            );
        }
    }

    #[test]
    fn other_conversions_are_candles() {
        let t = Tensor::new(&[1.5f32, -2.25], &Device::Cpu).unwrap();
        assert_eq!(narrow(&t, DType::F16).unwrap().dtype(), DType::F16);
        assert_eq!(widen(&t).unwrap().to_vec1::<f32>().unwrap(), [1.5, -2.25]);
        let strided = Tensor::new(&[[1f32, 2.], [3., 4.]], &Device::Cpu)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap()
            .t()
            .unwrap();
        let wide = widen(&strided).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(wide, [[1., 3.], [2., 4.]]);
    }
}
