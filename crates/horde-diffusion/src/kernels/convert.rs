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
    pub(crate) fn widen_slice(values: &[bf16], out: &mut [MaybeUninit<f32>]) => widen_lanes
}

with_widest_vectors! {
    pub(crate) fn narrow_slice(values: &[f32], out: &mut [MaybeUninit<bf16>]) => narrow_lanes
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
pub(crate) fn narrow_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(0x7FFF + ((bits >> 16) & 1)) >> 16;
    let nan = (bits >> 16) | 0x0040;
    let is_nan = bits & 0x7FFF_FFFF > 0x7F80_0000;
    (if is_nan { nan } else { rounded }) as u16
}

/// `a + b` in bf16 on the CPU where both are bf16 with `b` either `a`'s shape (a residual) or
/// `[batch, channels]` added to every position of `a` (`[batch, channels, …]`, a time
/// embedding); candle's add otherwise. The sum is taken in f32 and rounded once, as candle's
/// own bf16 add does, but in one vectorised pass: candle's calls its conversion intrinsics
/// once per 8 values, and its bf16 adds were about a tenth of a bf16 UNet step on the tiles.
pub(crate) fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let ours = a.device().is_cpu() && a.dtype() == DType::BF16 && b.dtype() == DType::BF16;
    let per_channel = a.rank() > 2 && b.dims() == &a.dims()[..2];
    if ours && (a.dims() == b.dims() || per_channel) {
        return a.contiguous()?.apply_op2_no_bwd(&b.contiguous()?, &AddBf16);
    }
    if b.rank() < a.rank() {
        let mut shape = b.dims().to_vec();
        shape.resize(a.rank(), 1);
        return a.broadcast_add(&b.reshape(shape)?);
    }
    a + b
}

/// `a + b` in bf16, `b` of `a`'s size or one value per leading `[batch, channels]` pair.
struct AddBf16;

impl candle_core::CustomOp2 for AddBf16 {
    fn name(&self) -> &'static str {
        "add-bf16"
    }

    fn cpu_fwd(
        &self,
        a_storage: &CpuStorage,
        a_layout: &Layout,
        b_storage: &CpuStorage,
        b_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let a = contiguous_values::<bf16>(a_storage, a_layout, self.name())?;
        let b = contiguous_values::<bf16>(b_storage, b_layout, self.name())?;
        if a.is_empty() || b.is_empty() || a.len() % b.len() != 0 {
            candle_core::bail!(
                "{}: {} values and {} do not fit",
                self.name(),
                a.len(),
                b.len()
            );
        }
        // Values of `a` that share one value of `b`: 1 for a residual, a plane otherwise.
        let run = a.len() / b.len();
        // Written whole: a value per value of `a`.
        let mut out = unfilled::<bf16>(a.len());
        let chunk = CHUNK.div_ceil(run) * run;
        out.par_chunks_mut(chunk)
            .zip(a.par_chunks(chunk))
            .enumerate()
            .for_each(|(i, (out, a))| {
                let first = i * chunk / run;
                if run == 1 {
                    add_slices(a, &b[first..first + a.len()], out);
                } else {
                    for (j, (out, a)) in out.chunks_mut(run).zip(a.chunks(run)).enumerate() {
                        add_scalar(a, b[first + j], out);
                    }
                }
            });
        // SAFETY: the chunks cover the output, each value written by one of the two adds.
        #[allow(unsafe_code)]
        let out = unsafe { filled(out) };
        Ok((CpuStorage::BF16(out), a_layout.shape().clone()))
    }
}

with_widest_vectors! {
    fn add_slices(a: &[bf16], b: &[bf16], out: &mut [MaybeUninit<bf16>]) => add_lanes
}

with_widest_vectors! {
    fn add_scalar(a: &[bf16], b: bf16, out: &mut [MaybeUninit<bf16>]) => add_scalar_lanes
}

/// `v` in f32 (exactly: bf16 is f32's top half).
#[inline(always)]
pub(crate) fn wide(v: bf16) -> f32 {
    f32::from_bits(u32::from(v.to_bits()) << 16)
}

#[inline(always)]
fn add_lanes(a: &[bf16], b: &[bf16], out: &mut [MaybeUninit<bf16>]) {
    for ((o, a), b) in out.iter_mut().zip(a).zip(b) {
        o.write(bf16::from_bits(narrow_bits(wide(*a) + wide(*b))));
    }
}

#[inline(always)]
fn add_scalar_lanes(a: &[bf16], b: bf16, out: &mut [MaybeUninit<bf16>]) {
    let b = wide(b);
    for (o, a) in out.iter_mut().zip(a) {
        o.write(bf16::from_bits(narrow_bits(wide(*a) + b)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::{Rng, SeedableRng};

    /// Our bf16 adds give candle's own bf16 sums bit for bit: a residual, a time embedding per
    /// (image, channel), sizes off the vector width and across tasks; the embedding read for
    /// the wrong channel (transposed) does not.
    #[test]
    fn bf16_adds_equal_candles() {
        use super::super::test_support::random;
        let half = |t: Tensor| t.to_dtype(DType::BF16).unwrap();
        let bits = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<bf16>().unwrap();
        for (i, dims) in [
            vec![2, 3, 5, 7],
            vec![1, 320, 64, 64],
            vec![2, 4, 1, 1],
            vec![3, 17],
        ]
        .into_iter()
        .enumerate()
        {
            let seed = 10 * i as u64;
            let a = half(random(&dims, seed, 3.0));
            let b = half(random(&dims, seed + 1, 3.0));
            assert_eq!(
                bits(&add(&a, &b).unwrap()),
                bits(&(&a + &b).unwrap()),
                "{dims:?}"
            );
            if dims.len() > 2 {
                let e = half(random(&dims[..2], seed + 2, 3.0));
                let theirs = a.broadcast_add(&e.reshape((dims[0], dims[1], 1, 1)).unwrap());
                let ours = add(&a, &e).unwrap();
                assert_eq!(bits(&ours), bits(&theirs.unwrap()), "{dims:?} per channel");
                if dims[0] > 1 && dims[1] > 1 {
                    let swapped = e
                        .t()
                        .unwrap()
                        .contiguous()
                        .unwrap()
                        .reshape(dims[..2].to_vec());
                    let wrong = add(&a, &swapped.unwrap()).unwrap();
                    assert_ne!(bits(&wrong), bits(&ours), "{dims:?}: the channels mixed up");
                }
            }
        }
    }

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
