//! f32 attention on AVX-512 with the queries in the vector lanes: scores, softmax and the
//! product with `v` for a block of 32 queries of one head in one task, every intermediate in
//! the cache.
//!
//! The general path ([`super::attend_with_gemm`]) runs both products through `gemm`, which
//! packs the head's 4 096 keys and values again for every block of queries and writes 256 ×
//! 4 096 scores (4 MiB, past L2) that the softmax then reads twice and the second product packs
//! again: timed alone, SD 1.5's 4 096-token self-attention ran at about 55 % of the rate the
//! same CPU reaches on a linear layer. Here the block's scores are stored transposed, a row per
//! key holding its score for each of the 32 queries (512 KiB at 4 096 keys: in L2), so that
//!
//! 1. `q·kᵀ` is 12 keys × 32 queries of accumulators per step of a channel: two vectors of
//!    the block's queries (transposed once per block) and twelve keys' values broadcast, each
//!    key packed once per head (`[run of 12 keys][channel][12]`, scaled by `1/√d`);
//! 2. each query's maximum and sum over the keys are vector maxima and sums down the rows, no
//!    reduction across lanes, and the exponentials are the engine's (within 3 ulp);
//! 3. the weights times `v` are a run of the head's channels × 32 queries of accumulators per
//!    key: two vectors of weights and the run's values broadcast, packed once per head
//!    (`[run][key][channels of the run]`), each output divided by its query's sum as it is
//!    written.
//!
//! Tasks are (batch item, head, block of queries), head-major, so a thread's consecutive tasks
//! read the same head's keys and values from its cache; each writes its rows of its head's
//! columns of the output. Used where the CPU has AVX-512F; [`super::attend_with_gemm`]
//! elsewhere.

use super::{Output, Shapes};
use rayon::prelude::*;
use std::cell::RefCell;

/// Vectors of 16 queries per task.
pub(super) const VECTORS: usize = 2;
/// Queries per task.
pub(super) const QUERIES: usize = 16 * VECTORS;
/// Keys per step of the scores: 12 × 2 accumulators, with the two query vectors 26 of the 32
/// registers.
const KEY_RUN: usize = 12;
/// The most channels per pass of the second product (12 × 2 accumulators); a head's channels
/// are cut into equal runs of [`value_run`] channels.
pub(super) const MAX_VALUE_RUN: usize = 12;

/// The widest head run this way: the block's transposed queries (`dim × 32` values, 20 KiB at
/// 160) stay in L1 beside the keys, and the second product passes over the weights `dim / 10`
/// times. The VAE's one head of 512 channels decoded 8 % slower this way than through `gemm`
/// (`engine --part vae`, 512²); SD 1.5's heads are 40 to 160 channels, SDXL's 64.
pub(super) const MAX_DIM: usize = 160;

/// Whether this CPU runs attention this way.
pub(super) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Channels per pass of the second product for heads of `dim` channels, at most `max`: the
/// largest run from `max / 2` to `max` that divides `dim` (here, with `max` [`MAX_VALUE_RUN`]:
/// SD 1.5's 40, 80 and 160 in runs of 10, SDXL's 64 of 8), so no pass computes padding;
/// otherwise `max` (or `dim` itself when smaller), the last run padded with zeros.
pub(super) fn value_run(dim: usize, max: usize) -> usize {
    if dim <= max {
        return dim;
    }
    (max / 2..=max)
        .rev()
        .find(|run| dim.is_multiple_of(*run))
        .unwrap_or(max)
}

/// The sizes every task of one call shares.
#[derive(Clone, Copy)]
struct Geometry {
    k_len: usize,
    width: usize,
    heads: usize,
    dim: usize,
    /// Keys padded to whole runs of [`KEY_RUN`].
    k_pad: usize,
    /// Channels per pass of the second product.
    run: usize,
    /// Passes of the second product: the head's channels in runs, the last padded.
    runs: usize,
}

