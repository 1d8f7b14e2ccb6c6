//! F(4×4, 3×3)'s products with the filter transform fused in, for maps whose filters outweigh
//! their tiles: the UNet's 1 280 channels at 16×16 have 14.7 M filter taps (59 MB) and 32 tiles
//! a channel. Made whole, `U` is 4 × the filters (236 MB), written to memory and read back
//! once per position's product; that round trip was most of F(4×4)'s 131 ms there, and why
//! im2col (83 ms) won at 16×16 and below.
//!
//! Here a task takes [`OUTPUTS`] output channels (and a run of the tiles, where there are more
//! threads than blocks of outputs) and goes over the input channels [`INPUTS`] at a time: it
//! transforms that block's filters into a buffer that stays in the cache (`[inputs,
//! OUTPUTS / 16, 36, 16]`, 288 KiB), then adds the block's share of every position's product,
//! `M_ξ[o][t] += Σ_i U_ξ[o][i] · V_ξ[i][t]`, to the task's sums (`[36, run, OUTPUTS]`, in the
//! cache too). The filters are read from the weight itself, once per run of tiles, and `U` is
//! never written out. The products run in AVX-512 lanes of output channels: two vectors of them
//! by up to [`TILES`] tiles, 24 sums in registers, each tile's `V` value broadcast.
//!
//! Taken where AVX-512F is (`available`); the products of a whole `U` by `gemm`
//! ([`super::convolve_batch`]) elsewhere.

use super::super::winograd::{Geometry, CHUNK};
use super::{gather_filters, Filters, GATHERED_INPUTS, XI};
use rayon::prelude::*;
use std::cell::RefCell;

/// Output channels one task takes: four vectors of lanes.
const OUTPUTS: usize = 4 * CHUNK;

/// Input channels whose filters a task transforms at once: a block of `U` of
/// `INPUTS × 36 × OUTPUTS` values (288 KiB), used from the cache as soon as it is made.
const INPUTS: usize = 32;

/// Tiles whose sums, for two vectors of output channels, one pass of the kernel keeps in
/// registers (24 of AVX-512's 32).
const TILES: usize = 12;

/// The most tiles of an image whose products are fused, and of a group of images fused at
/// once: a task's sums (`36 × tiles × OUTPUTS`, 1.2 MB at 128) then stay in a 2 MiB L2 cache
/// beside its blocks of `U` and `V`. On one thread of a Xeon with AMX (`engine --part conv`,
/// batch 2): SD 1.5's 1 280 channels at 16×16 (16 tiles an image) 137 → 47 ms, SDXL's at
/// 32×32 (64) 183 → 156; the VAE's 512 at 64×64 (256) 54 → 57 and SDXL's 1 920 → 640 at 64×64
/// 393 → 564, so maps of more tiles stay on `gemm`.
pub(super) const MAX_TILES: usize = 128;

/// Whether maps of `tiles` tiles run on the fused products: up to `max_tiles` of them
/// ([`MAX_TILES`] but in tests), on a CPU with AVX-512F.
pub(super) fn takes(tiles: usize, max_tiles: usize) -> bool {
    tiles <= max_tiles && available()
}

/// Whether this CPU runs the fused products (AVX-512F).
fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

thread_local! {
    /// A task's block of `U` and its sums, kept from task to task on this thread.
    static BUFFERS: RefCell<(Vec<f32>, Vec<f32>)> = RefCell::default();
}

/// A pointer to the products `m`, shared by the tasks, each of which writes only its own tiles
/// of its own output channels' rows.
#[derive(Clone, Copy)]
struct Products(*mut f32);

// SAFETY: the tasks write disjoint parts of `m` (see `multiply`), which outlives them.
#[allow(unsafe_code)]
unsafe impl Send for Products {}
// SAFETY: as for `Send`: no two tasks touch the same value through it.
#[allow(unsafe_code)]
unsafe impl Sync for Products {}

