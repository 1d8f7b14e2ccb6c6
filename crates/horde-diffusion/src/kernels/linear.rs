//! Linear layers on the CPU: `x·Wᵀ + b + residual` as one matrix product.
//!
//! candle runs a linear layer as a product into a fresh buffer, then a broadcast add of the
//! bias into a second one, and the transformer adds the residual into a third: two more passes
//! over an output that at 512² is `[8192, 320]` per projection. Here the output starts as the
//! residual plus the bias (one pass, written where the product then reads it), and the product
//! accumulates into it. Without a residual or bias the product writes the output straight away.
//!
//! A bf16 weight is multiplied in bf16 (`bf16_gemm`, f32 accumulation) on CPUs with
//! AVX512-BF16, the input taken in bf16 or narrowed from f32 as it is packed; elsewhere both
//! are widened to f32 for `gemm`'s f32 product, as candle's own CPU product does.

use super::bf16_gemm::{self, Epilogue, Out, PackedB, Values, View, Words};
use super::kept::Kept;
use super::{contiguous_f32, contiguous_values, filled, unfilled};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use half::bf16;
use rayon::prelude::*;
use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// `x · weightᵀ (+ bias) (+ residual)` for `x` `[rows, in]`, `weight` `[out, in]` (as
/// checkpoints store it), `bias` `[out]` and `residual` `[rows, out]` on the CPU, in f32 or
/// bf16; the result in f32.
pub fn linear(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    linear_keeping(x, weight, bias, residual, None)
}

/// A linear layer's weight packed for the bf16 product (`bf16_gemm::PackedB`), counted against
/// [`PACKED_BUDGET`].
pub(crate) type PackedWeights = Kept<CountedPack>;

/// The most bytes of linear weights kept packed at once, process-wide. SD 1.5's UNet keeps
/// all of its (about 0.55 GB in bf16); SDXL's linear weights are 4.5 GB in bf16, and keeping
/// them all would cost as much memory again for about 3 % of a step, so it keeps the first
/// gigabyte's worth and packs the rest at each call.
pub(crate) const PACKED_BUDGET: usize = 1 << 30;

/// Bytes of linear weights kept packed now.
static PACKED_BYTES: AtomicUsize = AtomicUsize::new(0);

/// A kept packed weight, counted in [`PACKED_BYTES`] while it lives.
pub(crate) struct CountedPack(PackedB);

impl Drop for CountedPack {
    fn drop(&mut self) {
        PACKED_BYTES.fetch_sub(self.0.bytes(), Ordering::Relaxed);
    }
}

/// Counts `bytes` more in `used` if that stays within `budget`; whether it did.
fn reserve(used: &AtomicUsize, bytes: usize, budget: usize) -> bool {
    let more = |now: usize| (now + bytes <= budget).then_some(now + bytes);
    used.fetch_update(Ordering::Relaxed, Ordering::Relaxed, more)
        .is_ok()
}

thread_local! {
    /// The buffer of this thread's last [`MadePack`], for the next one to pack into.
    static SPARE_PACK: RefCell<Words> = RefCell::default();
}

/// A weight packed for one call (not kept): packed into this thread's spare buffer, which it
/// hands back when dropped. Packed into a new buffer instead, each call zeroed it before
/// writing it, often on fresh pages the kernel clears first (0.9 % of a profile of SDXL's bf16
/// UNet step); SDXL's bigG encoder took 927–930 ms, 891–899 now. The spare holds the largest
/// pack the thread has made (26 MB for SDXL's widest feed-forward layer).
#[derive(Default)]
pub(crate) struct MadePack(Option<PackedB>);

impl MadePack {
    /// Packs by `pack` into the spare buffer.
    fn make(&mut self, pack: impl FnOnce(Words) -> PackedB) -> &PackedB {
        let spare = SPARE_PACK.with(|spare| std::mem::take(&mut *spare.borrow_mut()));
        self.0.insert(pack(spare))
    }
}

impl Drop for MadePack {
    fn drop(&mut self) {
        if let Some(packed) = self.0.take() {
            SPARE_PACK.with(|spare| *spare.borrow_mut() = packed.into_words());
        }
    }
}

