//! f32 attention on AVX-512 with the queries in the vector lanes: scores, softmax and the
//! product with `v` for a block of 32 queries of one head in one task, every intermediate in
//! L1.
//!
//! The general path ([`super::attend_with_gemm`]) runs both products through `gemm`, which
//! packs the head's 4 096 keys and values again for every block of queries and writes 256 ×
//! 4 096 scores (4 MiB, past L2) that the softmax then reads twice and the second product packs
//! again: timed alone, SD 1.5's 4 096-token self-attention ran at about 55 % of the rate the
//! same CPU reaches on a linear layer. Here the keys are taken a chunk of [`CHUNK`] (144) at a
//! time with an online softmax, the chunk's scores stored transposed, a row per key holding its
//! score for each of the 32 queries (18 KiB: in L1), so that
//!
//! 1. `q·kᵀ` is 12 keys × 32 queries of accumulators per step of a channel: two vectors of
//!    the block's queries (transposed once per block) and twelve keys' values broadcast, each
//!    key packed once per head (`[run of 12 keys][channel][12]`, scaled by `log₂e/√d`);
//! 2. each query's maximum and sum over the keys are vector maxima and sums down the rows, no
//!    reduction across lanes; the exponentials are powers of two ([`exp2`], within 2 ulp),
//!    since the keys carry `log₂e`; where a chunk raises a query's maximum, its sum and
//!    outputs so far are scaled down by `2^(old − new)`;
//! 3. the weights times `v` are a run of the head's channels × 32 queries of accumulators per
//!    key: two vectors of weights and the run's values broadcast, packed once per head
//!    (`[run][key][channels of the run]`), added to the block's outputs (in L1), each divided
//!    by its query's sum as it is written after the last chunk.
//!
//! Before the chunks (round eighteen in BENCHMARKS.md) the block's scores for all the keys sat
//! in L2 (512 KiB at 4 096 keys); the chunks alone changed nothing measurable, but there the
//! powers of two, ten vector operations a score against `eˣ`'s seventeen, took 4 % off SD
//! 1.5's 4 096-token self-attention, where before a cheaper exponential had shown no gain.
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

/// One head's keys scaled by `log₂e/√d` (so that the softmax's exponentials are powers of
/// two), as runs of [`KEY_RUN`] keys: run `r` holds, for each
/// channel `c`, the channel's value in each of its keys (`[run][c][KEY_RUN]`; zeros past the
/// last key).
fn pack_keys(k: &[f32], at: usize, g: &Geometry) -> Vec<f32> {
    let scale = std::f32::consts::LOG2_E / (g.dim as f32).sqrt();
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
    /// A chunk's scores, then its weights, transposed: `[key][QUERIES]` ([`CHUNK`] keys).
    scores: Vec<f32>,
    /// The block's outputs so far, unscaled: a block of channels × queries per run.
    outputs: Vec<[[f32; QUERIES]; MAX_VALUE_RUN]>,
}