/// `m[ξ][o][t] = Σ_i U_ξ[o][i] · v[i][ξ][t]` for every position `ξ`, output channel `o` and tile
/// `t`, with `U` made from `weight` a block at a time (`v` `[c_in, 36, tiles]`, `m` `[36, c_out,
/// tiles]`, as [`super::multiply_positions`] takes them). The caller checked [`available`].
///
/// A task takes [`OUTPUTS`] output channels, and all the tiles where that gives every thread a
/// task; with fewer blocks of outputs than threads (640 channels on 16 threads), the tiles are
/// split into runs as well, each task then making its block of `U` for its own run. Every
/// output's sum is made the same way whatever the split, so the numbers do not depend on the
/// count of threads.
pub(super) fn multiply(g: &Geometry, weight: Filters<'_>, v: &[f32], m: &mut [f32], tiles: usize) {
    assert!(available(), "fused F(4×4) products need AVX-512F");
    assert!(
        v.len() >= g.c_in * XI * tiles && m.len() >= XI * g.c_out * tiles,
        "fused F(4×4) products: buffers too short"
    );
    let products = Products(m.as_mut_ptr());
    let blocks = g.c_out.div_ceil(OUTPUTS);
    let runs = rayon::current_num_threads()
        .div_ceil(blocks)
        .min(tiles.div_ceil(TILES));
    let run_len = tiles.div_ceil(runs);
    (0..blocks * runs).into_par_iter().for_each(|task| {
        let (block, run) = (task / runs, task % runs);
        let outputs = block * OUTPUTS..(block * OUTPUTS + OUTPUTS).min(g.c_out);
        let run = run * run_len..(run * run_len + run_len).min(tiles);
        BUFFERS.with(|buffers| {
            let (u, sums) = &mut *buffers.borrow_mut();
            u.resize(INPUTS * XI * OUTPUTS, 0.0);
            sums.resize(XI * run.len() * OUTPUTS, 0.0);
            for first in (0..g.c_in).step_by(INPUTS) {
                let inputs = first..(first + INPUTS).min(g.c_in);
                transform_block(weight, g.c_in, (outputs.clone(), inputs.clone()), u);
                let v_block = &v[first * XI * tiles + run.start..];
                let run_shape = (tiles, run.len());
                add_block(u, v_block, inputs.len(), run_shape, sums, first == 0);
            }
            // SAFETY: `m` holds `XI · c_out · tiles` values (asserted above); this task writes
            // tiles `run` of rows `outputs` of each position, which no other task writes.
            #[allow(unsafe_code)]
            unsafe {
                write_rows(sums, products, (g.c_out, tiles), (outputs, run))
            };
        });
    });
}

/// `U`'s block for the output channels `outputs` and input channels `inputs` into `u`
/// (`[inputs, OUTPUTS / 16, 36, 16]`: each vector of outputs' 36 positions one run, so that
/// the transform's stores go in order, 3–9 % faster than `[inputs, 36, OUTPUTS]`). Lanes past
/// `outputs` keep whatever values they held, or lane 0's filter in a partly used vector: the
/// sums they make are never written out. The caller checked [`available`].
fn transform_block(
    weight: Filters<'_>,
    c_in: usize,
    channels: (std::ops::Range<usize>, std::ops::Range<usize>),
    u: &mut [f32],
) {
    assert!(available() && channels.0.len() <= OUTPUTS && channels.1.len() <= INPUTS);
    assert!(u.len() >= channels.1.len() * XI * OUTPUTS);
    // SAFETY: the CPU has AVX-512F (asserted), and `u` holds the block (asserted).
    #[allow(unsafe_code)]
    unsafe {
        transform_block_lanes(weight, c_in, channels, u)
    }
}

