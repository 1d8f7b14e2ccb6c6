//! bf16 attention on AMX tiles, fused: scores, softmax and the product with `v` for a block of
//! 32 queries of one head in one task, every intermediate in the cache.
//!
//! The general path ([`super::attend_in_bf16`]) runs both products through `bf16_gemm`, which
//! writes 128 × 4 096 f32 scores per block and head, takes the softmax over them in place, then
//! narrows the weights to bf16 pairs as the second product packs them: three passes over 2 MiB,
//! and the products' own block stores and scaling. On the tiles the products themselves are
//! cheap (the 4 096-token self-attention of SD 1.5 is 43 GFLOP: about 30 ms on two cores at
//! the rate this project's Xeon loads tiles, where it took 266 ms that way); the rest is moving
//! the scores, which this module keeps to one store of the tiles, one pass for the rows'
//! maxima and one that turns them into bf16 weights:
//!
//! 1. the block's 32 queries, packed once (depth pairs of the head's channels, in even steps
//!    of at most 16 pairs: see [`STEP_PAIRS`]), times each block of 32 keys (packed once per
//!    head) into four tiles, stored straight into the block's rows of scores (32 × keys f32,
//!    512 KiB at 4 096 keys: in L2);
//! 2. per row, the maximum, then `2^(c·(s − max))` with `c = log₂e / √d` (an exponent
//!    by `vscalefps` and a degree-4 polynomial, within 5e-6 relative: the weights are rounded to
//!    bf16, 2⁻⁹, anyway), summed in f32 and stored as bf16 pairs: the next product's `A` as is;
//! 3. the weights times the head's values (packed once per head: rows of key pairs, the
//!    head's channels padded to whole tiles) into up to six tiles of output columns per 16
//!    queries, 32 keys a step, each output row then divided by its sum as it is written.
//!
//! Tasks are (batch item, head, block of queries), head-major, so a thread's consecutive tasks
//! read the same head's keys and values from its cache; each writes its rows of its head's
//! columns of the output.

use super::super::bf16_gemm::{self, amx, Words};
use super::{Output, Shapes};
use half::bf16;
use rayon::prelude::*;
use std::cell::RefCell;

/// Rows of a tile; depth pairs of a tile of `B`; columns of a tile of `C`.
const TILE: usize = 16;
/// Queries per task: two tiles of rows.
const QUERIES: usize = 2 * TILE;
/// Keys per block of scores: two tiles of columns.
const KEYS: usize = 2 * TILE;
/// Output column tiles per pass of the second product (tiles 0–5; 6 holds `A`, 7 `B`).
const OUT_TILES: usize = 6;
/// Depth pairs a step of the scores at most (what a tile takes). The head's channel pairs are
/// shared evenly between the fewest such steps, the tiles configured that deep: SD 1.5's 40
/// channels are two steps of 10 pairs instead of 32 pairs with 12 of them zeros.
const STEP_PAIRS: usize = 16;
/// Key pairs a step of the second product: 32 keys, a block of scores.
const VALUE_PAIRS: usize = 16;

/// Whether this CPU runs attention on the tiles.
pub(super) fn available() -> bool {
    bf16_gemm::tiles_available()
}

/// Words from one row to the next for rows of `words` (a multiple of 16): one tile row more
/// where they would be a multiple of 256 bytes, so that a tile's 16 rows do not fall into a
/// few cache sets (see `amx::stride`).
fn spread(words: usize) -> usize {
    if words.is_multiple_of(64) {
        words + TILE
    } else {
        words
    }
}

/// The sizes every task of one call shares.
#[derive(Clone, Copy)]
struct Geometry {
    k_len: usize,
    width: usize,
    heads: usize,
    dim: usize,
    /// Depth pairs a step of `q·kᵀ`: the head's channel pairs shared evenly between the steps.
    step_pairs: usize,
    /// Depth pairs of `q·kᵀ`: the head's channels in pairs, padded to whole steps.
    dim_pairs: usize,
    /// Keys padded to whole blocks of [`KEYS`].
    k_pad: usize,
    /// Words per row of packed queries.
    q_stride: usize,
    /// f32 per row of scores.
    s_stride: usize,
    /// Words (bf16 pairs) per row of weights.
    p_stride: usize,
    /// Words per row (key pair) of packed values: the head's channels padded to whole tiles.
    v_stride: usize,
}

impl Geometry {
    fn new(s: &Shapes) -> Geometry {
        let dim = s.width / s.heads;
        let steps = dim.div_ceil(2).div_ceil(STEP_PAIRS);
        let step_pairs = dim.div_ceil(2).div_ceil(steps);
        let dim_pairs = steps * step_pairs;
        let k_pad = s.k_len.next_multiple_of(KEYS);
        Geometry {
            k_len: s.k_len,
            width: s.width,
            heads: s.heads,
            dim,
            step_pairs,
            dim_pairs,
            k_pad,
            q_stride: spread(dim_pairs.next_multiple_of(TILE)),
            s_stride: spread(k_pad),
            p_stride: spread(k_pad / 2),
            v_stride: spread(dim.next_multiple_of(TILE)),
        }
    }

