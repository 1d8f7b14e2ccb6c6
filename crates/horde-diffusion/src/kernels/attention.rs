//! Fused scaled dot-product attention on the CPU.
//!
//! candle computes attention as separate ops: the heads split out and made contiguous, the
//! scores `q·kᵀ` for every query at once (`[batch, heads, q, k]`: at 512×512 that is
//! 2 × 8 × 4096 × 4096 floats, 1 GiB), a scaled copy of them, a softmax into a third buffer,
//! then `·v`. Every one of those buffers is fresh memory the kernel must zero page by page.
//!
//! In f32 on a CPU with AVX-512F, [`lanes`] runs heads of up to [`lanes::MAX_DIM`] channels
//! fused, a block of 32 queries of one head per task with the queries in the vector lanes, the
//! keys in chunks with an online softmax. Elsewhere (and for the VAE's one wide head) one task
//! takes a block of [`QUERY_BLOCK`] query rows of one batch item and, head by head, computes
//! that block's scores into a scratch buffer reused by the thread through `gemm`, takes the
//! softmax in place and multiplies by `v` straight into the output rows. Heads are read in
//! place from the `[batch, tokens, heads·dim]` inputs through strides, so nothing is split,
//! transposed or copied; tasks write disjoint output rows and run in parallel on rayon.
//!
//! In bf16, on CPUs with AVX512-BF16, both products run in bf16 with f32 accumulation. Where
//! the CPU has AMX tiles, [`tiles`] runs the whole of it, fused, a block of 32 queries of one
//! head at a time; without them [`bf16_lanes`] does the same on vector registers with the
//! queries in the lanes (heads of up to [`bf16_lanes::MAX_DIM`] channels). Wider heads go
//! through `bf16_gemm` ([`attend_in_bf16`]): each head's keys and values are packed once per
//! batch item, the scores come out in f32, and the softmax's exponentials, from a polynomial
//! of bf16's precision, are written straight in bf16 as the second product's `A`
//! ([`exponentiate_to_bf16`]). Elsewhere bf16 inputs are widened to f32 first.

mod bf16_lanes;
mod lanes;
mod tiles;

use super::bf16_gemm::{self, Out, PackedB, Values, View};
use super::{contiguous_f32, contiguous_values, filled, unfilled};
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use half::bf16;
use rayon::prelude::*;
use std::cell::RefCell;
use std::mem::MaybeUninit;

/// Query rows per task. Each task packs the head's keys and values again for its gemms, so
/// larger blocks pack less often; their scores (256 × 4 096 keys: 4 MiB) still stay near the
/// cores. A UNet step at 512² took 8.0 s with blocks of 64, 7.9 with 128, 7.3 with 256, 7.5
/// with 512 and 7.7 with 1 024.
const QUERY_BLOCK: usize = 256;

/// Query rows per task in bf16, where the keys and values are packed once per batch item, so
/// blocks cost no packing: the 4 096-token self-attention took 224–236 ms with blocks of 32,
/// 64, 128 or 256 (`engine --part attention`), the others the same within noise.
const QUERY_BLOCK_BF16: usize = 128;

/// `softmax(q·kᵀ / √d)·v` per head over `[batch, tokens, heads·dim]` tensors on the CPU; the
/// result in f32. All three in bf16 on a CPU with AVX512-BF16 run in bf16; anything else is
/// widened to f32 first.
pub fn fused_attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
    let in_bf16 = [q, k, v].iter().all(|t| t.dtype() == DType::BF16) && bf16_gemm::available();
    let contiguous = |t: &Tensor| match t.dtype() {
        DType::F32 => t.contiguous(),
        DType::BF16 if in_bf16 => t.contiguous(),
        _ => super::convert::widen(t),
    };
    let (q, k, v) = (contiguous(q)?, contiguous(k)?, contiguous(v)?);
    q.apply_op3_no_bwd(&k, &v, &FusedAttention { heads })
}