impl Scratch {
    fn fit(&mut self, g: &Geometry) {
        self.queries.resize(g.dim * QUERIES, 0.0);
        self.scores.resize(CHUNK * QUERIES, 0.0);
        self.outputs.resize(g.runs, [[0.0; QUERIES]; MAX_VALUE_RUN]);
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

/// One task: the block's attention, the keys a chunk of [`CHUNK`] at a time with an online
/// softmax, written to `rows` rows from `out` (rows `g.width` apart, the head's `g.dim`
/// columns).
///
/// Per chunk: its scores (`[key][QUERIES]`, 18 KiB: in L1), each query's new maximum, the
/// running sums and the accumulated outputs scaled by `2^(old − new)` where it rose, the
/// chunk's weights `2^(score − max)`, and the weights times the chunk's values added to the
/// outputs (`[run][channel][QUERIES]`, in L1 too). At the end each output is divided by its
/// query's sum.
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
    use std::arch::x86_64::*;
    let Scratch {
        queries,
        scores,
        outputs,
    } = scratch;
    for block in outputs.iter_mut() {
        *block = [[0.0; QUERIES]; MAX_VALUE_RUN];
    }
    let mut running = Running {
        max: [_mm512_set1_ps(f32::NEG_INFINITY); VECTORS],
        sum: [_mm512_setzero_ps(); VECTORS],
    };
    for first in (0..g.k_len).step_by(CHUNK) {
        let keys_in_chunk = CHUNK.min(g.k_len - first);
        let first_run = first / KEY_RUN;
        for run in first_run..first_run + keys_in_chunk.div_ceil(KEY_RUN) {
            // SAFETY: run `run < k_pad / KEY_RUN` of the keys is `dim × KEY_RUN` values, its
            // scores `KEY_RUN` rows of `QUERIES` inside the chunk's (`CHUNK` keys).
            unsafe {
                score_run(
                    queries.as_ptr(),
                    keys.as_ptr().add(run * g.dim * KEY_RUN),
                    g.dim,
                    scores
                        .as_mut_ptr()
                        .add((run - first_run) * KEY_RUN * QUERIES),
                )
            };
        }
        let chunk = &mut scores[..keys_in_chunk * QUERIES];
        if let Some(rescale) = running.take_chunk(chunk) {
            for block in outputs.iter_mut() {
                scale_block(block, &rescale);
            }
        }
        for (run, block) in outputs.iter_mut().enumerate() {
            let run_values = &values[(run * g.k_len + first) * g.run..][..keys_in_chunk * g.run];
            weigh_values(g.run, chunk, run_values, keys_in_chunk, block);
        }
    }
    let inverses = running
        .sum
        .map(|sum| _mm512_div_ps(_mm512_set1_ps(1.0), sum));
    for (run, block) in outputs.iter_mut().enumerate() {
        let channels = g.run.min(g.dim - run * g.run);
        // SAFETY: the run's channels of the task's rows are inside its output (the caller's
        // promise).
        unsafe {
            write_divided(
                block,
                &inverses,
                channels,
                (out.add(run * g.run), rows, g.width),
            )
        };
    }
}

/// Keys per chunk of the online softmax: twelve runs of [`KEY_RUN`], so that a chunk's scores
/// (18 KiB) stay in L1 beside the block's queries and outputs. Chunks of 72 and of 288 keys
/// were each slower in seven pairs of eight on SD 1.5's 4 096-token self-attention, by about
/// 1 % (BENCHMARKS.md, round eighteen).
const CHUNK: usize = 12 * KEY_RUN;

/// Each query's maximum score so far and its sum of `2^(score − max)`, 16 queries a vector
/// (the keys are scaled by `log₂e`, so that these are the softmax's `exp`).
#[cfg(target_arch = "x86_64")]
struct Running {
    max: [std::arch::x86_64::__m512; VECTORS],
    sum: [std::arch::x86_64::__m512; VECTORS],
}

#[cfg(target_arch = "x86_64")]
impl Running {
    /// Takes a chunk of scores (`[key][QUERIES]`): they become `2^(score − max)` for the new
    /// maximum, and are added to the sums. Where a query's maximum rose (after the first
    /// chunk), its sum is scaled by `2^(old − new)` and that factor is returned (every
    /// query's, 1 where it did not rise) for the outputs accumulated so far.
    #[target_feature(enable = "avx512f")]
    #[allow(unsafe_code)]
    fn take_chunk(&mut self, chunk: &mut [f32]) -> Option<[std::arch::x86_64::__m512; VECTORS]> {
        use std::arch::x86_64::*;
        let mut max = self.max;
        for key in chunk.chunks_exact(QUERIES) {
            for (i, max) in max.iter_mut().enumerate() {
                // SAFETY: a row is `VECTORS` vectors.
                *max = _mm512_max_ps(*max, unsafe { _mm512_loadu_ps(key.as_ptr().add(16 * i)) });
            }
        }
        // Nothing is accumulated before the first chunk (its old maxima are −∞).
        let first = self.max.iter().all(|m| {
            _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(*m, _mm512_set1_ps(f32::NEG_INFINITY)) == 0xffff
        });
        let rose = (0..VECTORS).any(|i| _mm512_cmp_ps_mask::<_CMP_GT_OQ>(max[i], self.max[i]) != 0);
        let rescale = (rose && !first).then(|| {
            let factor: [__m512; VECTORS] =
                std::array::from_fn(|i| exp2(_mm512_sub_ps(self.max[i], max[i])));
            for (sum, factor) in self.sum.iter_mut().zip(&factor) {
                *sum = _mm512_mul_ps(*sum, *factor);
            }
            factor
        });
        self.max = max;
        for key in chunk.chunks_exact_mut(QUERIES) {
            for (i, (sum, max)) in self.sum.iter_mut().zip(&max).enumerate() {
                // SAFETY: as above.
                unsafe {
                    let at = key.as_mut_ptr().add(16 * i);
                    let weight = exp2(_mm512_sub_ps(_mm512_loadu_ps(at), *max));
                    *sum = _mm512_add_ps(*sum, weight);
                    _mm512_storeu_ps(at, weight);
                }
            }
        }
        rescale
    }
}

/// Each channel of `block` (the 32 queries of a channel) times its query's `factor`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(unsafe_code)]
fn scale_block(
    block: &mut [[f32; QUERIES]; MAX_VALUE_RUN],
    factor: &[std::arch::x86_64::__m512; VECTORS],
) {
    use std::arch::x86_64::*;
    for lanes in block.iter_mut() {
        for (i, factor) in factor.iter().enumerate() {
            // SAFETY: vector `i < VECTORS` of the channel's `QUERIES` lanes.
            unsafe {
                let at = lanes.as_mut_ptr().add(16 * i);
                _mm512_storeu_ps(at, _mm512_mul_ps(_mm512_loadu_ps(at), *factor));
            }
        }
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

/// `2ˣ` in every lane, within 2 ulp (0 for `x` below −150, as the softmax wants), by
/// [`pow2_with`] and [`EXP2_POLYNOMIAL`]. Ten vector operations with the softmax's subtraction
/// and sum, where `eˣ` ([`super::fast_exp`]'s way) takes seventeen: a sixth of the products'
/// work on SD 1.5's 40-channel heads.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn exp2(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    pow2_with(x, &EXP2_POLYNOMIAL)
}

/// `2ˣ` in every lane with `polynomial` (highest degree first) for `2ʳ`: `x = n + r` with
/// `|r| ≤ ½`, and `2ⁿ` by `vscalefps`, which also takes a far negative `x` (a weight that
/// rounds to nothing) to zero, so no clamp. Here in f32 ([`exp2`]) and in
/// [`super::bf16_lanes`] to bf16's precision.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) fn pow2_with(
    x: std::arch::x86_64::__m512,
    polynomial: &[f32],
) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x);
    let r = _mm512_sub_ps(x, n);
    let (highest, rest) = polynomial.split_first().expect("a polynomial");
    let mut p = _mm512_set1_ps(*highest);
    for c in rest {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
    }
    _mm512_scalef_ps(p, n)
}