    /// Output column tiles: the head's channels in tiles of 16.
    fn out_tiles(&self) -> usize {
        self.dim.div_ceil(TILE)
    }
}

/// `softmax(q·kᵀ / √d)·v` per head for `[batch, tokens, heads·dim]` bf16 inputs, in f32, on
/// the tiles ([`available`] is true); `rewire` is given each head's packed values (the tests
/// mis-wire them through it).
pub(super) fn attend(
    s: &Shapes,
    batch: usize,
    (q, k, v): (&[bf16], &[bf16], &[bf16]),
    rewire: fn(&mut [u32]),
) -> Vec<f32> {
    assert!(available(), "attention on AMX tiles on a CPU without them");
    s.assert_inputs(batch, (q, k, v), "on tiles");
    let (q_len, k_len, width) = (s.q_len, s.k_len, s.width);
    let g = Geometry::new(s);
    let mut out = super::unfilled::<f32>(batch * q_len * width);
    let packed: Vec<(Words, Words)> = (0..batch * g.heads)
        .into_par_iter()
        .map(|item| {
            let at = (item / g.heads) * k_len * width + (item % g.heads) * g.dim;
            let mut values = pack_values(v, at, &g);
            rewire(values.as_mut_slice());
            (pack_keys(k, at, &g), values)
        })
        .collect();
    let output = Output(out.as_mut_ptr().cast::<f32>());
    s.for_each_block(batch, QUERIES, |item, b, h, first, rows| {
        let (keys, values) = &packed[item];
        let q_at = (b * q_len + first) * width + h * g.dim;
        let out_at = (b * q_len + first) * width + h * g.dim;
        SCRATCH.with(|scratch| {
            let scratch = &mut *scratch.borrow_mut();
            scratch.fit(&g);
            // SAFETY: the CPU has the tiles (asserted above); the task's output is rows
            // `first..first + rows` of item `b`, head `h`'s columns: inside `out` and no
            // other task's.
            #[allow(unsafe_code)]
            unsafe {
                attend_block(
                    &g,
                    (q, q_at, rows),
                    (keys, values),
                    scratch,
                    output.at(out_at),
                )
            };
        });
    });
    // SAFETY: the tasks cover every (batch item, head, block of queries), and each wrote its
    // head's columns of every one of its rows.
    #[allow(unsafe_code)]
    unsafe {
        super::filled(out)
    }
}

/// One head's keys as `B` of `q·kᵀ`: for each block of [`KEYS`] keys, `dim_pairs` rows of
/// [`KEYS`] words, word `n` of row `p` holding channels `2p` and `2p + 1` of key `n` (zeros
/// past the channels and the keys).
fn pack_keys(k: &[bf16], at: usize, g: &Geometry) -> Words {
    let mut words = Words::zeroed(g.k_pad / KEYS * g.dim_pairs * KEYS);
    let out = words.as_mut_slice();
    for key in 0..g.k_len {
        let row = &k[at + key * g.width..][..g.dim];
        let base = (key / KEYS) * g.dim_pairs * KEYS + key % KEYS;
        for (p, pair) in row.chunks(2).enumerate() {
            let high = pair.get(1).map_or(0, |h| u32::from(h.to_bits()));
            out[base + p * KEYS] = u32::from(pair[0].to_bits()) | high << 16;
        }
    }
    words
}

/// One head's values as `B` of the second product: row `p` (`v_stride` words) holds keys `2p`
/// and `2p + 1` of each channel, one word per channel (zeros past the channels and the keys).
fn pack_values(v: &[bf16], at: usize, g: &Geometry) -> Words {
    let mut words = Words::zeroed(g.k_pad / 2 * g.v_stride);
    let out = words.as_mut_slice();
    for key in 0..g.k_len {
        let row = &v[at + key * g.width..][..g.dim];
        let (base, shift) = ((key / 2) * g.v_stride, 16 * (key % 2));
        for (word, value) in out[base..base + g.dim].iter_mut().zip(row) {
            *word |= u32::from(value.to_bits()) << shift;
        }
    }
    words
}