/// [`transform_block`] in AVX-512 lanes of output channels, every value in registers from the
/// gathered taps to the stores (the portable transform's lane arrays went through the stack: a
/// second transform of every block added 19 ms to the UNet's 1 280 channels at 16×16, about
/// 480 cycles a block of sixteen filters; this one adds 12, about 300, mostly its stores).
///
/// # Safety
///
/// The CPU has AVX-512F; `u` holds `inputs.len() × 36 × OUTPUTS` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(unsafe_code)]
unsafe fn transform_block_lanes(
    weight: Filters<'_>,
    c_in: usize,
    (outputs, inputs): (std::ops::Range<usize>, std::ops::Range<usize>),
    u: &mut [f32],
) {
    use std::arch::x86_64::*;
    // taps[9·j + k][l]: tap k of the filter from input `from + j` to output `first + l`.
    let mut taps = [[0f32; CHUNK]; 9 * GATHERED_INPUTS];
    for first in outputs.clone().step_by(CHUNK) {
        let n = CHUNK.min(outputs.end - first);
        for from in inputs.clone().step_by(GATHERED_INPUTS) {
            let count = GATHERED_INPUTS.min(inputs.end - from);
            let taps = &mut taps[..9 * count];
            gather_filters(weight, c_in, (first, n), from, taps);
            for (j, g) in taps.chunks_exact(9).enumerate() {
                // SAFETY: each of the nine taps is CHUNK values; the stores land at
                // `j'·36·OUTPUTS + (vector·36 + ξ)·16 + 0..16` for the block's input `j' <
                // inputs.len()`, `vector < OUTPUTS / 16` and `ξ < 36`, inside `u` (the
                // caller's promise).
                unsafe {
                    let g: [__m512; 9] = std::array::from_fn(|k| _mm512_loadu_ps(g[k].as_ptr()));
                    // t = G g (6 × 3): G applied down each of the filter's three columns.
                    let columns = [
                        g_times(g[0], g[3], g[6]),
                        g_times(g[1], g[4], g[7]),
                        g_times(g[2], g[5], g[8]),
                    ];
                    let vector = (first - outputs.start) / CHUNK;
                    let at = ((from - inputs.start + j) * XI * OUTPUTS) + vector * XI * CHUNK;
                    let u_j = u.as_mut_ptr().add(at);
                    let [first_column, second_column, third_column] = columns;
                    let rows = first_column
                        .into_iter()
                        .zip(second_column)
                        .zip(third_column);
                    for (r, ((t0, t1), t2)) in rows.enumerate() {
                        // Row r of U = t Gᵀ: G applied along row r of t.
                        let row = g_times(t0, t1, t2);
                        for (c, value) in row.into_iter().enumerate() {
                            _mm512_storeu_ps(u_j.add((6 * r + c) * CHUNK), value);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(unsafe_code)]
unsafe fn transform_block_lanes(
    _: Filters<'_>,
    _: usize,
    _: (std::ops::Range<usize>, std::ops::Range<usize>),
    _: &mut [f32],
) {
    unreachable!("the fused products run only where AVX-512F is")
}

/// `G (g0, g1, g2)ᵀ` in AVX-512 lanes, as `winograd4::g_times`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(unsafe_code)]
unsafe fn g_times(
    g0: std::arch::x86_64::__m512,
    g1: std::arch::x86_64::__m512,
    g2: std::arch::x86_64::__m512,
) -> [std::arch::x86_64::__m512; 6] {
    use std::arch::x86_64::*;
    // SAFETY: called only from functions compiled for AVX-512F.
    unsafe {
        let outer = _mm512_add_ps(g0, g2);
        let even = _mm512_fmadd_ps(
            g0,
            _mm512_set1_ps(1.0 / 24.0),
            _mm512_mul_ps(g2, _mm512_set1_ps(1.0 / 6.0)),
        );
        let sixth = _mm512_set1_ps(-1.0 / 6.0);
        let twelfth = _mm512_set1_ps(1.0 / 12.0);
        [
            _mm512_mul_ps(g0, _mm512_set1_ps(0.25)),
            _mm512_mul_ps(_mm512_add_ps(outer, g1), sixth),
            _mm512_mul_ps(_mm512_sub_ps(outer, g1), sixth),
            _mm512_fmadd_ps(g1, twelfth, even),
            _mm512_fnmadd_ps(g1, twelfth, even),
            g2,
        ]
    }
}

/// Adds one block of input channels' products to `sums` (`[36, run, OUTPUTS]`; replaces them
/// when `first`): `u` is the block of `U` (`[inputs, OUTPUTS / 16, 36, 16]`), `v` the block's
/// rows of `V` (`[inputs, 36, tiles]`) from the run's first tile, `run` tiles of each.
#[allow(unsafe_code)]
fn add_block(
    u: &[f32],
    v: &[f32],
    inputs: usize,
    (tiles, run): (usize, usize),
    sums: &mut [f32],
    first: bool,
) {
    assert!(
        inputs > 0
            && run <= tiles
            && u.len() >= inputs * XI * OUTPUTS
            && v.len() >= (inputs * XI - 1) * tiles + run
            && sums.len() >= XI * run * OUTPUTS
    );
    for xi in 0..XI {
        for pair in (0..OUTPUTS).step_by(2 * CHUNK) {
            for t in (0..run).step_by(TILES) {
                let count = TILES.min(run - t);
                let at = Pass {
                    u: u[(pair / CHUNK * XI + xi) * CHUNK..].as_ptr(),
                    v: v[xi * tiles + t..].as_ptr(),
                    sums: sums[(xi * run + t) * OUTPUTS + pair..].as_mut_ptr(),
                    inputs,
                    v_step: XI * tiles,
                    first,
                };
                // SAFETY: the CPU has AVX-512F (the caller checked `available`); for `i <
                // inputs` the pass reads `u` at `i·36·OUTPUTS + (vector·36 + ξ)·16 + 0..16` for
                // the pair's two vectors and `v` at `(i·36 + ξ)·tiles + t + 0..count` (at most
                // `(inputs·36 − 1)·tiles + run`), and it reads and writes `sums` at `(ξ·run + t
                // + k)·OUTPUTS + pair + 0..32` for `k < count`: all inside the lengths asserted
                // above.
                unsafe { at.run(count) };
            }
        }
    }
}

/// One pass of the kernel: where it reads and writes.
struct Pass {
    /// `U` at the first input channel, position and output channel.
    u: *const f32,
    /// `V` at the first input channel, position and tile.
    v: *const f32,
    /// The sums of the first tile and output channel.
    sums: *mut f32,
    inputs: usize,
    /// Values from one input channel's `V` to the next's.
    v_step: usize,
    /// Whether the sums start at zero (else at the values in `sums`).
    first: bool,
}

impl Pass {
    /// The pass over `count` tiles (1 to [`TILES`]).
    ///
    /// # Safety
    ///
    /// The CPU has AVX-512F, and the pointers reach what [`add_block`] says.
    #[allow(unsafe_code)]
    unsafe fn run(&self, count: usize) {
        // SAFETY: passed on from the caller.
        unsafe {
            match count {
                12 => self.tiles::<12>(),
                11 => self.tiles::<11>(),
                10 => self.tiles::<10>(),
                9 => self.tiles::<9>(),
                8 => self.tiles::<8>(),
                7 => self.tiles::<7>(),
                6 => self.tiles::<6>(),
                5 => self.tiles::<5>(),
                4 => self.tiles::<4>(),
                3 => self.tiles::<3>(),
                2 => self.tiles::<2>(),
                1 => self.tiles::<1>(),
                _ => unreachable!("a pass takes 1 to {TILES} tiles, not {count}"),
            }
        }
    }

    /// `sums[t][0..32] (+)= Σ_i u[i][0..32] · v[i][t]` for `t < N`, the sums in registers.
    ///
    /// # Safety
    ///
    /// As [`Pass::run`].
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[allow(unsafe_code)]
    unsafe fn tiles<const N: usize>(&self) {
        use std::arch::x86_64::*;
        // SAFETY: as the caller promises.
        unsafe {
            let mut low = [_mm512_setzero_ps(); N];
            let mut high = [_mm512_setzero_ps(); N];
            if !self.first {
                for t in 0..N {
                    low[t] = _mm512_loadu_ps(self.sums.add(t * OUTPUTS));
                    high[t] = _mm512_loadu_ps(self.sums.add(t * OUTPUTS + CHUNK));
                }
            }
            for i in 0..self.inputs {
                let u = self.u.add(i * XI * OUTPUTS);
                let (u_low, u_high) = (_mm512_loadu_ps(u), _mm512_loadu_ps(u.add(XI * CHUNK)));
                let v = self.v.add(i * self.v_step);
                for t in 0..N {
                    let value = _mm512_set1_ps(*v.add(t));
                    low[t] = _mm512_fmadd_ps(u_low, value, low[t]);
                    high[t] = _mm512_fmadd_ps(u_high, value, high[t]);
                }
            }
            for t in 0..N {
                _mm512_storeu_ps(self.sums.add(t * OUTPUTS), low[t]);
                _mm512_storeu_ps(self.sums.add(t * OUTPUTS + CHUNK), high[t]);
            }
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    #[allow(unsafe_code)]
    unsafe fn tiles<const N: usize>(&self) {
        unreachable!("the fused products run only where AVX-512F is")
    }
}

/// The task's sums (`[36, run, OUTPUTS]`) into tiles `run` of rows `outputs` of each position
/// of `m` (`[36, c_out, tiles]`).
///
/// # Safety
///
/// `m` points to `36 · c_out · tiles` values, `outputs` and `run` are inside `c_out` and
/// `tiles`, and no other thread touches those tiles of those rows.
#[allow(unsafe_code)]
unsafe fn write_rows(
    sums: &[f32],
    m: Products,
    (c_out, tiles): (usize, usize),
    (outputs, run): (std::ops::Range<usize>, std::ops::Range<usize>),
) {
    for xi in 0..XI {
        for (lane, o) in outputs.clone().enumerate() {
            // SAFETY: row `o < c_out` of position `ξ < 36`: `tiles` values inside `m`.
            let row = unsafe { m.0.add((xi * c_out + o) * tiles) };
            for (at, t) in run.clone().enumerate() {
                // SAFETY: `t < tiles`, inside the row.
                unsafe { *row.add(t) = sums[(xi * run.len() + at) * OUTPUTS + lane] };
            }
        }
    }
}