struct FusedAttention {
    heads: usize,
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (batch, q_len, width) = ql.shape().dims3()?;
        let (k_batch, k_len, k_width) = kl.shape().dims3()?;
        if kl.shape() != vl.shape() || k_batch != batch || k_width != width {
            candle_core::bail!(
                "fused attention: q {:?}, k {:?} and v {:?} do not match",
                ql.shape(),
                kl.shape(),
                vl.shape()
            );
        }
        if width % self.heads != 0 {
            candle_core::bail!("fused attention: {width} channels in {} heads", self.heads);
        }
        let shape = Shapes {
            q_len,
            k_len,
            width,
            heads: self.heads,
        };
        let op = self.name();
        if let CpuStorage::BF16(_) = qs {
            let (q, k, v) = (
                contiguous_values::<bf16>(qs, ql, op)?,
                contiguous_values::<bf16>(ks, kl, op)?,
                contiguous_values::<bf16>(vs, vl, op)?,
            );
            let in_lanes = bf16_lanes::available() && width / self.heads <= bf16_lanes::MAX_DIM;
            let out = if tiles::available() && k_len > 0 && width > 0 {
                tiles::attend(&shape, batch, (q, k, v), |_| {})
            } else if in_lanes && k_len > 0 && width > 0 {
                bf16_lanes::attend(&shape, batch, (q, k, v))
            } else {
                attend_in_bf16(&shape, batch, (q, k, v))
            };
            return Ok((CpuStorage::F32(out), ql.shape().clone()));
        }
        let (q, k, v) = (
            contiguous_f32(qs, ql, op)?,
            contiguous_f32(ks, kl, op)?,
            contiguous_f32(vs, vl, op)?,
        );
        let in_lanes = lanes::available() && width / self.heads <= lanes::MAX_DIM;
        let out = if in_lanes && k_len > 0 && width > 0 {
            lanes::attend(&shape, batch, (q, k, v))
        } else {
            attend_with_gemm(&shape, batch, (q, k, v))
        };
        Ok((CpuStorage::F32(out), ql.shape().clone()))
    }
}

/// The f32 attention through `gemm`, blocks of [`QUERY_BLOCK`] queries in parallel: where
/// the CPU lacks AVX-512F or the heads are wider than [`lanes::MAX_DIM`] ([`lanes`] runs the
/// rest).
fn attend_with_gemm(s: &Shapes, batch: usize, (q, k, v): (&[f32], &[f32], &[f32])) -> Vec<f32> {
    let (q_len, k_len, width) = (s.q_len, s.k_len, s.width);
    // Written whole: each head's second product overwrites its columns of every row.
    let mut out = unfilled(batch * q_len * width);
    if q_len > 0 && width > 0 {
        out.par_chunks_mut(q_len * width)
            .enumerate()
            .for_each(|(b, out_b)| {
                let q_b = &q[b * q_len * width..(b + 1) * q_len * width];
                let k_b = &k[b * k_len * width..(b + 1) * k_len * width];
                let v_b = &v[b * k_len * width..(b + 1) * k_len * width];
                out_b
                    .par_chunks_mut(QUERY_BLOCK * width)
                    .enumerate()
                    .for_each(|(block, out_rows)| {
                        let q_rows = &q_b[block * QUERY_BLOCK * width..];
                        attend_block(s, q_rows, k_b, v_b, out_rows);
                    });
            });
    }
    // SAFETY: the blocks cover every row of every batch item, and in each block every
    // head's second product wrote its columns of every row (none when `q_len` or `width`
    // is 0).
    #[allow(unsafe_code)]
    unsafe {
        filled(out)
    }
}

/// The bf16 attention (`bf16_gemm`, so the CPU has AVX512-BF16): per batch item, each head's
/// keys and values packed once, then the blocks of queries in parallel.
fn attend_in_bf16(s: &Shapes, batch: usize, (q, k, v): (&[bf16], &[bf16], &[bf16])) -> Vec<f32> {
    let (q_len, k_len, width) = (s.q_len, s.k_len, s.width);
    let dim = width / s.heads;
    // Written whole: each head's second product overwrites its columns of every row.
    let mut out = unfilled(batch * q_len * width);
    if q_len > 0 && width > 0 {
        out.par_chunks_mut(q_len * width)
            .enumerate()
            .for_each(|(b, out_b)| {
                let item = b * k_len * width;
                let packed: Vec<(PackedB, PackedB)> = (0..s.heads)
                    .into_par_iter()
                    .map(|h| {
                        let at = item + h * dim;
                        let keys = View::new(Values::Bf16(k), at, (dim, k_len), (1, width));
                        let values = View::new(Values::Bf16(v), at, (k_len, dim), (width, 1));
                        (PackedB::pack(keys, false), PackedB::pack(values, false))
                    })
                    .collect();
                let block_rows = QUERY_BLOCK_BF16;
                out_b
                    .par_chunks_mut(block_rows * width)
                    .enumerate()
                    .for_each(|(block, out_rows)| {
                        let first = b * q_len * width + block * block_rows * width;
                        attend_block_bf16(s, (q, first), &packed, out_rows);
                    });
            });
    }
    // SAFETY: as in the f32 path: every head's second product wrote its columns of every row
    // of every block.
    #[allow(unsafe_code)]
    unsafe {
        filled(out)
    }
}

/// A thread's buffers for one block and head of the bf16 path, kept from block to block.
#[derive(Default)]
struct Bf16Scratch {
    /// The scores (written by the first product before anything reads them).
    scores: Vec<MaybeUninit<f32>>,
    /// Their exponentials in bf16, the second product's `A`.
    weights: Vec<bf16>,
    /// Each row's inverse sum.
    inverses: Vec<f32>,
}