/// A thread's buffers for one task, kept from task to task.
#[derive(Default)]
struct Scratch {
    /// The block's queries: [`QUERIES`] rows of `q_stride` words.
    queries: Words,
    /// The block's scores: [`QUERIES`] rows of `s_stride` f32 (as their bits).
    scores: Words,
    /// The block's weights: [`QUERIES`] rows of `p_stride` words of bf16 pairs.
    weights: Words,
    /// One pass of output tiles: [`TILE`] rows of `OUT_TILES · 16` f32.
    out: Words,
    /// Each row's `1 / Σ weights`.
    inverses: [f32; QUERIES],
}

impl Scratch {
    /// Sizes the buffers for `g` (kept when they already fit).
    fn fit(&mut self, g: &Geometry) {
        let fit = |words: &mut Words, len: usize| {
            if words.as_slice().len() != len {
                words.reset(len);
            }
        };
        fit(&mut self.queries, QUERIES * g.q_stride);
        fit(&mut self.scores, QUERIES * g.s_stride);
        fit(&mut self.weights, QUERIES * g.p_stride);
        fit(&mut self.out, TILE * OUT_TILES * TILE);
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// One task: queries `at..` (`rows` ≤ 32 of them, `width` apart) of one head against its
/// packed keys and values, into `out` (rows `width` apart, the head's `dim` columns).
///
/// # Safety
///
/// The CPU has AMX and AVX512-BF16; `out` is valid for `rows` rows of `dim` values, `width`
/// apart, and no one else's; the scratch was fitted to `g`.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
unsafe fn attend_block(
    g: &Geometry,
    (q, at, rows): (&[bf16], usize, usize),
    (keys, values): (&Words, &Words),
    scratch: &mut Scratch,
    out: *mut f32,
) {
    pack_queries(g, (q, at, rows), scratch.queries.as_mut_slice());
    // SAFETY: the caller's promises; the buffers hold what each step reads and writes (sized
    // by `Scratch::fit` and the packing functions from the same geometry).
    unsafe {
        asm_tiles::configure(&Config::scores(g.step_pairs));
        scores(
            g,
            scratch.queries.as_slice(),
            keys.as_slice(),
            &mut scratch.scores,
        );
        let scale = std::f32::consts::LOG2_E / (g.dim as f32).sqrt();
        for r in 0..rows {
            let s = scratch.scores.as_slice()[r * g.s_stride..]
                .as_ptr()
                .cast::<f32>();
            let p = scratch.weights.as_mut_slice()[r * g.p_stride..].as_mut_ptr();
            scratch.inverses[r] = 1.0 / softmax_row(s, (g.k_len, g.k_pad), scale, p);
        }
        asm_tiles::configure(&Config::weighted_values());
        weighted_values(g, rows, scratch, values.as_slice(), out);
        amx::tiles::release();
    }
}

/// Stand-in off x86-64, where [`available`] is false and nothing calls it.
#[cfg(not(target_arch = "x86_64"))]
#[allow(unsafe_code)]
unsafe fn attend_block(
    _: &Geometry,
    _: (&[bf16], usize, usize),
    _: (&Words, &Words),
    _: &mut Scratch,
    _: *mut f32,
) {
    unreachable!("attention on AMX tiles off x86-64");
}

/// The block's queries as `A`: `rows` rows of the head's channels in pairs, zeros after them
/// and in the rows past `rows`.
fn pack_queries(g: &Geometry, (q, at, rows): (&[bf16], usize, usize), out: &mut [u32]) {
    let used = g.dim.div_ceil(2);
    for (r, row) in out.chunks_exact_mut(g.q_stride).enumerate() {
        if r < rows {
            bf16_gemm::copy_pairs(&q[at + r * g.width..][..g.dim], &mut row[..used]);
            row[used..].fill(0);
        } else {
            row.fill(0);
        }
    }
}

/// The block's scores `q·kᵀ` (unscaled): for each block of 32 keys, 32 × 32 in four tiles,
/// stored into the rows of `scores`.
///
/// # Safety
///
/// As [`attend_block`]; the tiles are configured.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
unsafe fn scores(g: &Geometry, queries: &[u32], keys: &[u32], scores: &mut Words) {
    let (qa, q_row_bytes) = (queries.as_ptr(), 4 * g.q_stride);
    let s_row_bytes = 4 * g.s_stride;
    let s = scores.as_mut_slice().as_mut_ptr().cast::<f32>();
    for block in 0..g.k_pad / KEYS {
        let b = keys[block * g.dim_pairs * KEYS..].as_ptr();
        // SAFETY: the queries hold 32 rows of `q_stride ≥ dim_pairs` words, the block of keys
        // `dim_pairs` rows of 32 words, the scores 32 rows of `s_stride ≥ k_pad` f32.
        unsafe {
            amx::tiles::zero();
            for step in 0..g.dim_pairs / g.step_pairs {
                let a = qa.add(step * g.step_pairs);
                asm_tiles::scores_step(
                    (a, a.add(TILE * g.q_stride), q_row_bytes),
                    b.add(step * g.step_pairs * KEYS),
                );
            }
            asm_tiles::store_scores(s.add(block * KEYS), s_row_bytes, TILE * g.s_stride);
        }
    }
}

/// `p ← bf16(2^(c·(s − max)))` for the first `k_len` of a row of scores, zeros to `k_pad`;
/// returns the sum of the weights (before rounding).
///
/// # Safety
///
/// The CPU has AVX-512F and AVX512-BF16; `s` holds `k_len` f32, `p` `k_pad / 2` words;
/// `k_pad` is a multiple of 32 at least `k_len`.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
unsafe fn softmax_row(s: *const f32, (k_len, k_pad): (usize, usize), c: f32, p: *mut u32) -> f32 {
    use std::arch::x86_64::*;
    let lanes = |from: usize| -> __mmask16 { crate::kernels::lanes(k_len.saturating_sub(from)) };
    // Whole vectors and blocks of 32 first, unmasked; then the rest under masks.
    let (whole_vectors, whole_blocks) = (k_len / TILE, k_len / (2 * TILE));
    // SAFETY: every load is inside the row's `k_len` values (whole vectors, or masked to
    // them), every store inside `p`'s `k_pad / 2` words.
    unsafe {
        // Four maxima in turn, so that none waits on the one before (4 cycles a vector with
        // one; SD 1.5's 4 096-key self-attention, one thread: 0.92–1.00 of that time).
        let load = |v: usize| _mm512_loadu_ps(s.add(v * TILE));
        let [mut m0, mut m1, mut m2, mut m3] = [_mm512_set1_ps(f32::NEG_INFINITY); 4];
        for v in (0..whole_vectors / 4).map(|quad| 4 * quad) {
            m0 = _mm512_max_ps(m0, load(v));
            m1 = _mm512_max_ps(m1, load(v + 1));
            m2 = _mm512_max_ps(m2, load(v + 2));
            m3 = _mm512_max_ps(m3, load(v + 3));
        }
        for v in whole_vectors / 4 * 4..whole_vectors {
            m0 = _mm512_max_ps(m0, load(v));
        }
        let max = _mm512_max_ps(_mm512_max_ps(m0, m1), _mm512_max_ps(m2, m3));
        let mask = lanes(whole_vectors * TILE);
        let rest = _mm512_maskz_loadu_ps(mask, s.add(whole_vectors * TILE));
        let max = _mm512_reduce_max_ps(_mm512_mask_max_ps(max, mask, max, rest));
        let (c, shift) = (_mm512_set1_ps(c), _mm512_set1_ps(c * max));
        // The low and high halves summed apart: two chains of additions instead of one.
        let (mut sum, mut sum_high) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        for block in 0..whole_blocks {
            let from = block * 2 * TILE;
            let low = exp2(_mm512_fmsub_ps(_mm512_loadu_ps(s.add(from)), c, shift));
            let high = exp2(_mm512_fmsub_ps(
                _mm512_loadu_ps(s.add(from + TILE)),
                c,
                shift,
            ));
            sum = _mm512_add_ps(sum, low);
            sum_high = _mm512_add_ps(sum_high, high);
            let pairs: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(high, low));
            _mm512_storeu_si512(p.add(from / 2).cast(), pairs);
        }
        for from in (whole_blocks * 2 * TILE..k_pad).step_by(2 * TILE) {
            let (low_mask, high_mask) = (lanes(from), lanes(from + TILE));
            let low = _mm512_maskz_loadu_ps(low_mask, s.add(from));
            let high = _mm512_maskz_loadu_ps(high_mask, s.add(from + TILE));
            let low = _mm512_maskz_mov_ps(low_mask, exp2(_mm512_fmsub_ps(low, c, shift)));
            let high = _mm512_maskz_mov_ps(high_mask, exp2(_mm512_fmsub_ps(high, c, shift)));
            sum = _mm512_add_ps(sum, low);
            sum_high = _mm512_add_ps(sum_high, high);
            let pairs: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(high, low));
            _mm512_storeu_si512(p.add(from / 2).cast(), pairs);
        }
        _mm512_reduce_add_ps(_mm512_add_ps(sum, sum_high))
    }
}

