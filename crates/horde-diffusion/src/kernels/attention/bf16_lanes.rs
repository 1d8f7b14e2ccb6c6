//! bf16 attention on AVX512-BF16 vector registers with the queries in the lanes, as
//! [`super::lanes`] does in f32: scores, softmax and the product with `v` for a block of 32
//! queries of one head in one task, every intermediate in the cache.
//!
//! The general bf16 path ([`super::attend_in_bf16`]) ran both products through `bf16_gemm`
//! with the keys in the lanes: the block's 128 × 4 096 scores (2 MiB, past this L2) went out
//! to memory and back, the softmax's maximum and sum were reductions across lanes, and the
//! second product's 40 columns (SD 1.5's first heads) filled 48 of every 64 lanes. SD 1.5's
//! 4 096-token self-attention ran at 0.53 of the bf16 peak (AMD Zen 4, `engine --part
//! attention`). Here, with `vdpbf16ps` summing two products per lane:
//!
//! 1. `q·kᵀ` is 12 keys × 32 queries of accumulators per pair of channels: two vectors of the
//!    block's queries, a pair of channels in each lane (gathered once per block), and twelve
//!    keys' pairs broadcast (each key packed once per head, `[run of 12 keys][pair][12]`);
//! 2. each query's maximum and sum over the keys are vector maxima and sums down the rows, and
//!    the exponentials (the bf16 path's polynomial) are written in bf16 two keys to a lane,
//!    over the scores already read (`[pair of keys][QUERIES]`): the second product's operand;
//! 3. the weights times `v` are a run of the head's channels × 32 queries of accumulators per
//!    pair of keys, the run's values of the two keys broadcast (packed once per head,
//!    `[run][pair of keys][channels of the run]`), each output divided by its query's sum as
//!    it is written.
//!
//! The numbers are the general bf16 path's: products of bf16 values summed in f32, the
//! weights rounded to bf16 once, the sum over unrounded exponentials. Tasks are (batch item,
//! head, block of queries), head-major. Used on CPUs with AVX512-BF16 and no AMX tiles, for
//! heads of up to [`MAX_DIM`] channels.

#[cfg(target_arch = "x86_64")]
use super::lanes::{store_block, write_divided};
use super::lanes::{value_run, MAX_VALUE_RUN, QUERIES, VECTORS};
use super::{Output, Shapes};
use half::bf16;
use std::cell::RefCell;

/// Keys per step of the scores: 12 × 2 accumulators, with the two query vectors 26 of the 32
/// registers. Blocks of [`QUERIES`] queries as in f32 (48, with 8 keys a step, measured no
/// faster: 260.4 against 263.6 ms at 4 096 tokens).
const KEY_RUN: usize = 12;

/// The widest head run this way: SD 1.5's heads of 40 and 80 channels and SDXL's 64. Its
/// heads of 160 (256 tokens at 512²) took 4.8 ms this way against 4.2 through `bf16_gemm`
/// (`engine --part attention`, one thread, Zen 4), where a block's 32 queries are little
/// work beside the 16 passes of the second product.
pub(super) const MAX_DIM: usize = 128;

/// Whether this CPU runs bf16 attention this way: AVX512-BF16 and AVX-512F.
pub(super) fn available() -> bool {
    super::bf16_gemm::available() && super::lanes::available()
}

/// The sizes every task of one call shares.
#[derive(Clone, Copy)]
struct Geometry {
    k_len: usize,
    width: usize,
    dim: usize,
    /// Pairs of channels of a head (the last one's high half zero when `dim` is odd).
    channel_pairs: usize,
    /// Keys padded to whole runs of [`KEY_RUN`].
    k_pad: usize,
    /// Pairs of keys (the last one's high half zero when `k_len` is odd).
    key_pairs: usize,
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
            dim,
            channel_pairs: dim.div_ceil(2),
            k_pad: s.k_len.next_multiple_of(KEY_RUN),
            key_pairs: s.k_len.div_ceil(2),
            run,
            runs: dim.div_ceil(run),
        }
    }
}