impl Geometry {
    fn new(s: &Shapes) -> Geometry {
        let dim = s.width / s.heads;
        let run = value_run(dim, MAX_VALUE_RUN);
        Geometry {
            k_len: s.k_len,
            width: s.width,
            heads: s.heads,
            dim,
            k_pad: s.k_len.next_multiple_of(KEY_RUN),
            run,
            runs: dim.div_ceil(run),
        }
    }
}

/// `softmax(q·kᵀ / √d)·v` per head for `[batch, tokens, heads·dim]` f32 inputs, on a CPU with
/// AVX-512F ([`available`] is true), heads of any width (the engine sends those up to
/// [`MAX_DIM`]).
pub(super) fn attend(s: &Shapes, batch: usize, (q, k, v): (&[f32], &[f32], &[f32])) -> Vec<f32> {
    assert!(
        available(),
        "attention in AVX-512 lanes on a CPU without AVX-512F"
    );
    s.assert_inputs(batch, (q, k, v), "in lanes");
    let (q_len, k_len, width) = (s.q_len, s.k_len, s.width);
    let g = Geometry::new(s);
    let mut out = super::unfilled::<f32>(batch * q_len * width);
    let packed: Vec<(Vec<f32>, Vec<f32>)> = (0..batch * g.heads)
        .into_par_iter()
        .map(|item| {
            let at = (item / g.heads) * k_len * width + (item % g.heads) * g.dim;
            (pack_keys(k, at, &g), pack_values(v, at, &g))
        })
        .collect();
    let output = Output(out.as_mut_ptr().cast::<f32>());
    s.for_each_block(batch, QUERIES, |item, b, h, first, rows| {
        let at = (b * q_len + first) * width + h * g.dim;
        SCRATCH.with(|scratch| {
            let scratch = &mut *scratch.borrow_mut();
            scratch.fit(&g);
            transpose_queries(&g, &q[at..], rows, &mut scratch.queries);
            // SAFETY: the CPU has AVX-512F (asserted above); the task's output is rows
            // `first..first + rows` of item `b`, head `h`'s columns: inside `out` and no
            // other task's.
            #[allow(unsafe_code)]
            #[cfg(target_arch = "x86_64")]
            unsafe {
                attend_block(&g, &packed[item], scratch, (output.at(at), rows))
            };
        });
    });
    // SAFETY: the tasks cover every (batch item, head, block of queries), and each wrote its
    // head's columns of every one of its rows.
    #[allow(unsafe_code)]
    unsafe {
        super::super::filled(out)
    }
}

/// One head's keys scaled by `1/√d`, as runs of [`KEY_RUN`] keys: run `r` holds, for each
/// channel `c`, the channel's value in each of its keys (`[run][c][KEY_RUN]`; zeros past the
/// last key).
fn pack_keys(k: &[f32], at: usize, g: &Geometry) -> Vec<f32> {
    let scale = 1.0 / (g.dim as f32).sqrt();
    let mut packed = vec![0f32; g.k_pad * g.dim];
    for key in 0..g.k_len {
        let row = &k[at + key * g.width..][..g.dim];
        let base = (key / KEY_RUN) * g.dim * KEY_RUN + key % KEY_RUN;
        for (c, value) in row.iter().enumerate() {
            packed[base + c * KEY_RUN] = value * scale;
        }
    }
    packed
}

/// One head's values as runs of `g.run` channels: run `r` holds, for each key, the key's
/// values of the run's channels (`[run][key][g.run]`; zeros past the last channel).
fn pack_values(v: &[f32], at: usize, g: &Geometry) -> Vec<f32> {
    let mut packed = vec![0f32; g.runs * g.k_len * g.run];
    // A run at a time, so no index is divided (as `bf16_lanes::pack_values`).
    for (run, values) in packed.chunks_exact_mut(g.k_len * g.run).enumerate() {
        let channels = run * g.run..(run * g.run + g.run).min(g.dim);
        for (key, values) in values.chunks_exact_mut(g.run).enumerate() {
            let row = &v[at + key * g.width..][channels.clone()];
            values[..row.len()].copy_from_slice(row);
        }
    }
    packed
}