/// `2^t` for `t ≤ 0` in every lane: `t = n + f` with `|f| ≤ ½`, a degree-4 polynomial for
/// `2^f` (within 5e-6 relative) and `n` put into the exponent by `vscalefps` (which gives 0
/// far below the smallest normal).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
fn exp2(t: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    // Near-minimax coefficients for the relative error of 2^f on [-½, ½] (fitted by reweighted
    // least squares; the Taylor coefficients (ln 2)^k / k! give 5.6e-5, these 2.7e-6).
    const C: [f32; 5] = [
        0.999_999_17,
        0.693_122,
        0.240_249_81,
        0.055_917_12,
        0.009_560_524,
    ];
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t);
    let f = _mm512_sub_ps(t, n);
    let mut p = _mm512_set1_ps(C[4]);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(C[3]));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(C[2]));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(C[1]));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(C[0]));
    _mm512_scalef_ps(p, n)
}

/// The weights times the head's values, 16 rows at a time, up to [`OUT_TILES`] tiles of
/// channels a pass, each row divided by its sum as it is written to `out`.
///
/// # Safety
///
/// As [`attend_block`]; the tiles are configured; the weights of the first `rows` rows
/// are written.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
unsafe fn weighted_values(
    g: &Geometry,
    rows: usize,
    scratch: &mut Scratch,
    values: &[u32],
    out: *mut f32,
) {
    let (p_row_bytes, v_row_bytes) = (4 * g.p_stride, 4 * g.v_stride);
    let block_row = OUT_TILES * TILE;
    for first_row in (0..rows).step_by(TILE) {
        let a = scratch.weights.as_slice()[first_row * g.p_stride..].as_ptr();
        for first_tile in (0..g.out_tiles()).step_by(OUT_TILES) {
            let tiles = OUT_TILES.min(g.out_tiles() - first_tile);
            let b = values[first_tile * TILE..].as_ptr();
            let block = scratch.out.as_mut_slice().as_mut_ptr().cast::<f32>();
            // SAFETY: the weights hold 16 rows of `k_pad / 2` pairs from `a`, `p_stride`
            // apart; the values `k_pad / 2` rows of `v_stride ≥ 16·out_tiles` words; the
            // block 16 rows of `block_row` f32.
            unsafe {
                for t in 0..tiles {
                    asm_tiles::zero(t);
                }
                for step in 0..g.k_pad / (2 * VALUE_PAIRS) {
                    asm_tiles::load_weights(a.add(step * VALUE_PAIRS), p_row_bytes);
                    let b = b.add(step * VALUE_PAIRS * g.v_stride);
                    for t in 0..tiles {
                        asm_tiles::add_values(t, b.add(t * TILE), v_row_bytes);
                    }
                }
                for t in 0..tiles {
                    asm_tiles::store(t, block.add(t * TILE), 4 * block_row);
                }
            }
            let columns = first_tile * TILE..(g.dim).min((first_tile + tiles) * TILE);
            for r in 0..TILE.min(rows - first_row) {
                let inverse = scratch.inverses[first_row + r];
                // SAFETY: row `first_row + r` of the output, the head's columns (the
                // caller's promise); the block's row `r`.
                let (to, from) = unsafe {
                    let to = out.add((first_row + r) * g.width + columns.start);
                    let from = block.add(r * block_row);
                    (
                        std::slice::from_raw_parts_mut(to, columns.len()),
                        std::slice::from_raw_parts(from, columns.len()),
                    )
                };
                for (to, from) in to.iter_mut().zip(from) {
                    *to = from * inverse;
                }
            }
        }
    }
}