/// The packed weight: kept in `kept` (packed by `pack` at the first call, while within the
/// budget), or packed afresh into `made`.
fn packed<'a>(
    kept: Option<&'a OnceLock<CountedPack>>,
    made: &'a mut MadePack,
    (pack, bytes): (impl FnOnce(Words) -> PackedB, usize),
) -> &'a PackedB {
    if let Some(cell) = kept {
        if let Some(counted) = cell.get() {
            return &counted.0;
        }
        if reserve(&PACKED_BYTES, bytes, PACKED_BUDGET) {
            let mut packed_here = false;
            let counted = cell.get_or_init(|| {
                packed_here = true;
                CountedPack(pack(Words::default()))
            });
            if !packed_here {
                // Another thread kept it first, counted by its own reservation.
                PACKED_BYTES.fetch_sub(bytes, Ordering::Relaxed);
            }
            return &counted.0;
        }
    }
    made.make(pack)
}

/// [`linear`] with a bf16 `weight` packed once into `kept` (and read from it at later calls)
/// while `keep_rearranged_weights` is on. `kept` must belong to this `weight` alone. A bf16
/// `x` by a bf16 `weight` on a CPU with AVX512-BF16 gives a bf16 result, the bias and
/// residual added to each block of sums as it is rounded (`bf16_gemm::Epilogue`); f32
/// otherwise.
pub(crate) fn linear_keeping(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
    kept: Option<&PackedWeights>,
) -> Result<Tensor> {
    let op = Linear::new(bias, kept, false)?;
    let in_bf16 = weight.dtype() == DType::BF16
        && matches!(x.dtype(), DType::F32 | DType::BF16)
        && bf16_gemm::available();
    let (x, weight) = if in_bf16 {
        (x.contiguous()?, weight.contiguous()?)
    } else {
        (widened(x)?, widened(weight)?)
    };
    match residual {
        // A bf16 result adds the residual as it comes.
        Some(residual) if in_bf16 && x.dtype() == DType::BF16 => {
            x.apply_op3_no_bwd(&weight, &residual.contiguous()?, &op)
        }
        Some(residual) => {
            let residual = widened(&super::convert::widen(residual)?)?;
            x.apply_op3_no_bwd(&weight, &residual, &op)
        }
        None => x.apply_op2_no_bwd(&weight, &op),
    }
}

/// `geglu(x · weightᵀ + bias)` (`kernels::geglu`: half as wide as the product), `weight`'s
/// bf16 packing kept in `kept` as [`linear_keeping`] keeps it. A bf16 `x` by a bf16 `weight`
/// on a CPU with AVX512-BF16 is gated as each block of sums is rounded to bf16, and the
/// product's f32 values (four times `x`'s width) never reach memory; otherwise the f32
/// product is gated after it.
pub(crate) fn geglu_keeping(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    kept: Option<&PackedWeights>,
) -> Result<Tensor> {
    if weight.dtype() == DType::BF16 && x.dtype() == DType::BF16 && bf16_gemm::available() {
        let op = Linear::new(bias, kept, true)?;
        return x.contiguous()?.apply_op2_no_bwd(&weight.contiguous()?, &op);
    }
    let product = linear_keeping(x, weight, None, None, kept)?;
    super::geglu::geglu(&super::convert::widen(&product)?, bias)
}

/// `t` contiguous, and in f32 when it is in bf16 (other dtypes are left for the op to refuse).
fn widened(t: &Tensor) -> Result<Tensor> {
    match t.dtype() {
        DType::BF16 => super::convert::widen(t),
        _ => t.contiguous(),
    }
}

/// A custom op's input as the product reads it: f32 or bf16 values.
fn operand<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<Values<'a>> {
    Ok(match storage {
        CpuStorage::BF16(_) => Values::Bf16(contiguous_values::<bf16>(storage, layout, op)?),
        _ => Values::F32(contiguous_f32(storage, layout, op)?),
    })
}