/// A thread's buffers for one task, kept from task to task.
#[derive(Default)]
struct Scratch {
    /// The block's queries transposed: `[channel][QUERIES]` (zeros past its rows).
    queries: Vec<f32>,
    /// The block's scores, then its weights, transposed: `[key][QUERIES]` (`k_pad` keys).
    scores: Vec<f32>,
}

impl Scratch {
    fn fit(&mut self, g: &Geometry) {
        self.queries.resize(g.dim * QUERIES, 0.0);
        self.scores.resize(g.k_pad * QUERIES, 0.0);
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// `rows` query rows of one head (from `q`, rows `width` apart) into `[channel][QUERIES]`,
/// zeros for the rows past them.
fn transpose_queries(g: &Geometry, q: &[f32], rows: usize, out: &mut [f32]) {
    for (c, lanes) in out.chunks_exact_mut(QUERIES).take(g.dim).enumerate() {
        for (r, lane) in lanes.iter_mut().enumerate() {
            *lane = if r < rows { q[r * g.width + c] } else { 0.0 };
        }
    }
}

/// One task: the block's scores, their softmax and the weights times `v`, written to `rows`
/// rows from `out` (rows `g.width` apart, the head's `g.dim` columns).
///
/// # Safety
///
/// The CPU has AVX-512F; `out` is valid for those writes; `scratch` fits `g` and holds the
/// block's transposed queries; `keys` and `values` are the head's, packed for `g`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(unsafe_code)]
unsafe fn attend_block(
    g: &Geometry,
    (keys, values): &(Vec<f32>, Vec<f32>),
    scratch: &mut Scratch,
    (out, rows): (*mut f32, usize),
) {
    let Scratch { queries, scores } = scratch;
    for run in 0..g.k_pad / KEY_RUN {
        // SAFETY: run `run` of the keys is `dim × KEY_RUN` values, its scores `KEY_RUN`
        // rows of `QUERIES`, inside `keys` and `scores` (`k_pad` keys each).
        unsafe {
            score_run(
                queries.as_ptr(),
                keys.as_ptr().add(run * g.dim * KEY_RUN),
                g.dim,
                scores.as_mut_ptr().add(run * KEY_RUN * QUERIES),
            )
        };
    }
    let inverses = softmax_down(&mut scores[..g.k_len * QUERIES]);
    let mut block = [[0f32; QUERIES]; MAX_VALUE_RUN];
    for run in 0..g.runs {
        let channels = g.run.min(g.dim - run * g.run);
        let run_values = &values[run * g.k_len * g.run..][..g.k_len * g.run];
        weigh_values(g.run, scores, run_values, g.k_len, &mut block);
        // SAFETY: the run's channels of the task's rows are inside its output (the caller's
        // promise).
        unsafe {
            write_divided(
                &mut block,
                &inverses,
                channels,
                (out.add(run * g.run), rows, g.width),
            )
        };
    }
}

/// The first `channels` channels of `block` (each the block's 32 queries) divided by each
/// query's sum (`inverses`: its `1/sum`, 16 queries a vector) and written to the first `rows`
/// rows at `out`, `width` apart (channel `c` at `out + c`): the end of a run of the second
/// product, here and in [`super::bf16_lanes`].
///
/// # Safety
///
/// AVX-512F; `out` is valid for those writes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(unsafe_code)]
pub(super) unsafe fn write_divided(
    block: &mut [[f32; QUERIES]; MAX_VALUE_RUN],
    inverses: &[std::arch::x86_64::__m512; VECTORS],
    channels: usize,
    (out, rows, width): (*mut f32, usize, usize),
) {
    use std::arch::x86_64::*;
    for (c, lanes) in block.iter_mut().take(channels).enumerate() {
        for (i, inverse) in inverses.iter().enumerate() {
            // SAFETY: vector `i < VECTORS` of the channel's `QUERIES` lanes.
            unsafe {
                let at = lanes.as_mut_ptr().add(16 * i);
                _mm512_storeu_ps(at, _mm512_mul_ps(_mm512_loadu_ps(at), *inverse));
            }
        }
        for (r, value) in lanes.iter().take(rows).enumerate() {
            // SAFETY: row `r < rows`, channel `c < channels` (the caller's promise).
            unsafe { out.add(r * width + c).write(*value) };
        }
    }
}

/// Scores of one run of [`KEY_RUN`] keys for the block's 32 queries, into [`KEY_RUN`] rows of
/// [`QUERIES`] at `scores`.
///
/// # Safety
///
/// AVX-512F; `queries` holds `dim × QUERIES` values, `keys` `dim × KEY_RUN`, and `scores` has
/// room for `KEY_RUN × QUERIES`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(unsafe_code)]
#[inline]
unsafe fn score_run(queries: *const f32, keys: *const f32, dim: usize, scores: *mut f32) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); VECTORS]; KEY_RUN];
    for c in 0..dim {
        // SAFETY: channel `c < dim` of both (the caller's promise).
        unsafe {
            let lanes: [__m512; VECTORS] =
                std::array::from_fn(|i| _mm512_loadu_ps(queries.add(c * QUERIES + 16 * i)));
            let key = keys.add(c * KEY_RUN);
            for (j, acc) in acc.iter_mut().enumerate() {
                let k = _mm512_set1_ps(*key.add(j));
                for (acc, lanes) in acc.iter_mut().zip(&lanes) {
                    *acc = _mm512_fmadd_ps(k, *lanes, *acc);
                }
            }
        }
    }
    for (j, acc) in acc.iter().enumerate() {
        for (i, acc) in acc.iter().enumerate() {
            // SAFETY: row `j < KEY_RUN` of the run's scores (the caller's promise).
            unsafe { _mm512_storeu_ps(scores.add(j * QUERIES + 16 * i), *acc) };
        }
    }
}