/// A tile configuration (palette 1): each tile's rows and bytes a row.
#[repr(C, align(64))]
struct Config([u8; 64]);

impl Config {
    /// The scores' steps of `pairs` depth pairs: `C` in tiles 0–3 (16 rows of 16 f32), `A`
    /// in 4–5 (16 rows of `pairs` words), `B` in 6–7 (`pairs` rows of 16 words).
    fn scores(pairs: usize) -> Config {
        Config::with(|t| match t {
            0..=3 => (TILE, 64),
            4 | 5 => (TILE, 4 * pairs),
            _ => (pairs, 64),
        })
    }

    /// The second product's steps of [`VALUE_PAIRS`]: `C` in tiles 0–5, `A` in 6, `B` in 7.
    fn weighted_values() -> Config {
        Config::with(|t| match t {
            0..=5 => (TILE, 64),
            6 => (TILE, 4 * VALUE_PAIRS),
            _ => (VALUE_PAIRS, 64),
        })
    }

    /// Tile `t` of eight `shape(t)` = (rows, bytes a row).
    fn with(shape: impl Fn(usize) -> (usize, usize)) -> Config {
        let mut bytes = [0u8; 64];
        bytes[0] = 1;
        for t in 0..8 {
            let (rows, row_bytes) = shape(t);
            assert!((1..=TILE).contains(&rows) && (1..=64).contains(&row_bytes));
            bytes[16 + 2 * t..18 + 2 * t].copy_from_slice(&(row_bytes as u16).to_le_bytes());
            bytes[48 + t] = rows as u8;
        }
        Config(bytes)
    }
}