thread_local! {
    static BF16_SCRATCH: RefCell<Bf16Scratch> = RefCell::new(Bf16Scratch::default());
}

/// [`attend_block`] in bf16: the query rows from `first` of `q`, the heads' keys and values
/// packed in `packed`.
#[allow(unsafe_code)]
fn attend_block_bf16(
    s: &Shapes,
    (q, first): (&[bf16], usize),
    packed: &[(PackedB, PackedB)],
    out_rows: &mut [MaybeUninit<f32>],
) {
    let rows = out_rows.len() / s.width;
    let dim = s.width / s.heads;
    let scale = 1.0 / (dim as f32).sqrt();
    BF16_SCRATCH.with(|scratch| {
        let Bf16Scratch {
            scores,
            weights,
            inverses,
        } = &mut *scratch.borrow_mut();
        scores.resize(rows * s.k_len, MaybeUninit::uninit());
        weights.resize(rows * s.k_len, bf16::ZERO);
        inverses.resize(rows, 0.0);
        for (h, (keys, values)) in packed.iter().enumerate() {
            let q_h = View::new(Values::Bf16(q), first + h * dim, (rows, dim), (s.width, 1));
            let into_scores = Out {
                values: &mut scores[..],
                start: 0,
                row_stride: s.k_len,
            };
            // SAFETY: not accumulating: the product only writes the scores.
            unsafe { bf16_gemm::matmul(into_scores, q_h, keys.paired(), scale, false, false) };
            // SAFETY: the product just above wrote every score (`rows × k_len`).
            let written = unsafe { scores.assume_init_ref() };
            let pairs = written
                .chunks_exact(s.k_len)
                .zip(weights.chunks_exact_mut(s.k_len));
            for ((row, weights), inverse) in pairs.zip(inverses.iter_mut()) {
                *inverse = 1.0 / exponentiate_to_bf16(row, weights);
            }
            let weights = View::rows(Values::Bf16(weights), rows, s.k_len);
            let into_head = Out {
                values: &mut *out_rows,
                start: h * dim,
                row_stride: s.width,
            };
            // SAFETY: not accumulating: the product only writes the head's columns.
            unsafe { bf16_gemm::matmul(into_head, weights, values.paired(), 1.0, false, false) };
            for (out_row, inverse) in out_rows.chunks_exact_mut(s.width).zip(inverses.iter()) {
                // SAFETY: the product just above wrote these columns of every row.
                let head = unsafe { out_row[h * dim..(h + 1) * dim].assume_init_mut() };
                for o in head {
                    *o *= inverse;
                }
            }
        }
    });
}

/// The sizes every block shares.
struct Shapes {
    q_len: usize,
    k_len: usize,
    width: usize,
    heads: usize,
}

impl Shapes {
    /// Panics unless `q`, `k` and `v` hold `batch` items of these shapes, with at least one
    /// key and one channel, in whole heads: what the fused paths' raw reads rely on.
    fn assert_inputs<T>(&self, batch: usize, (q, k, v): (&[T], &[T], &[T]), path: &str) {
        let (q_len, k_len, width) = (self.q_len, self.k_len, self.width);
        assert!(
            q.len() == batch * q_len * width
                && k.len() == batch * k_len * width
                && v.len() == k.len()
                && self.heads > 0
                && width.is_multiple_of(self.heads)
                && width > 0
                && k_len > 0,
            "attention {path}: q {} k {} v {} values for {batch} × ({q_len}, {k_len}) × {width}",
            q.len(),
            k.len(),
            v.len()
        );
    }

    /// `task(item, b, h, first, rows)` for every block of `queries` queries (`rows` of them
    /// from query `first`) of every head `h` of every batch item `b` (`item = b·heads + h`),
    /// in parallel, head-major: a thread's consecutive tasks read the same head's packed keys
    /// and values from its cache.
    fn for_each_block(
        &self,
        batch: usize,
        queries: usize,
        task: impl Fn(usize, usize, usize, usize, usize) + Sync,
    ) {
        let blocks = self.q_len.div_ceil(queries);
        (0..batch * self.heads * blocks)
            .into_par_iter()
            .for_each(|index| {
                let (item, block) = (index / blocks, index % blocks);
                let first = block * queries;
                let rows = queries.min(self.q_len - first);
                task(item, item / self.heads, item % self.heads, first, rows);
            });
    }
}

/// The output of the fused paths, which tasks write through a raw pointer since their regions
/// interleave (each its rows of its head's columns).
#[derive(Clone, Copy)]
struct Output(*mut f32);