struct Linear {
    bias: Option<Vec<f32>>,
    /// Where the packed bf16 weight is kept between calls, if it is.
    kept: Option<Arc<OnceLock<CountedPack>>>,
    /// The product gated by GEGLU (a bf16 product only).
    geglu: bool,
}

impl Linear {
    fn new(bias: Option<&Tensor>, kept: Option<&PackedWeights>, geglu: bool) -> Result<Linear> {
        Ok(Linear {
            bias: bias
                .map(|b| b.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>())
                .transpose()?,
            kept: kept.and_then(Kept::cell),
            geglu,
        })
    }

    /// The product, with the output started as `residual` (when given) plus the bias.
    fn compute(
        &self,
        (xs, xl): (&CpuStorage, &Layout),
        (ws, wl): (&CpuStorage, &Layout),
        residual: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let op = "linear";
        let (rows, d_in) = xl.shape().dims2()?;
        let (d_out, w_in) = wl.shape().dims2()?;
        if w_in != d_in {
            candle_core::bail!("linear: input {:?}, weight {:?}", xl.shape(), wl.shape());
        }
        if self.bias.as_ref().is_some_and(|b| b.len() != d_out) {
            candle_core::bail!("linear: a bias of the wrong length for {d_out} outputs");
        }
        let (x, w) = (operand(xs, xl, op)?, operand(ws, wl, op)?);
        if let Some((_, rl)) = residual {
            if rl.shape().dims() != [rows, d_out] {
                candle_core::bail!("linear: residual {:?} for [{rows}, {d_out}]", rl.shape())
            }
        }
        if let (Values::Bf16(_), Values::Bf16(w)) = (x, w) {
            let residual = residual.map(|(rs, rl)| operand(rs, rl, op)).transpose()?;
            return self.in_bf16(x, (w, rows, d_in, d_out), residual);
        }
        if self.geglu {
            candle_core::bail!("linear: GEGLU fused only into a bf16 product");
        }
        let residual = residual
            .map(|(rs, rl)| contiguous_f32(rs, rl, op))
            .transpose()?;
        // Written whole: by the starting pass below when there is one, else by the product.
        let mut out = unfilled(rows * d_out);
        let started = self.start(&mut out, residual, d_out);
        if rows > 0 && d_out > 0 {
            let kept = self.kept.as_deref();
            product(&mut out, x, (w, kept), (rows, d_in, d_out), started)?;
        }
        // SAFETY: the product writes every value (none when `rows` or `d_out` is 0), adding
        // to the ones the starting pass wrote when there was one.
        #[allow(unsafe_code)]
        let out = unsafe { filled(out) };
        Ok((CpuStorage::F32(out), Shape::from((rows, d_out))))
    }

    /// The product of a bf16 `x` by a bf16 `w` (`[d_out, d_in]`), finished in bf16: the bias
    /// and residual added, or gated by GEGLU.
    fn in_bf16(
        &self,
        x: Values<'_>,
        (w, rows, d_in, d_out): (&[bf16], usize, usize, usize),
        residual: Option<Values<'_>>,
    ) -> Result<(CpuStorage, Shape)> {
        if self.bias.as_ref().is_some_and(|b| b.len() != d_out) {
            candle_core::bail!("linear: a bias of the wrong length for {d_out} outputs");
        }
        let bias = self.bias.as_deref();
        let epilogue = if self.geglu {
            if !d_out.is_multiple_of(2) || residual.is_some() {
                candle_core::bail!("linear: GEGLU of {d_out} outputs, or with a residual");
            }
            Epilogue::Geglu { bias }
        } else {
            Epilogue::Narrow { bias, residual }
        };
        let width = epilogue.width(d_out);
        // Written whole by the product's epilogue.
        let mut out = unfilled::<bf16>(rows * width);
        if rows > 0 && d_out > 0 {
            let mut made = MadePack::default();
            let w = self.packed_weight(w, (d_in, d_out), &mut made)?;
            bf16_gemm::matmul_to_bf16(
                &mut out,
                View::rows(x, rows, d_in),
                w.paired(),
                epilogue,
                true,
            );
        }
        // SAFETY: the epilogue wrote every value (there are none when `rows` or `d_out` is 0).
        #[allow(unsafe_code)]
        let out = unsafe { filled(out) };
        Ok((CpuStorage::BF16(out), Shape::from((rows, width))))
    }