/// The tile instructions this module uses, on a [`Config`]. The scores: `C` in tiles 0–3,
/// the queries' `A` in 4–5, the keys' `B` in 6–7. The second product: `C` in tiles 0–5, the
/// weights' `A` in 6, the values' `B` in 7.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod asm_tiles {
    use super::Config;
    use std::arch::asm;

    /// `$on!(N)` for output tile `t` = N (0–5): an instruction names its tiles, so a tile
    /// chosen at run time is a match over the literal names.
    macro_rules! on_tile {
        ($t:expr, $on:ident) => {
            match $t {
                0 => $on!(0),
                1 => $on!(1),
                2 => $on!(2),
                3 => $on!(3),
                4 => $on!(4),
                _ => $on!(5),
            }
        };
    }

    /// Loads `config` for this thread (which zeroes the tiles).
    ///
    /// # Safety
    ///
    /// The CPU has AMX and the process was granted its state (`amx::supported`).
    pub(super) unsafe fn configure(config: &Config) {
        // SAFETY: the caller's promise; the configuration is 64 valid bytes.
        unsafe { asm!("ldtilecfg [{}]", in(reg) &config.0, options(nostack, readonly)) };
    }

    /// Adds 32 queries × a step's depth pairs (two tiles of `A`, their rows `a_bytes` apart)
    /// times the step's pairs × 32 keys (two tiles side by side, rows 128 bytes apart) to the
    /// scores' tiles (0–3).
    ///
    /// # Safety
    ///
    /// The tiles are configured; each tile row read is inside its operand.
    #[inline(always)]
    pub(super) unsafe fn scores_step(
        (a0, a1, a_bytes): (*const u32, *const u32, usize),
        b: *const u32,
    ) {
        // SAFETY: the caller's promise.
        unsafe {
            asm!(
                "tileloadd tmm4, [{a0} + {sa}]",
                "tileloadd tmm6, [{b0} + {sb}]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tileloadd tmm7, [{b1} + {sb}]",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tileloadd tmm5, [{a1} + {sa}]",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                a0 = in(reg) a0, a1 = in(reg) a1, sa = in(reg) a_bytes,
                b0 = in(reg) b, b1 = in(reg) b.add(16), sb = in(reg) 128usize,
                options(nostack, readonly)
            )
        };
    }

    /// Stores the scores' tiles: rows `row_bytes` apart from `s`, the second row of tiles
    /// `second_rows` f32 on.
    ///
    /// # Safety
    ///
    /// The tiles are configured; the 32 rows of 32 f32 from `s` are writable.
    #[inline(always)]
    pub(super) unsafe fn store_scores(s: *mut f32, row_bytes: usize, second_rows: usize) {
        // SAFETY: the caller's promise.
        unsafe {
            asm!(
                "tilestored [{c0} + {st}], tmm0",
                "tilestored [{c1} + {st}], tmm1",
                "tilestored [{c2} + {st}], tmm2",
                "tilestored [{c3} + {st}], tmm3",
                c0 = in(reg) s, c1 = in(reg) s.add(16),
                c2 = in(reg) s.add(second_rows), c3 = in(reg) s.add(second_rows + 16),
                st = in(reg) row_bytes,
                options(nostack)
            )
        };
    }

    /// Loads 16 rows of 16 weight pairs (rows `row_bytes` apart) into tile 6.
    ///
    /// # Safety
    ///
    /// The tiles are configured; the rows are inside the weights.
    #[inline(always)]
    pub(super) unsafe fn load_weights(a: *const u32, row_bytes: usize) {
        // SAFETY: the caller's promise.
        unsafe {
            asm!("tileloadd tmm6, [{a} + {s}]", a = in(reg) a, s = in(reg) row_bytes,
                options(nostack, readonly))
        };
    }

    /// Loads 16 key pairs × 16 channels of the values (rows `row_bytes` apart) into tile 7
    /// and adds tile 6 times it to output tile `t` (0–5).
    ///
    /// # Safety
    ///
    /// The tiles are configured; the rows are inside the values; `t < 6`.
    #[inline(always)]
    pub(super) unsafe fn add_values(t: usize, b: *const u32, row_bytes: usize) {
        macro_rules! on {
            ($tile:literal) => {
                // SAFETY: the caller's promise.
                unsafe {
                    asm!("tileloadd tmm7, [{b} + {s}]",
                        concat!("tdpbf16ps tmm", $tile, ", tmm6, tmm7"),
                        b = in(reg) b, s = in(reg) row_bytes, options(nostack, readonly))
                }
            };
        }
        on_tile!(t, on);
    }

    /// Zeroes output tile `t` (0–5).
    ///
    /// # Safety
    ///
    /// The tiles are configured; `t < 6`.
    #[inline(always)]
    pub(super) unsafe fn zero(t: usize) {
        macro_rules! on {
            ($tile:literal) => {
                // SAFETY: the caller's promise.
                unsafe { asm!(concat!("tilezero tmm", $tile), options(nostack, nomem)) }
            };
        }
        on_tile!(t, on);
    }

    /// Stores output tile `t` (0–5): 16 rows of 16 f32 from `c`, `row_bytes` apart.
    ///
    /// # Safety
    ///
    /// The tiles are configured; the rows are writable; `t < 6`.
    #[inline(always)]
    pub(super) unsafe fn store(t: usize, c: *mut f32, row_bytes: usize) {
        macro_rules! on {
            ($tile:literal) => {
                // SAFETY: the caller's promise.
                unsafe {
                    asm!(concat!("tilestored [{c} + {s}], tmm", $tile),
                        c = in(reg) c, s = in(reg) row_bytes, options(nostack))
                }
            };
        }
        on_tile!(t, on);
    }
}