impl Output {
    /// The pointer to value `at` (a method, so that closures capture the `Sync` wrapper).
    fn at(self, at: usize) -> *mut f32 {
        self.0.wrapping_add(at)
    }
}

// SAFETY: tasks write disjoint regions through it (see `Shapes::for_each_block`).
#[allow(unsafe_code)]
unsafe impl Send for Output {}
// SAFETY: as above.
#[allow(unsafe_code)]
unsafe impl Sync for Output {}

thread_local! {
    /// Each thread's scores for one block and head, and its rows' inverse sums, reused from
    /// block to block.
    static SCORES: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Attention of the query rows at the start of `q_rows` (as many as `out_rows` holds) over all
/// of `k` and `v` (one batch item), head by head, into `out_rows`. The gemm crate takes raw
/// pointers and strides (so heads are read in place), hence the unsafe blocks.
#[allow(unsafe_code)]
fn attend_block(
    s: &Shapes,
    q_rows: &[f32],
    k: &[f32],
    v: &[f32],
    out_rows: &mut [MaybeUninit<f32>],
) {
    let rows = out_rows.len() / s.width;
    let dim = s.width / s.heads;
    // What the gemms' raw reads and writes below rely on, checked once per block.
    assert!(
        out_rows.len() == rows * s.width
            && dim * s.heads == s.width
            && rows <= s.q_len
            && q_rows.len() >= rows * s.width
            && k.len() >= s.k_len * s.width
            && v.len() >= s.k_len * s.width,
        "attention block: buffers too short for {rows} rows over {} keys",
        s.k_len
    );
    let scale = 1.0 / (dim as f32).sqrt();
    SCORES.with(|scratch| {
        let (scores, inverses) = &mut *scratch.borrow_mut();
        scores.resize(rows * s.k_len, 0.0);
        inverses.resize(rows, 0.0);
        for h in 0..s.heads {
            let offset = h * dim;
            // scores = scale · q_h · k_hᵀ   (rows × k_len)
            // SAFETY: every pointer and stride below stays inside its slice: q rows
            // `0..rows` and k, v rows `0..k_len` of width `width`, columns
            // `offset..offset + dim`; the scores are `rows × k_len`.
            unsafe {
                gemm::gemm(
                    rows,
                    s.k_len,
                    dim,
                    scores.as_mut_ptr(),
                    1,
                    s.k_len as isize,
                    false,
                    q_rows.as_ptr().add(offset),
                    1,
                    s.width as isize,
                    k.as_ptr().add(offset),
                    s.width as isize,
                    1,
                    0.0,
                    scale,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            // The softmax without its division: the rows' outputs are divided instead, `dim`
            // values a row rather than `k_len`.
            for (row, inverse) in scores.chunks_exact_mut(s.k_len).zip(inverses.iter_mut()) {
                *inverse = 1.0 / exponentiate_in_place(row);
            }
            // out_h = scores · v_h   (rows × dim), into the head's columns of the output rows.
            // SAFETY: as above; the output rows are `rows × width`.
            unsafe {
                gemm::gemm(
                    rows,
                    dim,
                    s.k_len,
                    out_rows.as_mut_ptr().cast::<f32>().add(offset),
                    1,
                    s.width as isize,
                    false,
                    scores.as_ptr(),
                    1,
                    s.k_len as isize,
                    v.as_ptr().add(offset),
                    1,
                    s.width as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            for (out_row, inverse) in out_rows.chunks_exact_mut(s.width).zip(inverses.iter()) {
                // SAFETY: the product just above wrote these columns of every row (it never
                // reads them: `read_dst` is false).
                let head = unsafe { out_row[offset..offset + dim].assume_init_mut() };
                for o in head {
                    *o *= inverse;
                }
            }
        }
    });
}

/// Lanes the loops below are written in, so the compiler turns each into vector code.
const LANES: usize = 16;

with_widest_vectors! {
    /// `row ← exp(row − max)`, returning the sum: the softmax without its division (the
    /// caller divides the outputs instead), with the widest vector instructions this CPU has:
    /// at 512×512 the softmax sees a billion scores per UNet step, and libm's scalar `expf`
    /// alone was 7 % of the step.
    fn exponentiate_in_place(row: &mut [f32]) -> f32 => exponentiate_lanes
}

/// `row ← exp(row − max)` in branch-free loops over [`LANES`] lanes; returns the sum.
#[inline(always)]
fn exponentiate_lanes(row: &mut [f32]) -> f32 {
    let mut maxima = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (m, x) in maxima.iter_mut().zip(chunk) {
            *m = if *x > *m { *x } else { *m };
        }
    }
    let max = chunks
        .remainder()
        .iter()
        .chain(&maxima)
        .fold(f32::NEG_INFINITY, |m, x| if *x > m { *x } else { m });
    let mut sums = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (s, x) in sums.iter_mut().zip(chunk.iter_mut()) {
            *x = fast_exp(*x - max);
            *s += *x;
        }
    }
    let mut sum: f32 = sums.iter().sum();
    for x in chunks.into_remainder() {
        *x = fast_exp(*x - max);
        sum += *x;
    }
    sum
}

/// `ln 2` in two parts, `x − n·ln 2` exact to well past f32 for the `n` an exponential sees.
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
/// The degree-6 polynomial for `eʳ` on `|r| ≤ ln 2 / 2`, highest degree first (Horner).
const EXP_POLYNOMIAL: [f32; 7] = [
    0.001_393_986_6,
    0.008_333_452,
    0.041_666_41,
    0.166_666_67,
    0.5,
    1.0,
    1.0,
];

/// `eˣ` for `x ≤ 0` in f32, relative error under 3·2⁻²³ (3 ulp): `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2`, a degree-6
/// polynomial for `eʳ`, and `2ⁿ` put straight into the exponent bits. Branch-free, so it
/// vectorises. Below −87 it returns 2⁻¹²⁶ instead of a subnormal (nothing a softmax sees).
#[inline(always)]
pub(crate) fn fast_exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // Adding and taking away 1.5·2²³ rounds to the nearest integer in f32 arithmetic.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 0.0);
    let n = (x * LOG2_E + ROUND) - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let (highest, rest) = EXP_POLYNOMIAL.split_first().expect("seven coefficients");
    let p = rest.iter().fold(*highest, |p, c| p * r + c);
    // 2ⁿ without a float-to-integer cast (Rust's saturating `as` does not vectorise): adding
    // 1.5·2²³ leaves the integer n + 127 in the low mantissa bits, which the shift moves into
    // the exponent field.
    let scale = f32::from_bits(((n + 127.0) + ROUND).to_bits() << 23);
    p * scale
}

/// The degree-4 Taylor polynomial for `eʳ` on `|r| ≤ ln 2 / 2`, highest degree first: within
/// `r⁵/120 < 4.3·10⁻⁵` (2⁻¹⁴) relative, where rounding the weights it makes to bf16 moves
/// them by up to 2⁻⁸.
const EXP_POLYNOMIAL_BF16: [f32; 5] = [1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0];

/// `weights ← bf16(exp(row − max))`, returning the sum of the exponentials (in f32, before
/// rounding): the bf16 path's softmax without its division, its weights written in bf16 for
/// the second product to copy rather than narrow, from a shorter polynomial
/// ([`EXP_POLYNOMIAL_BF16`]) since only bf16's 8 bits are kept (it was a quarter of the bf16
/// attention's time with [`exponentiate_in_place`] and the narrowing after).
fn exponentiate_to_bf16(row: &[f32], weights: &mut [bf16]) -> f32 {
    assert_eq!(row.len(), weights.len(), "a weight per score");
    #[cfg(target_arch = "x86_64")]
    if bf16_gemm::available() && lanes::available() {
        // SAFETY: the CPU has AVX512-BF16 and AVX-512F, checked just above.
        #[allow(unsafe_code)]
        return unsafe { exponentiate_to_bf16_avx512(row, weights) };
    }
    let max = row.iter().fold(f32::NEG_INFINITY, |m, x| m.max(*x));
    let mut sum = 0.0;
    for (x, w) in row.iter().zip(weights) {
        let e = fast_exp(x - max);
        sum += e;
        *w = bf16::from_f32(e);
    }
    sum
}

/// [`exponentiate_to_bf16`] in 16 lanes (`vcvtneps2bf16` rounds to nearest even, as `half`).
///
/// # Safety
///
/// The CPU has AVX512-BF16 and AVX-512F; `weights` is as long as `row`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512bf16,avx512f,avx512bw,avx512vl")]
#[allow(unsafe_code)]
unsafe fn exponentiate_to_bf16_avx512(row: &[f32], weights: &mut [bf16]) -> f32 {
    use std::arch::x86_64::*;
    let (n, x, w) = (row.len(), row.as_ptr(), weights.as_mut_ptr());
    let mask = |at: usize| super::lanes(n - at);
    let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
    for at in (0..n).step_by(16) {
        // SAFETY: the lanes under the mask are inside the row.
        let v = unsafe { _mm512_mask_loadu_ps(max, mask(at), x.add(at)) };
        max = _mm512_max_ps(max, v);
    }
    let max = _mm512_set1_ps(_mm512_reduce_max_ps(max));
    let mut sum = _mm512_setzero_ps();
    for at in (0..n).step_by(16) {
        let m = mask(at);
        // SAFETY: as above; the masked lanes of the weights are inside them (as long as the
        // row, the caller's promise).
        unsafe {
            let v = _mm512_maskz_loadu_ps(m, x.add(at));
            let e = lanes::exp_with(_mm512_sub_ps(v, max), &EXP_POLYNOMIAL_BF16);
            sum = _mm512_mask_add_ps(sum, m, sum, e);
            let narrow: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(e));
            _mm256_mask_storeu_epi16(w.add(at).cast(), m, narrow);
        }
    }
    _mm512_reduce_add_ps(sum)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::max_difference;
    use super::*;
    use candle_core::Device;

    /// candle's own ops, as `nn::attention` computes without the fused kernel.
    pub(super) fn reference(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Tensor {
        let (batch, q_len, width) = q.dims3().unwrap();
        let k_len = k.dim(1).unwrap();
        let dim = width / heads;
        let split = |t: &Tensor, len: usize| {
            t.reshape((batch, len, heads, dim))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let (q, k, v) = (split(q, q_len), split(k, k_len), split(v, k_len));
        let scores = (q.matmul(&k.t().unwrap()).unwrap() * (1.0 / (dim as f64).sqrt())).unwrap();
        let weights = candle_nn::ops::softmax_last_dim(&scores).unwrap();
        weights
            .matmul(&v)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((batch, q_len, width))
            .unwrap()
    }

    pub(super) fn random(shape: (usize, usize, usize), seed: u64) -> Tensor {
        super::super::test_support::random(&[shape.0, shape.1, shape.2], seed, 2.0)
    }

    /// Each f32 path on this CPU: the public op (which picks one), and both paths called
    /// directly (the lanes where the CPU has AVX-512F).
    fn f32_paths() -> Vec<(&'static str, F32Path)> {
        let mut paths: Vec<(&'static str, F32Path)> = vec![("gemm", attend_with_gemm)];
        if lanes::available() {
            paths.push(("lanes", lanes::attend));
        }
        paths
    }

    type F32Path = fn(&Shapes, usize, (&[f32], &[f32], &[f32])) -> Vec<f32>;

    #[test]
    fn fused_attention_equals_candles_ops_on_many_shapes() {
        // (batch, query tokens, key tokens, heads, dim): blocks that divide the queries and
        // blocks that do not, self- and cross-attention, SD 1.5's and SDXL's head sizes, heads
        // cut into runs of channels that divide them (40, 20, 160, 64) and that do not (13).
        let shapes = [
            (1, 1, 1, 1, 1),
            (1, 5, 3, 1, 4),
            (2, 64, 64, 2, 8),
            (2, 65, 77, 8, 5),
            (1, 130, 130, 4, 40),
            (2, 200, 77, 8, 40),
            (1, 256, 256, 2, 64),
            (3, 63, 17, 3, 7),
            (1, 600, 50, 2, 8), // several blocks and a partial one
            (1, 33, 25, 2, 13),
            (2, 40, 12, 3, 20),
            (1, 31, 100, 1, 160),
            (1, 40, 33, 1, 200), // wider than the lanes take: the public op uses gemm
            // Many chunks of keys, the last partial: the online softmax's rescaling.
            (1, 40, 1000, 2, 40),
            (2, 33, 300, 3, 13),
        ];
        for (i, &(batch, q_len, k_len, heads, dim)) in shapes.iter().enumerate() {
            let width = heads * dim;
            let seed = i as u64 * 3;
            let q = random((batch, q_len, width), seed);
            let k = random((batch, k_len, width), seed + 1);
            let v = random((batch, k_len, width), seed + 2);
            let expected = reference(&q, &k, &v, heads);
            let fused = fused_attention(&q, &k, &v, heads).unwrap();
            assert_eq!(fused.dims(), expected.dims());
            let worst = max_difference(&fused, &expected);
            assert!(worst < 1e-5, "shape {:?}: off by {worst}", shapes[i]);
            let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let (q, k, v) = (values(&q), values(&k), values(&v));
            let s = Shapes {
                q_len,
                k_len,
                width,
                heads,
            };
            for (name, path) in f32_paths() {
                let out = path(&s, batch, (&q, &k, &v));
                let out = Tensor::from_vec(out, (batch, q_len, width), &Device::Cpu).unwrap();
                let worst = max_difference(&out, &expected);
                assert!(
                    worst < 1e-5,
                    "{name}, shape {:?}: off by {worst}",
                    shapes[i]
                );
            }
        }
    }

    #[test]
    fn attention_in_bf16_stays_within_a_stated_tolerance_of_f32() {
        // Against candle's f32 ops on the same bf16 values: the scores' products are exact
        // in f32 and only the softmax weights are rounded to bf16 (2⁻⁹ relative each), so
        // within 1 % of the values' largest magnitude (2.0 here); against the unrounded f32
        // inputs, the logits move with the inputs' rounding too: within 2 % (measured: 0.11 %
        // and 0.49 %).
        let shapes = [
            (1, 1, 1, 1, 1),
            (2, 65, 77, 8, 5),
            (1, 130, 130, 4, 40),
            (2, 300, 77, 8, 40),
            (1, 257, 256, 2, 64),
            (3, 63, 17, 3, 7),
        ];
        let (mut worst_rounded, mut worst_unrounded) = (0f32, 0f32);
        for (i, &(batch, q_len, k_len, heads, dim)) in shapes.iter().enumerate() {
            let width = heads * dim;
            let seed = i as u64 * 3 + 50;
            let q = random((batch, q_len, width), seed);
            let k = random((batch, k_len, width), seed + 1);
            let v = random((batch, k_len, width), seed + 2);
            let half = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
            let ours = fused_attention(&half(&q), &half(&k), &half(&v), heads).unwrap();
            assert_eq!(ours.dtype(), DType::F32);
            let wide = |t: &Tensor| half(t).to_dtype(DType::F32).unwrap();
            let of_rounded = reference(&wide(&q), &wide(&k), &wide(&v), heads);
            let exact = reference(&q, &k, &v, heads);
            let (off_rounded, off_exact) = (
                max_difference(&ours, &of_rounded) / 2.0,
                max_difference(&ours, &exact) / 2.0,
            );
            assert!(off_rounded < 1e-2, "shape {:?}: {off_rounded}", shapes[i]);
            assert!(off_exact < 2e-2, "shape {:?}: {off_exact}", shapes[i]);
            worst_rounded = worst_rounded.max(off_rounded);
            worst_unrounded = worst_unrounded.max(off_exact);
        }
        println!("attention in bf16: worst {worst_rounded:e} (rounded inputs), {worst_unrounded:e} (f32)");
    }

    /// Each bf16 path this CPU runs, called directly (the public op picks one).
    fn bf16_paths() -> Vec<(&'static str, Bf16Path)> {
        let mut paths: Vec<(&'static str, Bf16Path)> = Vec::new();
        if bf16_gemm::available() {
            paths.push(("bf16 gemm", attend_in_bf16));
        }
        if bf16_lanes::available() {
            paths.push(("bf16 lanes", bf16_lanes::attend));
        }
        if tiles::available() {
            paths.push(("tiles", |s, batch, qkv| {
                tiles::attend(s, batch, qkv, |_| {})
            }));
        }
        paths
    }

    type Bf16Path = fn(&Shapes, usize, (&[bf16], &[bf16], &[bf16])) -> Vec<f32>;

    #[test]
    fn every_bf16_path_is_within_its_tolerance_of_f32_on_many_shapes() {
        // Against candle's f32 ops on the same bf16 values, within 1 % of the values' largest
        // magnitude (as above): odd keys and channels (a pair's high half past the end), runs
        // of channels that divide the head and that do not, partial blocks of queries, SD
        // 1.5's heads of 40, 80 and 160 and SDXL's 64. Seen failing with the lanes' weights
        // interleaved the wrong way round and with an odd last key's partner left in.
        let shapes = [
            (1, 1, 1, 1, 1),
            (1, 5, 3, 1, 4),
            (2, 65, 77, 8, 5),
            (1, 130, 130, 4, 40),
            (2, 33, 77, 2, 40),
            (1, 70, 129, 2, 80),
            (1, 64, 64, 1, 160),
            (1, 257, 256, 2, 64),
            (3, 63, 17, 3, 7),
            (1, 33, 25, 2, 13),
        ];
        let paths = bf16_paths();
        for (i, &(batch, q_len, k_len, heads, dim)) in shapes.iter().enumerate() {
            let width = heads * dim;
            let seed = i as u64 * 3 + 90;
            let rounded = |t: Tensor| t.to_dtype(DType::BF16).unwrap();
            let q = rounded(random((batch, q_len, width), seed));
            let k = rounded(random((batch, k_len, width), seed + 1));
            let v = rounded(random((batch, k_len, width), seed + 2));
            let wide = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            let expected = reference(&wide(&q), &wide(&k), &wide(&v), heads);
            let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<bf16>().unwrap();
            let (q, k, v) = (values(&q), values(&k), values(&v));
            let s = Shapes {
                q_len,
                k_len,
                width,
                heads,
            };
            for (name, path) in &paths {
                let out = path(&s, batch, (&q, &k, &v));
                let out = Tensor::from_vec(out, (batch, q_len, width), &Device::Cpu).unwrap();
                let off = max_difference(&out, &expected) / 2.0;
                assert!(off < 1e-2, "{name}, shape {:?}: {off}", shapes[i]);
            }
        }
    }

    #[test]
    fn strided_inputs_are_read_as_their_values() {
        // A transposed view (not contiguous) gives the same answer as its contiguous copy.
        let q = random((2, 8, 12), 7).transpose(1, 2).unwrap(); // [2, 12, 8]
        let k = random((2, 10, 8), 8);
        let v = random((2, 10, 8), 9);
        let fused = fused_attention(&q, &k, &v, 2).unwrap();
        let expected = reference(&q.contiguous().unwrap(), &k, &v, 2);
        let worst = max_difference(&fused, &expected);
        assert!(worst < 1e-5, "off by {worst}");
    }

    #[test]
    fn fast_exp_is_within_three_ulp_of_exp() {
        let mut worst = 0f32;
        for i in 0..=870_000 {
            let x = -(i as f32) * 1e-4;
            let (ours, exact) = (fast_exp(x), (x as f64).exp() as f32);
            worst = worst.max((ours - exact).abs() / exact);
        }
        assert!(worst < 3.0 * f32::EPSILON, "relative error {worst}");
        assert_eq!(fast_exp(0.0), 1.0);
        assert!(fast_exp(-1000.0) > 0.0 && fast_exp(-1000.0) < 1e-37);
    }

    #[test]
    fn the_vector_softmax_equals_candles_softmax() {
        // The exponentials divided by the sum they return: the softmax the kernel applies.
        let softmax = |row: &mut Vec<f32>, exponentiate: fn(&mut [f32]) -> f32| {
            let inverse = 1.0 / exponentiate(row);
            row.iter_mut().for_each(|x| *x *= inverse);
        };
        for (len, seed) in [(1, 1), (15, 2), (16, 3), (77, 4), (4096, 5), (4099, 6)] {
            let row = random((1, 1, len), seed);
            let row = (row * 20.0).unwrap(); // wide spreads: many scores far below the max
            let mut ours = row.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            softmax(&mut ours, exponentiate_in_place);
            let mut portable = row.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            softmax(&mut portable, exponentiate_lanes);
            let expected = candle_nn::ops::softmax_last_dim(&row)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            for ((a, b), e) in ours.iter().zip(&portable).zip(&expected) {
                assert!((a - e).abs() < 1e-6, "length {len}: {a} against {e}");
                assert!((b - e).abs() < 1e-6, "length {len}: {b} against {e}");
            }
        }
    }

    #[test]
    fn the_bf16_exponentials_are_exp_rounded_to_bf16() {
        // Each weight within bf16's unit roundoff (2⁻⁸) of exp(x − max) beyond the polynomial's
        // 2⁻¹⁴, and the returned sum within 1e-4 of the exact sum; seen failing with the
        // polynomial's cubic term 1/5 instead of 1/6 (the sum of 4 096 then off by 1.7e-4).
        for (len, seed) in [(1, 1), (15, 2), (16, 3), (77, 4), (4096, 5), (4099, 6)] {
            let row = (random((1, 1, len), seed) * 20.0).unwrap();
            let row = row.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let mut weights = vec![bf16::NAN; len];
            let sum = exponentiate_to_bf16(&row, &mut weights);
            let max = row.iter().fold(f64::NEG_INFINITY, |m, x| m.max(*x as f64));
            let exact: Vec<f64> = row.iter().map(|x| (*x as f64 - max).exp()).collect();
            let total: f64 = exact.iter().sum();
            assert!(
                ((sum as f64 - total) / total).abs() < 1e-4,
                "length {len}: sum {sum} against {total}"
            );
            for (w, e) in weights.iter().zip(&exact) {
                let off = (w.to_f64() - e).abs();
                assert!(
                    off <= e * (2f64.powi(-8) + 2f64.powi(-14)) + 1e-38,
                    "{w} against {e}"
                );
            }
        }
    }

    #[test]
    fn mismatched_inputs_are_refused_and_other_dtypes_widened() {
        let q = random((1, 4, 8), 1);
        let k = random((1, 4, 6), 2);
        assert!(fused_attention(&q, &k, &k, 2).is_err());
        let k = random((1, 4, 8), 3);
        assert!(
            fused_attention(&q, &k, &k, 3).is_err(),
            "8 channels in 3 heads"
        );
        // Other dtypes are widened to f32 first.
        let half = q.to_dtype(DType::F16).unwrap();
        let widened = half.to_dtype(DType::F32).unwrap();
        let difference = max_difference(
            &fused_attention(&half, &k, &k, 2).unwrap(),
            &fused_attention(&widened, &k, &k, 2).unwrap(),
        );
        assert_eq!(difference, 0.0, "f16 is computed as its f32 values");
    }
}