/// Each query's softmax down its column of `scores` (`[key][QUERIES]`) without the division:
/// the scores become `exp(score − max)`; returns each query's `1/sum`, a vector of 16 at a
/// time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(unsafe_code)]
fn softmax_down(scores: &mut [f32]) -> [std::arch::x86_64::__m512; VECTORS] {
    use std::arch::x86_64::*;
    let mut max = [_mm512_set1_ps(f32::NEG_INFINITY); VECTORS];
    for key in scores.chunks_exact(QUERIES) {
        for (i, max) in max.iter_mut().enumerate() {
            // SAFETY: a row is `VECTORS` vectors.
            *max = _mm512_max_ps(*max, unsafe { _mm512_loadu_ps(key.as_ptr().add(16 * i)) });
        }
    }
    let mut sum = [_mm512_setzero_ps(); VECTORS];
    for key in scores.chunks_exact_mut(QUERIES) {
        for (i, (sum, max)) in sum.iter_mut().zip(&max).enumerate() {
            // SAFETY: as above.
            unsafe {
                let at = key.as_mut_ptr().add(16 * i);
                let weight = exp(_mm512_sub_ps(_mm512_loadu_ps(at), *max));
                *sum = _mm512_add_ps(*sum, weight);
                _mm512_storeu_ps(at, weight);
            }
        }
    }
    sum.map(|sum| _mm512_div_ps(_mm512_set1_ps(1.0), sum))
}

/// `eˣ` for `x ≤ 0` in every lane, as [`super::fast_exp`] computes it (within 3 ulp): `x =
/// n·ln 2 + r`, a degree-6 polynomial for `eʳ`, and `2ⁿ` by `vscalefps`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn exp(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    exp_with(x, &super::EXP_POLYNOMIAL)
}

/// [`exp`] with `polynomial` (highest degree first) for `eʳ`: a shorter one where fewer bits
/// are wanted ([`super::EXP_POLYNOMIAL_BF16`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) fn exp_with(
    x: std::arch::x86_64::__m512,
    polynomial: &[f32],
) -> std::arch::x86_64::__m512 {
    use super::{LN2_HI, LN2_LO};
    use std::arch::x86_64::*;
    let x = _mm512_max_ps(x, _mm512_set1_ps(-87.0));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
    let (highest, rest) = polynomial.split_first().expect("a polynomial");
    let mut p = _mm512_set1_ps(*highest);
    for c in rest {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
    }
    _mm512_scalef_ps(p, n)
}