#[cfg(test)]
mod tests {
    use super::super::fused_attention;
    use super::super::tests::{random, reference};
    use super::*;
    use crate::kernels::test_support::max_difference;
    use candle_core::{DType, Device, Tensor};

    /// Runs the tiles on `[batch, tokens, width]` tensors (bf16-rounded first), `rewire` given
    /// each head's packed values.
    fn on_tiles(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        heads: usize,
        rewire: fn(&mut [u32]),
    ) -> Tensor {
        let (batch, q_len, width) = q.dims3().unwrap();
        let k_len = k.dim(1).unwrap();
        let values = |t: &Tensor| {
            t.to_dtype(DType::BF16)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<bf16>()
                .unwrap()
        };
        let shapes = Shapes {
            q_len,
            k_len,
            width,
            heads,
        };
        let out = attend(&shapes, batch, (&values(q), &values(k), &values(v)), rewire);
        Tensor::from_vec(out, (batch, q_len, width), &Device::Cpu).unwrap()
    }

    /// Swaps the two keys of every packed pair of values: keys wired to the wrong weights.
    fn swap_keys(words: &mut [u32]) {
        for w in words {
            *w = w.rotate_left(16);
        }
    }

    /// Against candle's f32 ops on the same bf16-rounded values within 1 % of the values'
    /// largest magnitude (2.0), as the general bf16 path is held to (only the weights are
    /// rounded, 2⁻⁹ each, and their exponentials are within 5e-6); values wired to the wrong
    /// keys miss by more. The shapes: SD 1.5's heads (40, 80, 160 channels), SDXL's (64), the
    /// VAE's one head of 512, odd ones; keys and queries off and on whole blocks; text's 77 keys; one of each.
    #[test]
    fn attention_on_the_tiles_equals_the_f32_attention_of_its_rounded_inputs() {
        if !available() {
            eprintln!("no AMX tiles on this CPU: the fused tile attention is not run");
            return;
        }
        let shapes = [
            (1, 1, 1, 1, 1),
            (2, 65, 77, 8, 5),
            (1, 130, 130, 4, 40),
            (2, 33, 64, 2, 80),
            (1, 64, 77, 2, 160),
            (1, 257, 256, 2, 64),
            (3, 63, 17, 3, 7),
            (1, 31, 1000, 1, 40),
            (1, 100, 70, 1, 512), // the VAE's mid-block attention: one head of 512 channels
        ];
        let mut worst = 0f32;
        for (i, &(batch, q_len, k_len, heads, dim)) in shapes.iter().enumerate() {
            let width = heads * dim;
            let seed = i as u64 * 3 + 70;
            let q = random((batch, q_len, width), seed);
            let k = random((batch, k_len, width), seed + 1);
            let v = random((batch, k_len, width), seed + 2);
            let wide = |t: &Tensor| {
                t.to_dtype(DType::BF16)
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap()
            };
            let expected = reference(&wide(&q), &wide(&k), &wide(&v), heads);
            let ours = on_tiles(&q, &k, &v, heads, |_| {});
            let off = max_difference(&ours, &expected) / 2.0;
            assert!(off < 1e-2, "shape {:?}: {off}", shapes[i]);
            worst = worst.max(off);
            // The general entry point takes this path on such a CPU.
            let half = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
            let routed = fused_attention(&half(&q), &half(&k), &half(&v), heads).unwrap();
            assert_eq!(max_difference(&routed, &ours), 0.0, "shape {:?}", shapes[i]);
            if k_len > 1 {
                let miswired = on_tiles(&q, &k, &v, heads, swap_keys);
                let off = max_difference(&miswired, &expected) / 2.0;
                assert!(
                    off > 2e-2,
                    "shape {:?}: mis-wired, only {off} off",
                    shapes[i]
                );
            }
        }
        println!("attention on the tiles: worst {worst:e} of the rounded inputs' f32 attention");
    }