/// Two bf16 values in one 32-bit word, `low` in the low half: the operand `vdpbf16ps` sums
/// two products of.
fn word_of(low: bf16, high: bf16) -> u32 {
    u32::from(low.to_bits()) | (u32::from(high.to_bits()) << 16)
}

/// Channels `2p` and `2p + 1` of a head's `row` as a word (zero past the head).
#[inline(always)]
fn channel_pair(row: &[bf16], p: usize) -> u32 {
    word_of(
        row[2 * p],
        row.get(2 * p + 1).copied().unwrap_or(bf16::ZERO),
    )
}

/// `softmax(q·kᵀ / √d)·v` per head for `[batch, tokens, heads·dim]` bf16 inputs, the result
/// in f32, on a CPU where [`available`] is true; heads of any width (the engine sends those up
/// to [`MAX_DIM`]).
pub(super) fn attend(s: &Shapes, batch: usize, (q, k, v): (&[bf16], &[bf16], &[bf16])) -> Vec<f32> {
    assert!(
        available(),
        "bf16 attention in lanes on a CPU without AVX512-BF16"
    );
    s.assert_inputs(batch, (q, k, v), "in bf16 lanes");
    let (q_len, k_len, width) = (s.q_len, s.k_len, s.width);
    let g = Geometry::new(s);
    let mut out = super::unfilled::<f32>(batch * q_len * width);
    let packed: Vec<(Vec<u32>, Vec<u32>)> = {
        use rayon::prelude::*;
        (0..batch * s.heads)
            .into_par_iter()
            .map(|item| {
                let at = (item / s.heads) * k_len * width + (item % s.heads) * g.dim;
                (pack_keys(k, at, &g), pack_values(v, at, &g))
            })
            .collect()
    };
    let output = Output(out.as_mut_ptr().cast::<f32>());
    let scale = 1.0 / (g.dim as f32).sqrt();
    s.for_each_block(batch, QUERIES, |item, b, h, first, rows| {
        let at = (b * q_len + first) * width + h * g.dim;
        SCRATCH.with(|scratch| {
            let scratch = &mut *scratch.borrow_mut();
            scratch.fit(&g);
            gather_queries(&g, &q[at..], rows, &mut scratch.queries);
            // SAFETY: the CPU has AVX512-BF16 and AVX-512F (asserted above); the task's output
            // is rows `first..first + rows` of item `b`, head `h`'s columns: inside `out` and
            // no other task's.
            #[allow(unsafe_code)]
            #[cfg(target_arch = "x86_64")]
            unsafe {
                attend_block(&g, &packed[item], scale, scratch, (output.at(at), rows))
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

/// One head's keys as runs of [`KEY_RUN`] keys: run `r` holds, for each pair of channels, the
/// pair's word of each of its keys (`[run][pair][KEY_RUN]`; zeros past the last key).
fn pack_keys(k: &[bf16], at: usize, g: &Geometry) -> Vec<u32> {
    let mut packed = vec![0u32; g.k_pad * g.channel_pairs];
    for (run, keys) in packed
        .chunks_exact_mut(g.channel_pairs * KEY_RUN)
        .enumerate()
    {
        for j in 0..KEY_RUN.min(g.k_len.saturating_sub(run * KEY_RUN)) {
            let row = &k[at + (run * KEY_RUN + j) * g.width..][..g.dim];
            for (p, word) in keys[j..].iter_mut().step_by(KEY_RUN).enumerate() {
                *word = channel_pair(row, p);
            }
        }
    }
    packed
}

/// One head's values as runs of `g.run` channels: run `r` holds, for each pair of keys, the
/// two keys' values of each of the run's channels as a word (`[run][pair of keys][g.run]`;
/// zeros past the last channel, and in the high half after an odd last key). A run at a time,
/// so no index is divided (with a division per value this packing had been a sixth of SDXL's
/// 1 024-token self-attention).
fn pack_values(v: &[bf16], at: usize, g: &Geometry) -> Vec<u32> {
    let mut packed = vec![0u32; g.runs * g.key_pairs * g.run];
    for (run, words) in packed.chunks_exact_mut(g.key_pairs * g.run).enumerate() {
        let channels = run * g.run..(run * g.run + g.run).min(g.dim);
        for (pair, words) in words.chunks_exact_mut(g.run).enumerate() {
            let row = |key: usize| &v[at + key * g.width..][channels.clone()];
            let first = row(2 * pair);
            let words = &mut words[..first.len()];
            if 2 * pair + 1 < g.k_len {
                for ((word, low), high) in words.iter_mut().zip(first).zip(row(2 * pair + 1)) {
                    *word = word_of(*low, *high);
                }
            } else {
                for (word, low) in words.iter_mut().zip(first) {
                    *word = word_of(*low, bf16::ZERO);
                }
            }
        }
    }
    packed
}

/// A thread's buffers for one task, kept from task to task.
#[derive(Default)]
struct Scratch {
    /// The block's queries by pairs of channels: `[pair][QUERIES]` (zeros past its rows).
    queries: Vec<u32>,
    /// The block's scores transposed, `[key][QUERIES]` (`k_pad` keys); then, over them, its
    /// weights as words of two keys, `[pair of keys][QUERIES]`.
    scores: Vec<f32>,
}

impl Scratch {
    fn fit(&mut self, g: &Geometry) {
        self.queries.resize(g.channel_pairs * QUERIES, 0);
        // `k_pad` is a multiple of 12: whole pairs of rows for `weigh_down`.
        self.scores.resize(g.k_pad * QUERIES, 0.0);
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// `rows` query rows of one head (from `q`, rows `width` apart) into `[pair][QUERIES]` words,
/// zeros for the rows past them.
fn gather_queries(g: &Geometry, q: &[bf16], rows: usize, out: &mut [u32]) {
    for (p, lanes) in out
        .chunks_exact_mut(QUERIES)
        .take(g.channel_pairs)
        .enumerate()
    {
        for (r, lane) in lanes.iter_mut().enumerate() {
            *lane = if r < rows {
                channel_pair(&q[r * g.width..][..g.dim], p)
            } else {
                0
            };
        }
    }
}

/// One task: the block's scores, their softmax and the weights times `v`, written to `rows`
/// rows from `out` (rows `g.width` apart, the head's `g.dim` columns).
///
/// # Safety
///
/// The CPU has AVX512-BF16 and AVX-512F; `out` is valid for those writes; `scratch` fits `g`
/// and holds the block's gathered queries; `keys` and `values` are the head's, packed for `g`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512bf16,avx512f,avx512bw,avx512vl")]
#[allow(unsafe_code)]
unsafe fn attend_block(
    g: &Geometry,
    (keys, values): &(Vec<u32>, Vec<u32>),
    scale: f32,
    scratch: &mut Scratch,
    (out, rows): (*mut f32, usize),
) {
    let Scratch { queries, scores } = scratch;
    for run in 0..g.k_pad / KEY_RUN {
        // SAFETY: run `run` of the keys is `channel_pairs × KEY_RUN` words, its scores
        // `KEY_RUN` rows of `QUERIES`, inside `keys` and `scores` (`k_pad` keys each).
        unsafe {
            score_run(
                queries.as_ptr(),
                keys.as_ptr().add(run * g.channel_pairs * KEY_RUN),
                g.channel_pairs,
                scores.as_mut_ptr().add(run * KEY_RUN * QUERIES),
            )
        };
    }
    // SAFETY: the CPU has AVX512-BF16 and AVX-512F (the caller's promise); `scores` holds
    // `k_pad ≥ 2 · key_pairs` rows (`k_pad` is even).
    let inverses = unsafe { weigh_down(scores, g.k_len, scale) };
    let weights = scores.as_ptr().cast::<u32>();
    let mut block = [[0f32; QUERIES]; MAX_VALUE_RUN];
    for run in 0..g.runs {
        let channels = g.run.min(g.dim - run * g.run);
        let run_values = &values[run * g.key_pairs * g.run..][..g.key_pairs * g.run];
        // SAFETY: the first `key_pairs` rows of `scores` now hold the weights' words.
        unsafe { weigh_values(g.run, weights, run_values, g.key_pairs, &mut block) };
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

/// Scores of one run of [`KEY_RUN`] keys for the block's 32 queries, into [`KEY_RUN`] rows of
/// [`QUERIES`] at `scores`.
///
/// # Safety
///
/// AVX512-BF16 and AVX-512F; `queries` holds `pairs × QUERIES` words, `keys` `pairs ×
/// KEY_RUN`, and `scores` has room for `KEY_RUN × QUERIES`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512bf16,avx512f,avx512bw,avx512vl")]
#[allow(unsafe_code)]
#[inline]
unsafe fn score_run(queries: *const u32, keys: *const u32, pairs: usize, scores: *mut f32) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); VECTORS]; KEY_RUN];
    for p in 0..pairs {
        // SAFETY: pair `p < pairs` of both (the caller's promise).
        unsafe {
            let lanes: [__m512bh; VECTORS] = std::array::from_fn(|i| {
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                    queries.add(p * QUERIES + 16 * i).cast(),
                ))
            });
            let key = keys.add(p * KEY_RUN);
            for (j, acc) in acc.iter_mut().enumerate() {
                let k =
                    std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(*key.add(j) as i32));
                for (acc, lanes) in acc.iter_mut().zip(&lanes) {
                    *acc = _mm512_dpbf16_ps(*acc, k, *lanes);
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

/// Each query's softmax down its column of the first `k_len` rows of `scores` (`[key][QUERIES]`,
/// unscaled), without the division: the weights `bf16(exp(scale·(score − max)))` written over
/// them as words of two keys (`[pair of keys][QUERIES]`, an odd last key's partner zero);
/// returns each query's `1/sum` (over the unrounded exponentials), 16 at a time.
///
/// # Safety
///
/// AVX512-BF16 and AVX-512F; `scores` holds at least `2 · ⌈k_len / 2⌉` rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512bf16,avx512f,avx512bw,avx512vl")]
#[allow(unsafe_code)]
unsafe fn weigh_down(
    scores: &mut [f32],
    k_len: usize,
    scale: f32,
) -> [std::arch::x86_64::__m512; VECTORS] {
    use std::arch::x86_64::*;
    assert!(scores.len() >= k_len.next_multiple_of(2) * QUERIES);
    let mut max = [_mm512_set1_ps(f32::NEG_INFINITY); VECTORS];
    for key in scores.chunks_exact(QUERIES).take(k_len) {
        for (i, max) in max.iter_mut().enumerate() {
            // SAFETY: a row is `VECTORS` vectors.
            *max = _mm512_max_ps(*max, unsafe { _mm512_loadu_ps(key.as_ptr().add(16 * i)) });
        }
    }
    // exp(scale·(score − max)) = 2^(c·score − c·max) with c = scale·log₂e: one fused
    // multiply-subtract a vector, then [`pow2`].
    let scale = _mm512_set1_ps(scale * std::f32::consts::LOG2_E);
    let shift = max.map(|max| _mm512_mul_ps(max, scale));
    // Word lane q takes lane q of the first key's 16 (the low half) and of the second's.
    let interleave = _mm512_set_epi16(
        31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4,
        19, 3, 18, 2, 17, 1, 16, 0,
    );
    let mut sum = [_mm512_setzero_ps(); VECTORS];
    let at = scores.as_mut_ptr();
    for pair in 0..k_len.div_ceil(2) {
        let has_second = 2 * pair + 1 < k_len;
        for (i, (sum, shift)) in sum.iter_mut().zip(&shift).enumerate() {
            // SAFETY: rows `2·pair` and `2·pair + 1` are inside `scores` (asserted above);
            // both are read before row `pair`, at or before them, is written.
            unsafe {
                let first = at.add(2 * pair * QUERIES + 16 * i);
                let e0 = pow2(_mm512_fmsub_ps(_mm512_loadu_ps(first), scale, *shift));
                let e1 = if has_second {
                    pow2(_mm512_fmsub_ps(
                        _mm512_loadu_ps(first.add(QUERIES)),
                        scale,
                        *shift,
                    ))
                } else {
                    _mm512_setzero_ps()
                };
                *sum = _mm512_add_ps(*sum, _mm512_add_ps(e0, e1));
                // Low 16 words the first key's, high 16 the second's; then interleaved.
                let halves: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(e1, e0));
                let words = _mm512_permutexvar_epi16(interleave, halves);
                _mm512_storeu_si512(at.add(pair * QUERIES + 16 * i).cast(), words);
            }
        }
    }
    sum.map(|sum| _mm512_div_ps(_mm512_set1_ps(1.0), sum))
}

/// `2ᵗ` in every lane, to bf16's precision: `t = n + f` with `|f| ≤ ½`, the degree-4 Taylor
/// polynomial of `2ᶠ = e^(f·ln 2)` (within `(ln 2 / 2)⁵ / 120 < 4.3·10⁻⁵` relative, as
/// [`super::EXP_POLYNOMIAL_BF16`] is for `eʳ`), and `2ⁿ` by `vscalefps`, which also takes the
/// far negative `t` of a weight that rounds to nothing to zero (no clamp): `lanes`'s
/// [`pow2_with`](super::lanes::pow2_with) with [`POW2_POLYNOMIAL`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn pow2(t: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    super::lanes::pow2_with(t, &POW2_POLYNOMIAL)
}

/// `(ln 2)ᵏ / k!` for k = 4 down to 0: the Taylor polynomial of `2ᶠ`, highest degree first.
const POW2_POLYNOMIAL: [f32; 5] = [
    0.009_618_129,
    0.055_504_11,
    0.240_226_5,
    std::f32::consts::LN_2,
    1.0,
];

/// The weights (`[pair of keys][QUERIES]` words) times one run of `run` channels of the head's
/// values (`[pair of keys][run]` words), into `block[c]` (the 32 queries of channel `c`),
/// unscaled.
///
/// # Safety
///
/// AVX512-BF16 and AVX-512F; `weights` holds `key_pairs × QUERIES` words.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512bf16,avx512f,avx512bw,avx512vl")]
#[allow(unsafe_code)]
unsafe fn weigh_values(
    run: usize,
    weights: *const u32,
    values: &[u32],
    key_pairs: usize,
    block: &mut [[f32; QUERIES]; MAX_VALUE_RUN],
) {
    macro_rules! runs {
        ($($n:literal)*) => {
            match run {
                $($n => {
                    // SAFETY: the caller's promise.
                    unsafe { weigh_run::<$n>(weights, values, key_pairs, block) }
                })*
                _ => unreachable!("runs of 1 to {MAX_VALUE_RUN} channels"),
            }
        };
    }
    runs!(1 2 3 4 5 6 7 8 9 10 11 12)
}

/// [`weigh_values`] for runs of `N` channels: `N` × 2 accumulators, each pair of keys' two
/// vectors of weights times the run's `N` words broadcast.
///
/// # Safety
///
/// As [`weigh_values`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512bf16,avx512f,avx512bw,avx512vl")]
#[allow(unsafe_code)]
#[inline]
unsafe fn weigh_run<const N: usize>(
    weights: *const u32,
    values: &[u32],
    key_pairs: usize,
    block: &mut [[f32; QUERIES]; MAX_VALUE_RUN],
) {
    use std::arch::x86_64::*;
    assert!(values.len() >= key_pairs * N && N <= MAX_VALUE_RUN);
    let mut acc = [[_mm512_setzero_ps(); VECTORS]; N];
    let v = values.as_ptr();
    for pair in 0..key_pairs {
        // SAFETY: pair `pair < key_pairs` of both (asserted above; the caller's promise).
        unsafe {
            let lanes: [__m512bh; VECTORS] = std::array::from_fn(|i| {
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                    weights.add(pair * QUERIES + 16 * i).cast(),
                ))
            });
            let value = v.add(pair * N);
            for (c, acc) in acc.iter_mut().enumerate() {
                let x = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(
                    *value.add(c) as i32
                ));
                for (acc, lanes) in acc.iter_mut().zip(&lanes) {
                    *acc = _mm512_dpbf16_ps(*acc, x, *lanes);
                }
            }
        }
    }
    store_block(&acc, block);
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    #[test]
    fn the_weights_are_the_softmaxs_exponentials_rounded_to_bf16_two_keys_a_word() {
        // Scores of 32 queries over odd and even numbers of keys, spread wide (many far below
        // each query's maximum): each weight within bf16's unit roundoff (2⁻⁸) of
        // exp(scale·(score − max)) beyond the polynomial's 2⁻¹⁴, in its word's half, an odd
        // last key's partner zero, and each 1/sum within 1e-4 of the exact one. Seen failing
        // with the polynomial's cubic coefficient 0.05 instead of (ln 2)³/6.
        if !available() {
            return;
        }
        let scale = 0.158;
        for (keys, seed) in [(1usize, 1u64), (2, 2), (77, 3), (4096, 4), (129, 5)] {
            let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let mut next = || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 24) as f32 * 120.0 - 60.0
            };
            let scores: Vec<f32> = (0..keys * QUERIES).map(|_| next()).collect();
            let mut buffer = scores.clone();
            buffer.resize(keys.next_multiple_of(2) * QUERIES, f32::NAN);
            // SAFETY: the CPU has both extensions (checked above); the buffer holds whole
            // pairs of rows.
            #[allow(unsafe_code)]
            let inverses = unsafe { weigh_down(&mut buffer, keys, scale) };
            let mut inverse_lanes = [0f32; QUERIES];
            for (i, inverse) in inverses.iter().enumerate() {
                // SAFETY: 16 lanes each.
                #[allow(unsafe_code)]
                unsafe {
                    std::arch::x86_64::_mm512_storeu_ps(
                        inverse_lanes.as_mut_ptr().add(16 * i),
                        *inverse,
                    )
                };
            }
            for q in 0..QUERIES {
                let column: Vec<f64> = (0..keys).map(|k| scores[k * QUERIES + q] as f64).collect();
                let max = column.iter().fold(f64::NEG_INFINITY, |m, x| m.max(*x));
                let exact: Vec<f64> = column
                    .iter()
                    .map(|x| (scale as f64 * (x - max)).exp())
                    .collect();
                let total: f64 = exact.iter().sum();
                let inverse = inverse_lanes[q] as f64;
                assert!(
                    (inverse * total - 1.0).abs() < 1e-4,
                    "{keys} keys, query {q}: 1/sum {inverse} against {}",
                    1.0 / total
                );
                for pair in 0..keys.div_ceil(2) {
                    let word = buffer[pair * QUERIES + q].to_bits();
                    let halves = [word as u16, (word >> 16) as u16];
                    for (half, bits) in halves.iter().enumerate() {
                        let weight = bf16::from_bits(*bits).to_f64();
                        match exact.get(2 * pair + half) {
                            Some(e) => assert!(
                                (weight - e).abs() <= e * (2f64.powi(-8) + 2f64.powi(-14)) + 1e-38,
                                "{keys} keys, query {q}, key {}: {weight} against {e}",
                                2 * pair + half
                            ),
                            None => assert_eq!(weight, 0.0, "the odd last key's partner"),
                        }
                    }
                }
            }
        }
    }
}
