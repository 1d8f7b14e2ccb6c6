//! Fused scaled dot-product attention on the CPU.
//!
//! candle computes attention as separate ops: the heads split out and made contiguous, the
//! scores `q·kᵀ` for every query at once (`[batch, heads, q, k]`: at 512×512 that is
//! 2 × 8 × 4096 × 4096 floats, 1 GiB), a scaled copy of them, a softmax into a third buffer,
//! then `·v`. Every one of those buffers is fresh memory the kernel must zero page by page.
//!
//! Here one task takes a block of [`QUERY_BLOCK`] query rows of one batch item and, head by
//! head, computes that block's scores into a scratch buffer reused by the thread, takes
//! the softmax in place and multiplies by `v` straight into the output rows. Heads are read in
//! place from the `[batch, tokens, heads·dim]` inputs through strides, so nothing is split,
//! transposed or copied; tasks write disjoint output rows and run in parallel on rayon.

use super::{contiguous_f32, filled, unfilled};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::cell::RefCell;
use std::mem::MaybeUninit;

/// Query rows per task. Each task packs the head's keys and values again for its gemms, so
/// larger blocks pack less often; their scores (256 × 4 096 keys: 4 MiB) still stay near the
/// cores. A UNet step at 512² took 8.0 s with blocks of 64, 7.9 with 128, 7.3 with 256, 7.5
/// with 512 and 7.7 with 1 024.
const QUERY_BLOCK: usize = 256;

/// `softmax(q·kᵀ / √d)·v` per head over `[batch, tokens, heads·dim]` tensors, f32, on the CPU.
pub fn fused_attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
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
        let (q, k, v) = (
            contiguous_f32(qs, ql, op)?,
            contiguous_f32(ks, kl, op)?,
            contiguous_f32(vs, vl, op)?,
        );
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
                            attend_block(&shape, q_rows, k_b, v_b, out_rows);
                        });
                });
        }
        // SAFETY: the blocks cover every row of every batch item, and in each block every
        // head's second product wrote its columns of every row (none when `q_len` or `width`
        // is 0).
        #[allow(unsafe_code)]
        let out = unsafe { filled(out) };
        Ok((CpuStorage::F32(out), ql.shape().clone()))
    }
}

/// The sizes every block shares.
struct Shapes {
    q_len: usize,
    k_len: usize,
    width: usize,
    heads: usize,
}

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

/// `eˣ` for `x ≤ 0` in f32, relative error under 3·2⁻²³ (3 ulp): `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2`, a degree-6
/// polynomial for `eʳ`, and `2ⁿ` put straight into the exponent bits. Branch-free, so it
/// vectorises. Below −87 it returns 2⁻¹²⁶ instead of a subnormal (nothing a softmax sees).
#[inline(always)]
pub(crate) fn fast_exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding and taking away 1.5·2²³ rounds to the nearest integer in f32 arithmetic.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 0.0);
    let n = (x * LOG2_E + ROUND) - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (0.166_666_67
                    + r * (0.041_666_41 + r * (0.008_333_452 + r * 0.001_393_986_6)))));
    // 2ⁿ without a float-to-integer cast (Rust's saturating `as` does not vectorise): adding
    // 1.5·2²³ leaves the integer n + 127 in the low mantissa bits, which the shift moves into
    // the exponent field.
    let scale = f32::from_bits(((n + 127.0) + ROUND).to_bits() << 23);
    p * scale
}

#[cfg(test)]
mod tests {
    use super::super::test_support::max_difference;
    use super::*;
    use candle_core::DType;

    /// candle's own ops, as `nn::attention` computes without the fused kernel.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Tensor {
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

    fn random(shape: (usize, usize, usize), seed: u64) -> Tensor {
        super::super::test_support::random(&[shape.0, shape.1, shape.2], seed, 2.0)
    }

    #[test]
    fn fused_attention_equals_candles_ops_on_many_shapes() {
        // (batch, query tokens, key tokens, heads, dim): blocks that divide the queries and
        // blocks that do not, self- and cross-attention, SD 1.5's and SDXL's head sizes.
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
        ];
        for (i, &(batch, q_len, k_len, heads, dim)) in shapes.iter().enumerate() {
            let width = heads * dim;
            let seed = i as u64 * 3;
            let q = random((batch, q_len, width), seed);
            let k = random((batch, k_len, width), seed + 1);
            let v = random((batch, k_len, width), seed + 2);
            let fused = fused_attention(&q, &k, &v, heads).unwrap();
            let expected = reference(&q, &k, &v, heads);
            assert_eq!(fused.dims(), expected.dims());
            let worst = max_difference(&fused, &expected);
            assert!(worst < 1e-5, "shape {:?}: off by {worst}", shapes[i]);
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
    fn mismatched_inputs_are_refused() {
        let q = random((1, 4, 8), 1);
        let k = random((1, 4, 6), 2);
        assert!(fused_attention(&q, &k, &k, 2).is_err());
        let k = random((1, 4, 8), 3);
        assert!(
            fused_attention(&q, &k, &k, 3).is_err(),
            "8 channels in 3 heads"
        );
        let half = q.to_dtype(DType::F16).unwrap();
        assert!(fused_attention(&half, &k, &k, 2).is_err(), "f32 only");
    }
}