    /// Heads of no channels (and no keys) are not the tiles' to take: the general path answers
    /// them (on an AMX CPU the tiles' geometry divided by zero for them).
    #[test]
    fn empty_heads_are_answered_without_the_tiles() {
        let empty =
            |tokens: usize| Tensor::zeros((1, tokens, 0), DType::BF16, &Device::Cpu).unwrap();
        let out = fused_attention(&empty(4), &empty(3), &empty(3), 1).unwrap();
        assert_eq!(out.dims(), &[1, 4, 0]);
    }

    /// `softmax_row`'s weights of `scores` (`k_pad` the next multiple of 32) and their sum.
    #[cfg(target_arch = "x86_64")]
    fn softmax_weights(scores: &[f32], c: f32) -> (Vec<f32>, f32) {
        let k_pad = scores.len().next_multiple_of(32).max(32);
        let mut words = vec![0u32; k_pad / 2];
        // SAFETY: the callers checked the CPU; `scores` holds `k_len` values, `words`
        // `k_pad / 2`.
        #[allow(unsafe_code)]
        let sum = unsafe {
            softmax_row(
                scores.as_ptr(),
                (scores.len(), k_pad),
                c,
                words.as_mut_ptr(),
            )
        };
        let weights = words
            .iter()
            .flat_map(|w| [*w as u16, (*w >> 16) as u16])
            .map(|bits| half::bf16::from_bits(bits).to_f32())
            .collect();
        (weights, sum)
    }

    /// The row's largest score gets the weight 1 exactly, wherever it lies (each of the
    /// running maxima's vectors, the tail), every other one less, the padding 0, and the sum
    /// is theirs: scores of up to ±60 would overflow `2^(c·(s − max))` with a maximum missed.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn softmax_rows_weigh_the_largest_score_one_wherever_it_lies() {
        if !is_x86_feature_detected!("avx512bf16") {
            return;
        }
        for k_len in [1, 15, 16, 17, 64, 77, 100, 257, 1000, 4096] {
            for at in (0..k_len).step_by(1 + k_len / 40).chain([k_len - 1]) {
                let mut scores: Vec<f32> = (0..k_len)
                    .map(|i| ((i * 37 % 101) as f32 - 50.0) * 1.1)
                    .collect();
                scores[at] = 60.0;
                let (weights, sum) = softmax_weights(&scores, 2.5);
                assert_eq!(weights[at], 1.0, "k_len {k_len}, largest at {at}");
                assert!(
                    weights[..k_len].iter().all(|w| (0.0..=1.0).contains(w)),
                    "k_len {k_len}, largest at {at}: {weights:?}"
                );
                assert!(weights[k_len..].iter().all(|w| *w == 0.0));
                let exact: f64 = scores
                    .iter()
                    .map(|s| (2.5 * (f64::from(*s) - 60.0)).exp2())
                    .sum();
                assert!(
                    (f64::from(sum) - exact).abs() < 2e-5 * exact,
                    "{sum} {exact}"
                );
            }
        }
    }

    /// `exp2` over `t` (a multiple of 16 values).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn exp2_all(t: &[f32]) -> Vec<f32> {
        use std::arch::x86_64::*;
        let mut out = vec![0f32; t.len()];
        for (from, to) in t.chunks_exact(16).zip(out.chunks_exact_mut(16)) {
            // SAFETY: 16 values in and out.
            #[allow(unsafe_code)]
            unsafe {
                _mm512_storeu_ps(to.as_mut_ptr(), exp2(_mm512_loadu_ps(from.as_ptr())))
            };
        }
        out
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_tiles_exponential_is_within_5e_6_of_exp2() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return;
        }
        let t: Vec<f32> = (0..1_600_000).map(|i| -(i as f32) * 2e-5).collect();
        // SAFETY: the CPU has AVX-512F, checked above.
        #[allow(unsafe_code)]
        let ours = unsafe { exp2_all(&t) };
        let worst = t
            .iter()
            .zip(&ours)
            .map(|(x, e)| {
                let exact = f64::from(*x).exp2();
                (f64::from(*e) - exact).abs() / exact
            })
            .fold(0f64, f64::max);
        assert!(worst < 5e-6, "relative error {worst}");
        let mut edges = vec![0f32; 16];
        edges[..4].copy_from_slice(&[0.0, -200.0, -1000.0, -126.5]);
        // SAFETY: as above.
        #[allow(unsafe_code)]
        let edges = unsafe { exp2_all(&edges) };
        assert!((edges[0] - 1.0).abs() < 5e-6, "{edges:?}");
        assert!(
            edges[1] >= 0.0 && edges[1] < 1e-37 && edges[2] == 0.0,
            "{edges:?}"
        );
        assert!(edges[3] > 0.0, "{edges:?}");
    }
}