    /// `w` (`[d_out, d_in]`, bf16) packed as `Wᵀ` for the product: the kept packing, or one
    /// made now into `made`.
    fn packed_weight<'a>(
        &'a self,
        w: &[bf16],
        (d_in, d_out): (usize, usize),
        made: &'a mut MadePack,
    ) -> Result<&'a PackedB> {
        packed_weight(self.kept.as_deref(), w, (d_in, d_out), made)
    }

    /// Writes `residual + bias` (or either) into `out`; false when there is neither.
    fn start(&self, out: &mut [MaybeUninit<f32>], residual: Option<&[f32]>, d_out: usize) -> bool {
        if d_out == 0 {
            return false;
        }
        let bias = self.bias.as_deref();
        match (residual, bias) {
            (None, None) => return false,
            (Some(residual), None) => out
                .par_chunks_mut(d_out)
                .zip(residual.par_chunks(d_out))
                .for_each(|(o, r)| {
                    o.write_copy_of_slice(r);
                }),
            (None, Some(bias)) => out.par_chunks_mut(d_out).for_each(|o| {
                o.write_copy_of_slice(bias);
            }),
            (Some(residual), Some(bias)) => out
                .par_chunks_mut(d_out)
                .zip(residual.par_chunks(d_out))
                .for_each(|(o, r)| {
                    for ((o, r), b) in o.iter_mut().zip(r).zip(bias) {
                        o.write(r + b);
                    }
                }),
        }
        true
    }
}

/// `out (+)= x · wᵀ` on all cores, adding to `out` when `accumulate` (whose values must then
/// have been written; otherwise they are only written): in bf16 when the weight is (the
/// caller checked the CPU has AVX512-BF16; its packing kept in `kept` when given), in f32
/// otherwise.
fn product(
    out: &mut [MaybeUninit<f32>],
    x: Values<'_>,
    (w, kept): (Values<'_>, Option<&OnceLock<CountedPack>>),
    (rows, d_in, d_out): (usize, usize, usize),
    accumulate: bool,
) -> Result<()> {
    match (x, w) {
        (x, Values::Bf16(w)) => {
            let mut made = MadePack::default();
            let w = packed_weight(kept, w, (d_in, d_out), &mut made)?;
            let out = Out {
                values: out,
                start: 0,
                row_stride: d_out,
            };
            // SAFETY: `out` was written whole before when `accumulate` (the caller's promise).
            #[allow(unsafe_code)]
            unsafe {
                bf16_gemm::matmul(
                    out,
                    View::rows(x, rows, d_in),
                    w.paired(),
                    1.0,
                    accumulate,
                    true,
                )
            };
        }
        (Values::F32(x), Values::F32(w)) => product_f32(out, x, w, (rows, d_in, d_out), accumulate),
        _ => candle_core::bail!("linear: a bf16 input needs a bf16 weight"),
    }
    Ok(())
}

/// `w` (`[d_out, d_in]`, bf16) packed as `Wᵀ` for the product: kept in `kept` (see
/// [`packed`]), or packed now into `made`; refused when `kept` holds another layer's shape.
fn packed_weight<'a>(
    kept: Option<&'a OnceLock<CountedPack>>,
    w: &[bf16],
    (d_in, d_out): (usize, usize),
    made: &'a mut MadePack,
) -> Result<&'a PackedB> {
    // wᵀ: element (k, n) at `n·d_in + k`.
    let pack = |words| {
        PackedB::pack_into(
            View::new(Values::Bf16(w), 0, (d_in, d_out), (1, d_in)),
            true,
            words,
        )
    };
    let w = packed(kept, made, (pack, PackedB::bytes_for(d_in, d_out)));
    if w.shape() != (d_in, d_out) {
        candle_core::bail!("linear: a weight kept for another layer");
    }
    Ok(w)
}