/// `2ʳ` on `[−½, ½]`, highest degree first: a near-minimax fit of relative error (Lawson's
/// iteration on 4 000 Chebyshev nodes), 1.6 ulp at worst in f32 as evaluated.
#[allow(clippy::approx_constant)] // the linear term is fitted, three ulp below ln 2
const EXP2_POLYNOMIAL: [f32; 6] = [
    0.001_326_472_7,
    0.009_671_513,
    0.055_507_336,
    0.240_222_42,
    0.693_147,
    1.0,
];

/// `eˣ` for `x ≤ 0` in every lane with `polynomial` (highest degree first) for `eʳ`, as
/// [`super::fast_exp`] computes it: `x = n·ln 2 + r` and `2ⁿ` by `vscalefps`. The bf16 paths
/// use it with a polynomial of their precision ([`super::EXP_POLYNOMIAL_BF16`]).
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
/// (`[key][run]`), added to `block[c]` (the 32 queries of channel `c`), unscaled.
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

/// [`weigh_values`] for runs of `N` channels: `N` × 2 accumulators, from `block`'s values,
/// each key's two vectors of weights times its `N` values broadcast.
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
    let mut acc: [[__m512; VECTORS]; N] = std::array::from_fn(|c| {
        // SAFETY: vector `i < VECTORS` of channel `c < N ≤ MAX_VALUE_RUN`'s lanes.
        std::array::from_fn(|i| unsafe { _mm512_loadu_ps(block[c].as_ptr().add(16 * i)) })
    });
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
    fn the_vector_power_of_two_is_within_two_ulp_and_zero_far_below() {
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
                _mm512_storeu_ps(out.as_mut_ptr(), exp2(_mm512_loadu_ps(x.as_ptr())))
            };
            out
        }
        let mut worst = 0f32;
        // From 0 down to −126, where 2ˣ is still a normal number: every weight a softmax keeps.
        for chunk in 0..=1_260_000 / 16 {
            let from = -(chunk as f32) * 16e-4;
            // SAFETY: the CPU has AVX-512F (checked above).
            #[allow(unsafe_code)]
            let ours = unsafe { sixteen(from) };
            for (i, ours) in ours.iter().enumerate() {
                let x = from - i as f32 * 1e-4;
                if x < -126.0 {
                    continue;
                }
                let exact = (x as f64).exp2() as f32;
                worst = worst.max((ours - exact).abs() / exact);
            }
        }
        assert!(worst < 2.0 * f32::EPSILON, "relative error {worst}");
        // SAFETY: as above.
        #[allow(unsafe_code)]
        let far = unsafe { sixteen(-150.0) };
        assert!(far.iter().all(|w| *w < 1e-44), "{far:?}");
    }
}