/// The weights (`[key][QUERIES]`) times one run of `run` channels of the head's values
/// (`[key][run]`), into `block[c]` (the 32 queries of channel `c`), unscaled.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(unsafe_code)]
fn weigh_values(
    run: usize,
    weights: &[f32],
    values: &[f32],
    k_len: usize,
    block: &mut [[f32; QUERIES]; MAX_VALUE_RUN],
) {
    macro_rules! runs {
        ($($n:literal)*) => {
            match run {
                $($n => weigh_run::<$n>(weights, values, k_len, block),)*
                _ => unreachable!("runs of 1 to {MAX_VALUE_RUN} channels"),
            }
        };
    }
    runs!(1 2 3 4 5 6 7 8 9 10 11 12)
}

/// [`weigh_values`] for runs of `N` channels: `N` × 2 accumulators, each key's two vectors of
/// weights times its `N` values broadcast.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(unsafe_code)]
#[inline]
fn weigh_run<const N: usize>(
    weights: &[f32],
    values: &[f32],
    k_len: usize,
    block: &mut [[f32; QUERIES]; MAX_VALUE_RUN],
) {
    use std::arch::x86_64::*;
    assert!(weights.len() >= k_len * QUERIES && values.len() >= k_len * N && N <= MAX_VALUE_RUN);
    let mut acc = [[_mm512_setzero_ps(); VECTORS]; N];
    let (w, v) = (weights.as_ptr(), values.as_ptr());
    for key in 0..k_len {
        // SAFETY: key `key < k_len` of both (asserted above).
        unsafe {
            let lanes: [__m512; VECTORS] =
                std::array::from_fn(|i| _mm512_loadu_ps(w.add(key * QUERIES + 16 * i)));
            let value = v.add(key * N);
            for (c, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*value.add(c));
                for (acc, lanes) in acc.iter_mut().zip(&lanes) {
                    *acc = _mm512_fmadd_ps(x, *lanes, *acc);
                }
            }
        }
    }
    store_block(&acc, block);
}

/// A run's accumulators (each channel's `VECTORS` vectors of queries) into the first
/// `acc.len()` channels of `block`: the end of [`weigh_run`] here and in
/// [`super::bf16_lanes`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(unsafe_code)]
#[inline]
pub(super) fn store_block(
    acc: &[[std::arch::x86_64::__m512; VECTORS]],
    block: &mut [[f32; QUERIES]; MAX_VALUE_RUN],
) {
    use std::arch::x86_64::*;
    for (lanes, acc) in block.iter_mut().zip(acc) {
        for (i, acc) in acc.iter().enumerate() {
            // SAFETY: vector `i < VECTORS` of the channel's `QUERIES` lanes.
            unsafe { _mm512_storeu_ps(lanes.as_mut_ptr().add(16 * i), *acc) };
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    #[test]
    fn the_vector_exponential_is_within_three_ulp_of_exp() {
        if !available() {
            return;
        }
        #[target_feature(enable = "avx512f")]
        fn sixteen(from: f32) -> [f32; 16] {
            use std::arch::x86_64::*;
            let x: [f32; 16] = std::array::from_fn(|i| from - i as f32 * 1e-4);
            let mut out = [0f32; 16];
            // SAFETY: 16 values each.
            #[allow(unsafe_code)]
            unsafe {
                _mm512_storeu_ps(out.as_mut_ptr(), exp(_mm512_loadu_ps(x.as_ptr())))
            };
            out
        }
        let mut worst = 0f32;
        for chunk in 0..=870_000 / 16 {
            let from = -(chunk as f32) * 16e-4;
            // SAFETY: the CPU has AVX-512F (checked above).
            #[allow(unsafe_code)]
            let ours = unsafe { sixteen(from) };
            for (i, ours) in ours.iter().enumerate() {
                let x = from - i as f32 * 1e-4;
                if x < -87.0 {
                    continue; // clamped there, as `fast_exp` is: nothing a softmax sees
                }
                let exact = (x as f64).exp() as f32;
                worst = worst.max((ours - exact).abs() / exact);
            }
        }
        assert!(worst < 3.0 * f32::EPSILON, "relative error {worst}");
    }
}