/// [`product`] in f32, by `gemm`.
#[allow(unsafe_code)]
fn product_f32(
    out: &mut [MaybeUninit<f32>],
    x: &[f32],
    w: &[f32],
    (rows, d_in, d_out): (usize, usize, usize),
    accumulate: bool,
) {
    assert!(
        out.len() == rows * d_out && x.len() == rows * d_in && w.len() == d_out * d_in,
        "linear: buffers of {}, {} and {} values for {rows} rows of {d_in} → {d_out}",
        out.len(),
        x.len(),
        w.len()
    );
    // SAFETY: out is `rows × d_out` row-major; x is `rows × d_in` row-major; wᵀ is read from
    // the `d_out × d_in` row-major weight (element (k, n) at `n·d_in + k`): every index stays
    // inside its slice, whose lengths are asserted above; `out` is read only when
    // `accumulate`, which the caller passes only once it has written every value.
    unsafe {
        gemm::gemm(
            rows,
            d_out,
            d_in,
            out.as_mut_ptr().cast::<f32>(),
            1,
            d_out as isize,
            accumulate,
            x.as_ptr(),
            1,
            d_in as isize,
            w.as_ptr(),
            d_in as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(rayon::current_num_threads()),
        );
    }
}

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.compute((xs, xl), (ws, wl), None)
    }
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "linear-plus-residual"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        rs: &CpuStorage,
        rl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.compute((xs, xl), (ws, wl), Some((rs, rl)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{max_difference, random};
    use super::*;

    /// candle's product, bias and sum, as `nn::Linear` computes off the CPU.
    fn reference(x: &Tensor, w: &Tensor, b: Option<&Tensor>, r: Option<&Tensor>) -> Tensor {
        let mut y = x.matmul(&w.t().unwrap()).unwrap();
        if let Some(b) = b {
            y = y.broadcast_add(b).unwrap();
        }
        if let Some(r) = r {
            y = (y + r).unwrap();
        }
        y
    }

    #[test]
    fn linear_equals_candles_ops_with_and_without_bias_and_residual() {
        // (rows, in, out): single rows and columns, sizes off the vector width, SD's sizes.
        let shapes = [
            (1, 1, 1),
            (3, 5, 7),
            (17, 33, 65),
            (64, 320, 320),
            (100, 640, 96),
        ];
        for (seed, (rows, d_in, d_out)) in shapes.into_iter().enumerate() {
            let seed = 10 * seed as u64;
            let x = random(&[rows, d_in], seed, 1.0);
            let w = random(&[d_out, d_in], seed + 1, 0.5);
            let b = random(&[d_out], seed + 2, 1.0);
            let r = random(&[rows, d_out], seed + 3, 1.0);
            for (bias, residual) in [
                (None, None),
                (Some(&b), None),
                (None, Some(&r)),
                (Some(&b), Some(&r)),
            ] {
                let ours = linear(&x, &w, bias, residual).unwrap();
                let theirs = reference(&x, &w, bias, residual);
                assert_eq!(ours.dims(), theirs.dims());
                let scale = 1.0 + (d_in as f32).sqrt();
                let difference = max_difference(&ours, &theirs);
                assert!(
                    difference <= 1e-5 * scale,
                    "{rows}×{d_in}→{d_out}, bias {}, residual {}: off by {difference}",
                    bias.is_some(),
                    residual.is_some()
                );
            }
        }
    }

    /// `t` rounded to bf16 and back.
    fn rounded(t: &Tensor) -> Tensor {
        t.to_dtype(DType::BF16)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
    }

    #[test]
    fn linear_in_bf16_equals_the_f32_product_of_the_rounded_inputs() {
        // The product multiplies bf16 values (x narrowed as it is packed, on a CPU with
        // AVX512-BF16; x kept in f32 on the f32 fallback) with f32 accumulation: within f32
        // rounding of the f32 product of those inputs, and within bf16's rounding (1 %) of
        // the product of the unrounded ones, relative to Σ|x·w| (measured: 6.8e-8 and 1.4e-3).
        // A bf16 x on such a CPU gives a bf16 result: within its rounding (2⁻⁸ of the value,
        // so of Σ|x·w|) of the f32 product of the rounded inputs.
        let shapes = [
            (1, 1, 1),
            (3, 5, 7),
            (17, 33, 65),
            (100, 640, 96),
            (250, 321, 47),
        ];
        let (mut worst_rounded, mut worst_unrounded) = (0f32, 0f32);
        for (seed, (rows, d_in, d_out)) in shapes.into_iter().enumerate() {
            let seed = 10 * seed as u64 + 100;
            let x = random(&[rows, d_in], seed, 1.0);
            let w = random(&[d_out, d_in], seed + 1, 0.5);
            let b = random(&[d_out], seed + 2, 1.0);
            let r = random(&[rows, d_out], seed + 3, 1.0);
            let w_bf16 = w.to_dtype(DType::BF16).unwrap();
            let magnitude = (x
                .abs()
                .unwrap()
                .matmul(&w.abs().unwrap().t().unwrap())
                .unwrap()
                + r.abs().unwrap().broadcast_add(&b.abs().unwrap()).unwrap())
            .unwrap();
            for x_bf16 in [false, true] {
                let input = if x_bf16 {
                    x.to_dtype(DType::BF16).unwrap()
                } else {
                    x.clone()
                };
                let ours = linear(&input, &w_bf16, Some(&b), Some(&r)).unwrap();
                let in_bf16 = x_bf16 && bf16_gemm::available();
                let dtype = if in_bf16 { DType::BF16 } else { DType::F32 };
                assert_eq!(ours.dtype(), dtype);
                let ours = ours.to_dtype(DType::F32).unwrap();
                let allowed = if in_bf16 { 2f32.powi(-8) } else { 1e-5 };
                let x_multiplied = if x_bf16 || bf16_gemm::available() {
                    rounded(&x)
                } else {
                    x.clone()
                };
                let of_rounded = reference(&x_multiplied, &rounded(&w), Some(&b), Some(&r));
                let exact = reference(&x, &w, Some(&b), Some(&r));
                let ratio = |theirs: &Tensor| {
                    let difference = (&ours - theirs).unwrap().abs().unwrap();
                    super::super::test_support::max_abs(&(difference / &magnitude).unwrap())
                };
                let (off_rounded, off_exact) = (ratio(&of_rounded), ratio(&exact));
                let case = format!("{rows}×{d_in}→{d_out}, x in bf16: {x_bf16}");
                assert!(
                    off_rounded < allowed,
                    "{case}: {off_rounded} of the rounded inputs'"
                );
                assert!(off_exact < 1e-2, "{case}: {off_exact} of the f32 product");
                worst_rounded = worst_rounded.max(off_rounded);
                worst_unrounded = worst_unrounded.max(off_exact);
            }
        }
        println!(
            "linear in bf16: worst {worst_rounded:e} (rounded inputs), {worst_unrounded:e} (f32)"
        );
    }

    #[test]
    fn geglu_of_a_bf16_product_equals_the_gated_f32_product() {
        // Gated as its sums are rounded (bf16 in, bf16 out, on a CPU with AVX512-BF16) or
        // after an f32 product: within bf16's rounding (2⁻⁸ of a value; measured 2.6e-3 of
        // the largest) of the f32 GEGLU of the rounded inputs' product, at most 2⁻⁷ of the
        // largest value. Widths whose halves are whole strips of 32 columns and not.
        for (seed, (rows, d_in, d_out)) in [(7, 40, 64), (70, 320, 256), (33, 96, 70)]
            .into_iter()
            .enumerate()
        {
            let seed = 10 * seed as u64 + 300;
            let half = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
            let x = half(&random(&[rows, d_in], seed, 1.0));
            let w = half(&random(&[d_out, d_in], seed + 1, 0.5));
            let b = random(&[d_out], seed + 2, 1.0);
            let kept = PackedWeights::default();
            let ours = geglu_keeping(&x, &w, Some(&b), Some(&kept)).unwrap();
            let widen = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            let product = reference(&widen(&x), &widen(&w), Some(&b), None);
            let theirs = crate::kernels::geglu::geglu(&product, None).unwrap();
            assert_eq!(ours.dims(), [rows, d_out / 2]);
            let expected = if bf16_gemm::available() {
                DType::BF16
            } else {
                DType::F32
            };
            assert_eq!(ours.dtype(), expected);
            let difference = max_difference(&widen(&ours), &theirs);
            let largest = super::super::test_support::max_abs(&theirs);
            assert!(
                difference <= largest / 128.0,
                "{rows}×{d_in}→{d_out}: off by {difference}"
            );
        }
    }

    /// A bf16 weight packed once into its layer's `PackedWeights` gives the outputs packing
    /// at every call gives, bit for bit; later calls read the kept packing (another weight of
    /// the same shape gives the first one's outputs: one `PackedWeights` per layer), and a
    /// weight of another shape is refused.
    #[test]
    fn a_weight_kept_packed_gives_the_same_outputs_and_is_packed_once() {
        if !bf16_gemm::available() {
            return;
        }
        let half = |t: Tensor| t.to_dtype(DType::BF16).unwrap();
        let x = random(&[40, 48], 1, 1.0);
        let (w, b, r) = (
            half(random(&[24, 48], 2, 0.5)),
            random(&[24], 3, 1.0),
            random(&[40, 24], 4, 1.0),
        );
        let kept = PackedWeights::default();
        let fresh = linear(&x, &w, Some(&b), Some(&r)).unwrap();
        for _ in 0..2 {
            let with_kept = linear_keeping(&x, &w, Some(&b), Some(&r), Some(&kept)).unwrap();
            assert_eq!(max_difference(&fresh, &with_kept), 0.0);
        }
        assert!(kept.is_made(), "packed at the first call, kept");
        let same_shape = half(random(&[24, 48], 5, 0.5));
        let read_kept = linear_keeping(&x, &same_shape, Some(&b), Some(&r), Some(&kept)).unwrap();
        assert_eq!(max_difference(&fresh, &read_kept), 0.0);
        // Layers called inside `without_keeping` (the text encoders) keep nothing.
        let unkept = PackedWeights::default();
        let inside = super::super::kept::without_keeping(|| {
            linear_keeping(&x, &w, Some(&b), Some(&r), Some(&unkept)).unwrap()
        });
        assert_eq!(max_difference(&fresh, &inside), 0.0);
        assert!(!unkept.is_made(), "nothing kept inside without_keeping");
        linear_keeping(&x, &w, None, None, Some(&unkept)).unwrap();
        assert!(unkept.is_made(), "kept again after it");
        let other = half(random(&[24, 40], 6, 0.5));
        let x_other = random(&[40, 40], 7, 1.0);
        assert!(linear_keeping(&x_other, &other, None, None, Some(&kept)).is_err());
    }

    /// Packs are kept while their bytes fit the budget, and not past it.
    #[test]
    fn packs_are_kept_within_their_budget() {
        let used = AtomicUsize::new(0);
        assert!(reserve(&used, 600, 1000));
        assert!(!reserve(&used, 500, 1000), "past the budget");
        assert_eq!(
            used.load(Ordering::Relaxed),
            600,
            "a refused reservation counts nothing"
        );
        assert!(reserve(&used, 400, 1000), "up to the budget");
        assert_eq!(used.load(Ordering::Relaxed), 1000);
    }

    #[test]
    fn mismatched_shapes_are_refused() {
        let x = random(&[4, 8], 1, 1.0);
        let w = random(&[6, 7], 2, 1.0);
        assert!(linear(&x, &w, None, None).is_err());
        let w = random(&[6, 8], 2, 1.0);
        let short_bias = random(&[5], 3, 1.0);
        assert!(linear(&x, &w, Some(&short_bias), None).is_err());
        let wrong_residual = random(&[4, 5], 4, 1.0);
        assert!(linear(&x, &w, None, Some(&wrong_residual)).is_err());
    }
}
