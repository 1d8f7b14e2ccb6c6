//! 3×3 convolution with stride 1 by Winograd's F(4×4, 3×3), on the CPU: every f32 3×3
//! convolution of a map of 32×32 or more (`nn::WINOGRAD_MIN_PIXELS`), the diffusion engine's
//! and the post-processors'.
//!
//! Each 4×4 block of outputs needs 36 multiplications per input channel instead of 144 (the
//! F(2×2, 3×3) of [`super::winograd`] needs 64): the 6×6 input tile `d` and the 3×3 filter `g`
//! are transformed (`V = Bᵀ d B`, `U = G g Gᵀ`), multiplied element by element and summed over
//! input channels, one matrix product per position `ξ` of the tile (`M_ξ = U_ξ · V_ξ`,
//! `[c_out, c_in] · [c_in, tiles]`), and transformed back (`Y = Aᵀ M A`). The products do 4 ×
//! fewer multiply-adds than the direct convolution, 1.78 × fewer than F(2×2, 3×3); the price is
//! rounding: the transforms' points (0, ±1, ±2, ∞) scale values by up to 8 and back, so f32
//! results differ from the direct sum by a few 1e-6 of the output's magnitude rather than a few
//! ulp. The diffusion engine's tests against diffusers hold with it (the UNet and the VAE).
//!
//! The layout follows [`super::winograd`]: bands of tile rows keep the buffers bounded; each
//! padded row is stored as its four column phases (columns `4t`, `4t+1`, `4t+2`, `4t+3`), so
//! the six columns of [`CHUNK`] consecutive tiles are six contiguous runs. A batch whose tiles
//! fit one band goes at once instead ([`convolve_batch`]), its images' tiles side by side in
//! each product, its filters made a row of `U` at a time where all of them would not fit
//! [`FILTER_VALUES`].

use super::winograd::{
    by_bands, load, multiply_positions, store, with_buffers, Buffers, Geometry, Lanes, Padding,
    CHUNK,
};
use super::{contiguous_f32, contiguous_values, filled, unfilled};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

mod fused;

/// Values in each of a band's buffers, as in [`super::winograd`].
const BAND_VALUES: usize = 8 << 20;

/// Positions of a transformed tile.
const XI: usize = 36;

/// The most transformed filters (f32 values) a convolution of a whole batch at once
/// ([`convolve_batch`]) holds: 64 MiB. Past it they are made a group of `U`'s rows at a time.
const FILTER_VALUES: usize = 16 << 20;

/// Whether every transformed filter of a `c_in → c_out` convolution fits [`FILTER_VALUES`]
/// at once: a convolution a band at a time (or an image at a time) transforms them whole.
pub(crate) fn filters_fit_whole(c_in: usize, c_out: usize) -> bool {
    c_in * XI * c_out <= FILTER_VALUES
}

/// Whether a convolution of `batch` maps to `out_h × out_w` outputs is made of the whole batch
/// at once ([`convolve_batch`]): its filters are then made a group of `U`'s rows at a time,
/// within [`FILTER_VALUES`] however many there are.
pub(crate) fn takes_batch_at_once(
    batch: usize,
    channels: (usize, usize),
    outputs: (usize, usize),
) -> bool {
    at_once(batch, channels, outputs, LIMITS)
}

/// Whether a convolution to `out_h × out_w` outputs runs on the fused products ([`fused`]):
/// maps of few enough tiles, on a CPU with AVX-512F. Decided by the map, not the batch, so an
/// image gets the same numbers in any batch.
pub(crate) fn fuses_filters((out_h, out_w): (usize, usize)) -> bool {
    fused::takes(out_h.div_ceil(4) * out_w.div_ceil(4), LIMITS.fused_tiles)
}

/// How large a convolution's pieces may be; the tests shrink them to take every way.
#[derive(Clone, Copy, Debug)]
struct Limits {
    /// Values in each of a band's buffers.
    band_values: usize,
    /// The most transformed filters a batch at once holds ([`convolve_batch`]).
    filter_values: usize,
    /// The most tiles of an image, and of a group of images, whose products are fused with
    /// the filter transform ([`fused::MAX_TILES`]).
    fused_tiles: usize,
}

/// The limits every convolution but the tests' runs with.
const LIMITS: Limits = Limits {
    band_values: BAND_VALUES,
    filter_values: FILTER_VALUES,
    fused_tiles: fused::MAX_TILES,
};

/// Whether [`convolve_batch`] takes the batch: its transformed tiles, input and products, fit
/// one band's buffers of `band_values` each, or five bands' where the filters would not fit
/// whole in `filter_values` (SDXL's 2 560 → 1 280 at 32×32, 1 280 → 1 280 at 64×64 and, with
/// five, 1 920 → 640 at 64×64, 35 Mi values: made once per band instead, or each band on the
/// bf16 kernel, they cost more time than the larger buffers cost memory; the last took 1 289 ms
/// on the bf16 kernel and takes 550 at once, one thread of an AMD EPYC Zen 4).
fn at_once(
    batch: usize,
    (c_in, c_out): (usize, usize),
    (out_h, out_w): (usize, usize),
    Limits {
        band_values,
        filter_values,
        ..
    }: Limits,
) -> bool {
    let values = XI * c_in.max(c_out) * batch * out_h.div_ceil(4) * out_w.div_ceil(4);
    values <= band_values || c_in * XI * c_out > filter_values && values <= 5 * band_values
}

/// `conv2d(x, weight) + bias` for a 3×3 `weight`, stride 1, dilation 1, one group, `padding`
/// zeros on each side; f32 on the CPU (`x` `[batch, c_in, h, w]`, `weight` `[c_out, c_in, 3,
/// 3]`, `bias` `[c_out]`). With `relu`, ReLU is applied as the outputs are written (one pass
/// over the output fewer: U²-Net's `REBNCONV`).
pub fn conv2d_3x3(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
    relu: bool,
) -> Result<Tensor> {
    let padding = Padding::uniform(padding);
    convolve(x, weight, bias, padding, LIMITS, relu)
}

/// [`conv2d_3x3`] with its own padding above and below, for a band of rows of a larger image
/// (`vae::banded`), as `winograd::conv2d_3x3_padded`. `weight` may be bf16 (`x` f32): it is
/// widened as its filters are transformed.
pub(crate) fn conv2d_3x3_padded(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    padding: Padding,
) -> Result<Tensor> {
    convolve(x, weight, bias, padding, LIMITS, false)
}

fn convolve(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    padding: Padding,
    limits: Limits,
    relu: bool,
) -> Result<Tensor> {
    let (x, weight, bias) = super::conv_operands(x, weight, bias)?;
    x.apply_op2_no_bwd(
        &weight,
        &Winograd4 {
            padding,
            bias,
            limits,
            relu,
        },
    )
}

struct Winograd4 {
    padding: Padding,
    bias: Option<Vec<f32>>,
    /// [`LIMITS`] (the tests' are small, to make many bands, many groups of rows, or no fused
    /// products).
    limits: Limits,
    /// ReLU on each output as it is written.
    relu: bool,
}

impl Geometry {
    /// Values in one column phase of a grid row (`tiles_w + 1`: the last tile reads one past).
    fn phase_len(&self) -> usize {
        self.tiles_w + 1
    }

    /// Rows and row length of the F(4×4) grid `tile_rows` rows of tiles read.
    fn band_grid_4x4(&self, tile_rows: usize) -> (usize, usize) {
        (4 * tile_rows + 2, 4 * self.phase_len())
    }
}

impl CustomOp2 for Winograd4 {
    fn name(&self) -> &'static str {
        "conv2d-3x3-winograd-4x4"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let bias = self.bias.as_deref();
        let relu = self.relu;
        let (batch, g) = Geometry::of(xl, wl, self.padding, bias, 4, self.name())?;
        let x = contiguous_f32(xs, xl, self.name())?;
        let weight = match ws {
            CpuStorage::BF16(_) => Filters::Bf16(contiguous_values(ws, wl, self.name())?),
            _ => Filters::F32(contiguous_f32(ws, wl, self.name())?),
        };
        let outputs = (g.out_h, g.out_w);
        let fused_tiles = self.limits.fused_tiles;
        let out = if fused::takes(g.tiles_h * g.tiles_w, fused_tiles) {
            convolve_in_groups(&g, batch, x, weight, (bias, relu), fused_tiles)
        } else if at_once(batch, (g.c_in, g.c_out), outputs, self.limits) {
            let filter_values = Some(self.limits.filter_values);
            convolve_batch(&g, batch, x, weight, (bias, relu), filter_values)
        } else {
            self.convolve_by_bands(&g, batch, x, weight)
        };
        Ok((
            CpuStorage::F32(out),
            Shape::from((batch, g.c_out, g.out_h, g.out_w)),
        ))
    }
}

impl Winograd4 {
    /// The batch image by image, in bands of tile rows (for maps too large to transform whole
    /// at once), with every filter transformed once, whole.
    fn convolve_by_bands(
        &self,
        g: &Geometry,
        batch: usize,
        x: &[f32],
        weight: Filters<'_>,
    ) -> Vec<f32> {
        let (bias, relu) = (self.bias.as_deref(), self.relu);
        let u = transform_filters(weight, g.c_out, g.c_in, 0..6);
        let rows_per_band = g.rows_per_band(self.limits.band_values, XI);
        let band_tiles = rows_per_band * g.tiles_w;
        let (grid_h, grid_w) = g.band_grid_4x4(rows_per_band);
        let lens = [
            g.c_in * grid_h * grid_w,
            g.c_in * XI * band_tiles,
            g.c_out * XI * band_tiles,
        ];
        // SAFETY: `convolve_band` writes every channel's output rows of its tile rows whole:
        // `transform_outputs` writes the four rows and four columns of each tile that fall
        // inside the output, for every tile of the row.
        #[allow(unsafe_code)]
        unsafe {
            by_bands(
                g,
                batch,
                x,
                rows_per_band,
                lens,
                |image, rows, out, buffers| {
                    convolve_band(g, image, &u, (bias, relu), rows, out, buffers)
                },
            )
        }
    }
}

/// The batch in groups of images of up to `fused_tiles` tiles (one image at least), each group
/// at once with the fused products ([`convolve_batch`]).
fn convolve_in_groups(
    g: &Geometry,
    batch: usize,
    x: &[f32],
    weight: Filters<'_>,
    finish: (Option<&[f32]>, bool),
    fused_tiles: usize,
) -> Vec<f32> {
    let per_group = (fused_tiles / (g.tiles_h * g.tiles_w)).max(1);
    if per_group >= batch {
        return convolve_batch(g, batch, x, weight, finish, None);
    }
    let (in_image, out_image) = (g.c_in * g.h * g.w, g.c_out * g.out_h * g.out_w);
    let mut out = Vec::with_capacity(batch * out_image);
    for images in x.chunks(per_group * in_image) {
        let group = images.len() / in_image;
        out.extend(convolve_batch(g, group, images, weight, finish, None));
    }
    out
}

/// The whole batch at once, its images' tiles side by side in each product (`M_ξ = U_ξ · V_ξ`
/// over `batch × tiles` columns: each `U_ξ` is read once, not once per image, and the
/// products are wider), for maps whose transformed tiles fit one band. Without
/// `filter_values`, the filters are transformed inside the products, a cached block at a time
/// ([`fused`]; the caller checked the CPU). With it, they are transformed a group of `U`'s rows
/// at a time, each group multiplied by `gemm` before the next is made, so that no more than
/// `filter_values` of them exist at once (at least one row: the UNet's 1 280 → 1 280 would
/// take 236 MB whole, 39 MB a row).
fn convolve_batch(
    g: &Geometry,
    batch: usize,
    x: &[f32],
    weight: Filters<'_>,
    (bias, relu): (Option<&[f32]>, bool),
    filter_values: Option<usize>,
) -> Vec<f32> {
    let image_tiles = g.tiles_h * g.tiles_w;
    let tiles = batch * image_tiles;
    let (grid_h, grid_w) = g.band_grid_4x4(g.tiles_h);
    let lens = [
        g.c_in * grid_h * grid_w,
        g.c_in * XI * tiles,
        g.c_out * XI * tiles,
    ];
    let (in_image, out_image) = (g.c_in * g.h * g.w, g.c_out * g.out_h * g.out_w);
    let mut out = unfilled(batch * out_image);
    with_buffers(lens, |buffers| {
        let v = &mut buffers.v[..lens[1]];
        for (b, image) in x.chunks_exact(in_image).enumerate() {
            let v_b = &mut v[b * image_tiles..];
            transform_band_inputs(g, image, 0..g.tiles_h, &mut buffers.grid, v_b, tiles);
        }
        let m = &mut buffers.m[..lens[2]];
        if let Some(filter_values) = filter_values {
            let rows_per_group = (filter_values / (g.c_in * 6 * g.c_out)).clamp(1, 6);
            for first in (0..6).step_by(rows_per_group) {
                let rows = first..(first + rows_per_group).min(6);
                let u = transform_filters(weight, g.c_out, g.c_in, rows.clone());
                multiply_positions(g, &u, v, m, tiles, XI, 6 * rows.start..6 * rows.end);
            }
        } else {
            fused::multiply(g, weight, v, m, tiles);
        }
        for (b, out_b) in out.chunks_mut(out_image).enumerate() {
            let m_b = &m[b * image_tiles..];
            transform_band_outputs(g, m_b, (bias, relu), 0..g.tiles_h, out_b, tiles);
        }
    });
    // SAFETY: every image's every channel plane was written whole by `transform_outputs` over
    // all its tile rows (the four rows and columns of each tile inside the output).
    #[allow(unsafe_code)]
    unsafe {
        filled(out)
    }
}

/// `U = G g Gᵀ` for every filter, the rows `rows` of each 6×6 `U` (positions `6·rows.start ..
/// 6·rows.end`), as `[c_in, 6·rows.len(), c_out]` (see `winograd::transform_filters` for why
/// this order), from f32 or bf16 weights `[c_out, c_in, 3, 3]` (bf16 ones are widened as they
/// are read: no f32 copy of them is made). [`FILTER_INPUTS`] input channels a task.
#[allow(unsafe_code)]
fn transform_filters(
    weight: Filters<'_>,
    c_out: usize,
    c_in: usize,
    rows: std::ops::Range<usize>,
) -> Vec<f32> {
    let positions = 6 * rows.len();
    let mut u = unfilled(c_in * positions * c_out);
    u.par_chunks_mut(FILTER_INPUTS * positions * c_out)
        .enumerate()
        .for_each(|(block, u_block)| {
            let inputs = block * FILTER_INPUTS..(block * FILTER_INPUTS + FILTER_INPUTS).min(c_in);
            transform_filter_block(weight, c_out, c_in, inputs, rows.clone(), u_block)
        });
    // SAFETY: each block's task wrote, for each of its input channels, the rows' positions of
    // its pair with every output: every chunk of output channels, `n` lanes of each position.
    unsafe { filled(u) }
}

/// Input channels whose filters one task of [`transform_filters`] transforms: a chunk of
/// output channels reads their taps as one long run per output channel (`9 · FILTER_INPUTS`
/// values, which the CPU's prefetcher follows) instead of nine values `9 · c_in` apart per
/// filter.
const FILTER_INPUTS: usize = 128;

/// Input channels whose taps [`transform_filter_block`] gathers into lanes at once (9 KiB).
const GATHERED_INPUTS: usize = 16;

with_widest_vectors! {
    /// [`transform_filters`] for the input channels `inputs`: `U`'s rows `rows` of their pairs
    /// with every output channel, into `u_block` (`[inputs, 6·rows.len(), c_out]`), compiled for
    /// the widest vectors this CPU has (the default target's SSE code, reading each filter's
    /// nine taps on their own, took 57 ns a filter; BENCHMARKS.md, "round thirteen").
    fn transform_filter_block(
        weight: Filters<'_>,
        c_out: usize,
        c_in: usize,
        inputs: std::ops::Range<usize>,
        rows: std::ops::Range<usize>,
        u_block: &mut [MaybeUninit<f32>]
    ) => transform_filter_block_lanes
}

/// [`transform_filter_block`] in [`CHUNK`] lanes of output channels.
#[inline(always)]
fn transform_filter_block_lanes(
    weight: Filters<'_>,
    c_out: usize,
    c_in: usize,
    inputs: std::ops::Range<usize>,
    rows: std::ops::Range<usize>,
    u_block: &mut [MaybeUninit<f32>],
) {
    let positions = 6 * rows.len();
    // taps[9·j + k][l]: tap k of the filter from input `from + j` to output `first + l`.
    let mut taps = [[0f32; CHUNK]; 9 * GATHERED_INPUTS];
    for first in (0..c_out).step_by(CHUNK) {
        let n = CHUNK.min(c_out - first);
        for from in inputs.clone().step_by(GATHERED_INPUTS) {
            let count = GATHERED_INPUTS.min(inputs.end - from);
            let taps = &mut taps[..9 * count];
            gather_filters(weight, c_in, (first, n), from, taps);
            for (j, g) in taps.chunks_exact(9).enumerate() {
                // t = G g (6 × 3): G applied down each of the filter's three columns.
                let columns = [
                    g_times(&g[0], &g[3], &g[6]),
                    g_times(&g[1], &g[4], &g[7]),
                    g_times(&g[2], &g[5], &g[8]),
                ];
                let at_j = (from - inputs.start + j) * positions * c_out;
                for (row_at, r) in rows.clone().enumerate() {
                    // Row r of U = t Gᵀ: G applied along row r of t.
                    let u_r = g_times(&columns[0][r], &columns[1][r], &columns[2][r]);
                    for (c, value) in u_r.iter().enumerate() {
                        let at = at_j + (row_at * 6 + c) * c_out + first;
                        write_lanes(value, &mut u_block[at..at + n]);
                    }
                }
            }
        }
    }
    fence_streamed();
}

/// The first `slots.len()` lanes of `value` into `slots`. A whole cache line of slots (all
/// [`CHUNK`] lanes, 64-byte aligned: every chunk of output channels of a `U` whose `c_out` is a
/// multiple of 16) is written past the caches ([`stream_line`]); others by plain stores.
#[inline(always)]
fn write_lanes(value: &Lanes, slots: &mut [MaybeUninit<f32>]) {
    if let Ok(line) = <&mut [MaybeUninit<f32>; CHUNK]>::try_from(&mut *slots) {
        if stream_line(value, line) {
            return;
        }
        for (slot, value) in line.iter_mut().zip(value) {
            slot.write(*value);
        }
    } else {
        for (slot, value) in slots.iter_mut().zip(value) {
            slot.write(*value);
        }
    }
}

/// `value` into `line` by non-temporal stores where `line` is one 64-byte-aligned cache line
/// (returns whether it was written). `U` is tens of MB written a line at a time across
/// `6·rows` × `FILTER_INPUTS` streams; by plain stores each line is first read from memory
/// (read for ownership) and the transform waits on those reads: SD 1.5's 640 → 640 at 32×32
/// went from 56–57 to 43 ms by F(4×4), SDXL's 1 280 → 1 280 at 32×32 from 241–250 to 184–187
/// (`engine --part conv`, one thread of a Xeon with AMX). The task that streams ends with
/// [`fence_streamed`] before its work is joined.
#[inline(always)]
#[allow(unsafe_code)]
fn stream_line(value: &Lanes, line: &mut [MaybeUninit<f32>; CHUNK]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if (line.as_ptr() as usize).is_multiple_of(64) {
        use std::arch::x86_64::{_mm_loadu_ps, _mm_stream_ps};
        let at = line.as_mut_ptr().cast::<f32>();
        for quarter in 0..CHUNK / 4 {
            // SAFETY: `line` is 16 f32 slots from a 64-byte boundary, so each quarter is 16
            // aligned bytes inside it; `value` has 16 values. SSE is in every x86-64 target.
            unsafe {
                _mm_stream_ps(
                    at.add(4 * quarter),
                    _mm_loadu_ps(value.as_ptr().add(4 * quarter)),
                )
            }
        }
        return true;
    }
    false
}

/// Orders this thread's non-temporal stores ([`stream_line`]) before its later stores, so the
/// task's join publishes them to the threads that multiply `U`.
#[inline(always)]
#[allow(unsafe_code)]
fn fence_streamed() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is in every x86-64 target.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    }
}

/// The taps of the filters from the input channels `from..from + taps.len() / 9` to the output
/// channels `first..first + n` (`n` up to [`CHUNK`]) into lanes: `taps[9·j + k][l]`, tap `k` of
/// the filter from input `from + j` to output `first + l`. Lanes past `n` read lane 0's filter
/// (computed, never stored).
#[inline(always)]
fn gather_filters(
    weight: Filters<'_>,
    c_in: usize,
    (first, n): (usize, usize),
    from: usize,
    taps: &mut [Lanes],
) {
    // Where each lane's run starts.
    let starts: [usize; CHUNK] =
        std::array::from_fn(|l| ((first + if l < n { l } else { 0 }) * c_in + from) * 9);
    match weight {
        Filters::F32(values) => gather_taps(values, &starts, taps),
        Filters::Bf16(values) => gather_taps(values, &starts, taps),
    }
}

/// `taps[j][l] = values[starts[l] + j]` widened to f32: a run of taps from each lane's
/// output channel, across the lanes. With AVX-512, sixteen taps of the sixteen runs at a time
/// are loaded as sixteen vectors and transposed in registers; otherwise (and for a run's last
/// taps short of sixteen) one value at a time (the compiler made that loop of scatters or
/// gathers, several times slower on an AMD Zen 4).
#[inline(always)]
#[allow(unsafe_code)]
fn gather_taps<T: Tap>(values: &[T], starts: &[usize; CHUNK], taps: &mut [Lanes]) {
    let run = taps.len();
    assert!(starts.iter().all(|&start| start + run <= values.len()));
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        done = run / CHUNK * CHUNK;
        for (block, taps) in taps[..done].chunks_exact_mut(CHUNK).enumerate() {
            // Each inside `values`: `starts[l] + run <= values.len()`, asserted above.
            let rows = starts.map(|start| values.as_ptr().wrapping_add(start + block * CHUNK));
            // SAFETY: the CPU has AVX-512F, checked above; each row has `CHUNK` values from its
            // pointer (`block·CHUNK + CHUNK <= done <= run`).
            unsafe { transposed_taps(&rows, taps.try_into().expect("a block of CHUNK")) }
        }
    }
    for (j, tap) in taps.iter_mut().enumerate().skip(done) {
        for (lane, start) in tap.iter_mut().zip(starts) {
            // SAFETY: `start + j < start + run <= values.len()`, asserted above.
            *lane = unsafe { values.get_unchecked(start + j) }.widen();
        }
    }
}

/// A weight [`gather_taps`] reads: f32, or bf16 widened.
#[allow(unsafe_code)]
trait Tap: Copy {
    fn widen(self) -> f32;
    /// `CHUNK` values from `at`, widened to f32, as one vector.
    ///
    /// # Safety
    ///
    /// The CPU has AVX-512F, and `at` points to `CHUNK` values.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load_widened(at: *const Self) -> std::arch::x86_64::__m512;
}

#[allow(unsafe_code)]
impl Tap for f32 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load_widened(at: *const f32) -> std::arch::x86_64::__m512 {
        // SAFETY: the caller promises `CHUNK` values at `at`.
        unsafe { std::arch::x86_64::_mm512_loadu_ps(at) }
    }
}

#[allow(unsafe_code)]
impl Tap for half::bf16 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self.to_f32()
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load_widened(at: *const half::bf16) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: the caller promises `CHUNK` values (32 bytes) at `at`. A bf16 is the high
        // half of the f32 it widens to.
        unsafe {
            let halves = _mm256_loadu_si256(at.cast::<__m256i>());
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(halves)))
        }
    }
}

/// `taps[j][l] = rows[l][j]` for a block of `CHUNK` × `CHUNK` taps: the sixteen rows loaded as
/// vectors and transposed in registers (pairs, then quadruples within 128-bit lanes, then the
/// lanes twice).
///
/// # Safety
///
/// The CPU has AVX-512F, and each row points to `CHUNK` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(unsafe_code)]
unsafe fn transposed_taps<T: Tap>(rows: &[*const T; CHUNK], taps: &mut [Lanes; CHUNK]) {
    use std::arch::x86_64::*;
    // SAFETY: the caller promises the CPU and the rows' lengths; `taps` is `CHUNK` × `CHUNK`
    // f32s, stored one row of lanes per vector.
    unsafe {
        // Loops rather than `array::from_fn`: a closure is not sure to get this function's
        // target features.
        let mut r = [_mm512_setzero_ps(); CHUNK];
        for (l, row) in r.iter_mut().enumerate() {
            *row = T::load_widened(rows[l]);
        }
        // Within each 128-bit lane: pairs of rows interleaved, then four rows' values.
        let mut t = [_mm512_setzero_ps(); CHUNK];
        for (i, t) in t.iter_mut().enumerate() {
            let (a, b) = (r[2 * (i / 2)], r[2 * (i / 2) + 1]);
            *t = if i % 2 == 0 {
                _mm512_unpacklo_ps(a, b)
            } else {
                _mm512_unpackhi_ps(a, b)
            };
        }
        // q[4g + k]: rows 4g..4g+4, value k of each 128-bit lane.
        let mut q = [_mm512_setzero_ps(); CHUNK];
        for (i, q) in q.iter_mut().enumerate() {
            let (group, k) = (i / 4, i % 4);
            let (a, b) = (t[4 * group + k / 2], t[4 * group + 2 + k / 2]);
            *q = if k % 2 == 0 {
                _mm512_shuffle_ps::<0x44>(a, b)
            } else {
                _mm512_shuffle_ps::<0xEE>(a, b)
            };
        }
        // The 128-bit lanes: rows 0..8's lanes 0 and 2 (or 1 and 3), then with rows 8..16's.
        let mut h = [_mm512_setzero_ps(); CHUNK];
        for (i, h) in h.iter_mut().enumerate() {
            let (half, odd, k) = (i / 8, (i / 4) % 2, i % 4);
            let (a, b) = (q[8 * half + k], q[8 * half + 4 + k]);
            *h = if odd == 0 {
                _mm512_shuffle_f32x4::<0x88>(a, b)
            } else {
                _mm512_shuffle_f32x4::<0xDD>(a, b)
            };
        }
        for (j, tap) in taps.iter_mut().enumerate() {
            let (high, k) = (j / 8, j % 8);
            let (a, b) = (h[k], h[8 + k]);
            let column = if high == 0 {
                _mm512_shuffle_f32x4::<0x88>(a, b)
            } else {
                _mm512_shuffle_f32x4::<0xDD>(a, b)
            };
            _mm512_storeu_ps(tap.as_mut_ptr(), column);
        }
    }
}

/// `G (g0, g1, g2)ᵀ` in lanes, for F(4×4, 3×3)'s
/// `G = [[1/4, 0, 0], [-1/6, -1/6, -1/6], [-1/6, 1/6, -1/6], [1/24, 1/12, 1/6], [1/24, -1/12,
/// 1/6], [0, 0, 1]]`, without its zeros' products.
#[inline(always)]
fn g_times(g0: &Lanes, g1: &Lanes, g2: &Lanes) -> [Lanes; 6] {
    let mut t = [[0f32; CHUNK]; 6];
    for l in 0..CHUNK {
        let outer = g0[l] + g2[l];
        let even = g0[l] * (1.0 / 24.0) + g2[l] * (1.0 / 6.0);
        t[0][l] = g0[l] * 0.25;
        t[1][l] = (outer + g1[l]) * (-1.0 / 6.0);
        t[2][l] = (outer - g1[l]) * (-1.0 / 6.0);
        t[3][l] = even + g1[l] * (1.0 / 12.0);
        t[4][l] = even - g1[l] * (1.0 / 12.0);
        t[5][l] = g2[l];
    }
    t
}

/// A convolution's weights as [`transform_filters`] reads them.
#[derive(Clone, Copy)]
enum Filters<'a> {
    F32(&'a [f32]),
    Bf16(&'a [half::bf16]),
}

/// The band's padded rows, each stored as its four column phases: grid column `c` (of the
/// padded image) at `phase (c % 4)`, index `c / 4`.
fn pad_band(g: &Geometry, image: &[f32], rows: std::ops::Range<usize>, grid: &mut [f32]) {
    let (grid_h, grid_w) = g.band_grid_4x4(rows.len());
    let phase_len = g.phase_len();
    grid[..g.c_in * grid_h * grid_w]
        .par_chunks_mut(grid_h * grid_w)
        .zip(image.par_chunks(g.h * g.w))
        .for_each(|(grid, plane)| {
            for (i, line) in grid.chunks_exact_mut(grid_w).enumerate() {
                line.fill(0.0);
                let Some(y) = (4 * rows.start + i).checked_sub(g.top) else {
                    continue;
                };
                let Some(row) = plane.chunks_exact(g.w).nth(y) else {
                    continue;
                };
                for (x, value) in row.iter().enumerate() {
                    let column = x + g.left;
                    line[(column % 4) * phase_len + column / 4] = *value;
                }
            }
        });
}

/// Output tile rows `rows` of one image.
fn convolve_band(
    g: &Geometry,
    image: &[f32],
    u: &[f32],
    finish: (Option<&[f32]>, bool),
    rows: std::ops::Range<usize>,
    out: &mut [MaybeUninit<f32>],
    buffers: &mut Buffers,
) {
    let tiles = rows.len() * g.tiles_w;
    let v = &mut buffers.v[..g.c_in * XI * tiles];
    transform_band_inputs(g, image, rows.clone(), &mut buffers.grid, v, tiles);
    let m = &mut buffers.m[..XI * g.c_out * tiles];
    multiply_positions(g, u, v, m, tiles, XI, 0..XI);
    transform_band_outputs(g, m, finish, rows, out, tiles);
}

/// `V` of one image's tile rows `rows`, padded through `grid`, into `v` (`[c_in, 36, tiles]`,
/// each position's run starting at its first tile: an image of a batch at once passes `v` from
/// its own first tile, `tiles` the batch's).
fn transform_band_inputs(
    g: &Geometry,
    image: &[f32],
    rows: std::ops::Range<usize>,
    grid: &mut [f32],
    v: &mut [f32],
    tiles: usize,
) {
    pad_band(g, image, rows.clone(), grid);
    let (grid_h, grid_w) = g.band_grid_4x4(rows.len());
    v.par_chunks_mut(XI * tiles)
        .zip(grid.par_chunks(grid_h * grid_w))
        .for_each(|(v_c, grid)| transform_inputs(g, grid, rows.len(), v_c, tiles));
}

/// One image's output rows of tile rows `rows` from its products `m` (`[36, c_out, tiles]`, from
/// the image's first tile, as [`transform_band_inputs`]), each channel's bias added and ReLU
/// applied with `relu`.
fn transform_band_outputs(
    g: &Geometry,
    m: &[f32],
    (bias, relu): (Option<&[f32]>, bool),
    rows: std::ops::Range<usize>,
    out: &mut [MaybeUninit<f32>],
    tiles: usize,
) {
    out.par_chunks_mut(g.out_h * g.out_w)
        .enumerate()
        .for_each(|(c, out_c)| {
            let bias_c = bias.map_or(0.0, |b| b[c]);
            let finish = Finish { bias: bias_c, relu };
            transform_outputs(g, m, c, finish, rows.clone(), out_c, tiles)
        });
}

/// `Bᵀ` applied to six rows (or columns) of lanes.
#[inline(always)]
fn b_transpose(d: &[Lanes; 6]) -> [Lanes; 6] {
    let f = |k: fn(usize, &[Lanes; 6]) -> f32| -> Lanes { std::array::from_fn(|i| k(i, d)) };
    [
        f(|i, d| 4.0 * d[0][i] - 5.0 * d[2][i] + d[4][i]),
        f(|i, d| -4.0 * (d[1][i] + d[2][i]) + d[3][i] + d[4][i]),
        f(|i, d| 4.0 * (d[1][i] - d[2][i]) - d[3][i] + d[4][i]),
        f(|i, d| -2.0 * (d[1][i] - d[3][i]) - d[2][i] + d[4][i]),
        f(|i, d| 2.0 * (d[1][i] - d[3][i]) - d[2][i] + d[4][i]),
        f(|i, d| 4.0 * d[1][i] - 5.0 * d[3][i] + d[5][i]),
    ]
}

/// `Aᵀ` applied to six rows (or columns) of lanes.
#[inline(always)]
fn a_transpose(m: &[Lanes; 6]) -> [Lanes; 4] {
    let f = |k: fn(usize, &[Lanes; 6]) -> f32| -> Lanes { std::array::from_fn(|i| k(i, m)) };
    [
        f(|i, m| m[0][i] + m[1][i] + m[2][i] + m[3][i] + m[4][i]),
        f(|i, m| m[1][i] - m[2][i] + 2.0 * (m[3][i] - m[4][i])),
        f(|i, m| m[1][i] + m[2][i] + 4.0 * (m[3][i] + m[4][i])),
        f(|i, m| m[1][i] - m[2][i] + 8.0 * (m[3][i] - m[4][i]) + m[5][i]),
    ]
}

with_widest_vectors! {
    /// `V = Bᵀ d B` for each 6×6 input tile of one channel's band grid, into `v[ξ·tiles + t]`,
    /// compiled for the widest vectors this CPU has.
    fn transform_inputs(
        g: &Geometry,
        grid: &[f32],
        tile_rows: usize,
        v: &mut [f32],
        tiles: usize
    ) => transform_inputs_lanes
}

/// [`transform_inputs`] in [`CHUNK`] lanes.
#[inline(always)]
fn transform_inputs_lanes(
    g: &Geometry,
    grid: &[f32],
    tile_rows: usize,
    v: &mut [f32],
    tiles: usize,
) {
    let (_, grid_w) = g.band_grid_4x4(tile_rows);
    let phase_len = g.phase_len();
    for r in 0..tile_rows {
        for first in (0..g.tiles_w).step_by(CHUNK) {
            let n = CHUNK.min(g.tiles_w - first);
            // d[row][col]: column `col` of the chunk's tiles in tile row `row`, then Bᵀ over
            // the rows: t[k][col].
            let mut columns = [[[0f32; CHUNK]; 6]; 6];
            for (col, column) in columns.iter_mut().enumerate() {
                let mut d = [[0f32; CHUNK]; 6];
                for (row, d_row) in d.iter_mut().enumerate() {
                    let line = &grid[(4 * r + row) * grid_w..][..grid_w];
                    load(d_row, line, (col % 4) * phase_len + first + col / 4, n);
                }
                *column = b_transpose(&d);
            }
            // V = t B: Bᵀ over the columns of each transformed row k.
            let at = r * g.tiles_w + first;
            for k in 0..6 {
                let row: [Lanes; 6] = std::array::from_fn(|col| columns[col][k]);
                for (j, value) in b_transpose(&row).iter().enumerate() {
                    store(value, &mut v[(k * 6 + j) * tiles + at..], n);
                }
            }
        }
    }
}

/// What an output channel's values get as they are written: its bias, then ReLU with `relu`.
#[derive(Clone, Copy)]
struct Finish {
    bias: f32,
    relu: bool,
}

with_widest_vectors! {
    /// `Y = Aᵀ M A + bias` (then ReLU, as `finish` says) for each tile of output channel `c`
    /// in tile rows `rows`, into that channel's output plane (the rows and columns past the
    /// output's edge dropped), compiled for the widest vectors this CPU has.
    fn transform_outputs(
        g: &Geometry,
        m: &[f32],
        c: usize,
        finish: Finish,
        rows: std::ops::Range<usize>,
        out: &mut [MaybeUninit<f32>],
        tiles: usize
    ) => transform_outputs_lanes
}

/// [`transform_outputs`] in [`CHUNK`] lanes.
#[inline(always)]
fn transform_outputs_lanes(
    g: &Geometry,
    m: &[f32],
    c: usize,
    Finish { bias: bias_c, relu }: Finish,
    rows: std::ops::Range<usize>,
    out: &mut [MaybeUninit<f32>],
    tiles: usize,
) {
    for (r, ty) in rows.enumerate() {
        for first in (0..g.tiles_w).step_by(CHUNK) {
            let n = CHUNK.min(g.tiles_w - first);
            let at = r * g.tiles_w + first;
            // Aᵀ over the rows of M, for each of its six columns.
            let mut columns = [[[0f32; CHUNK]; 4]; 6];
            for (j, column) in columns.iter_mut().enumerate() {
                let mut e = [[0f32; CHUNK]; 6];
                for (k, e_k) in e.iter_mut().enumerate() {
                    load(e_k, m, ((k * 6 + j) * g.c_out + c) * tiles + at, n);
                }
                *column = a_transpose(&e);
            }
            let rows: [[Lanes; 6]; 4] =
                std::array::from_fn(|dy| std::array::from_fn(|j| columns[j][dy]));
            for (dy, row) in rows.iter().enumerate() {
                let y = 4 * ty + dy;
                if y >= g.out_h {
                    continue;
                }
                let values = a_transpose(row);
                let line = &mut out[y * g.out_w..(y + 1) * g.out_w];
                for i in 0..n {
                    let x = 4 * (first + i);
                    for (dx, value) in values.iter().enumerate() {
                        if x + dx < g.out_w {
                            let y = value[i] + bias_c;
                            line[x + dx].write(if relu { y.max(0.0) } else { y });
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{max_abs, max_difference};
    use super::*;
    use candle_core::DType;

    fn random(shape: &[usize], seed: u64) -> Tensor {
        super::super::test_support::random(shape, seed, 1.0)
    }

    #[test]
    fn sdxl_batches_whose_filters_pass_the_bound_go_at_once_up_to_five_bands() {
        // SDXL at 1 024², batch 2: 1 920 → 640 at 64×64 is 35 Mi values of tiles (five bands'
        // buffers hold 40 Mi); 2 560 → 640 there would be 47 Mi, and 960 → 320 at 128×128,
        // whose filters fit 64 MiB, goes in bands.
        assert!(takes_batch_at_once(2, (1920, 640), (64, 64)));
        assert!(takes_batch_at_once(2, (2560, 1280), (32, 32)));
        assert!(!takes_batch_at_once(2, (2560, 640), (64, 64)));
        assert!(!takes_batch_at_once(2, (960, 320), (128, 128)));
        // Small enough for one band's buffers, filters or not.
        assert!(takes_batch_at_once(2, (320, 320), (64, 64)));
    }

    #[test]
    fn equals_candles_conv2d_within_its_rounding_on_many_shapes() {
        // (batch, c_in, c_out, h, w, padding): sizes not multiples of 4 (partial tiles at the
        // edges), padding 0 and 1, bands of one tile row and of many, images smaller than a tile.
        let cases = [
            (1, 1, 1, 3, 3, 0),
            (1, 1, 1, 1, 1, 1),
            (1, 3, 4, 5, 7, 1),
            (2, 8, 16, 16, 16, 1),
            (1, 5, 3, 9, 11, 0),
            (2, 4, 6, 13, 10, 1),
            (1, 16, 32, 70, 33, 1),
            (1, 3, 5, 9, 150, 1),
            (1, 64, 32, 40, 40, 1),
            // The fused products' partial blocks: 70 inputs (two blocks of 32 and 6), 100
            // outputs (a task of 64, then 36: two vectors and four lanes), 18 tiles (12 and 6).
            (2, 70, 100, 12, 12, 1),
        ];
        for (i, &(b, c_in, c_out, h, w, p)) in cases.iter().enumerate() {
            let seed = i as u64;
            let x = random(&[b, c_in, h, w], seed);
            let weight = random(&[c_out, c_in, 3, 3], seed + 100);
            let bias = random(&[c_out], seed + 200);
            let reference = x
                .conv2d(&weight, p, 1, 1, 1)
                .unwrap()
                .broadcast_add(&bias.reshape((1, c_out, 1, 1)).unwrap())
                .unwrap();
            // The whole batch at once: with the filters transformed in the products where the
            // CPU fuses them (in groups of images where they have more tiles than 20), and with
            // `U` made whole, or a row at a time; then in bands of one tile row.
            for (band_values, filter_values, fused_tiles) in [
                (BAND_VALUES, FILTER_VALUES, fused::MAX_TILES),
                (BAND_VALUES, FILTER_VALUES, 20), // batches of 16 tiles an image in groups
                (BAND_VALUES, FILTER_VALUES, 0),
                (BAND_VALUES, 1, 0),
                (1, FILTER_VALUES, 0),
            ] {
                let padding = Padding::uniform(p);
                let bounds = Limits {
                    band_values,
                    filter_values,
                    fused_tiles,
                };
                let ours = convolve(&x, &weight, Some(&bias), padding, bounds, false).unwrap();
                assert_eq!(ours.dims(), reference.dims(), "case {i}");
                let error = max_difference(&ours, &reference) / max_abs(&reference).max(1e-6);
                assert!(
                    error < 1e-5,
                    "case {i}, bounds {bounds:?}: relative {error}"
                );
            }
            let ours = conv2d_3x3(&x, &weight, Some(&bias), p, true).unwrap();
            let relu = reference.relu().unwrap();
            let error = max_difference(&ours, &relu) / max_abs(&reference).max(1e-6);
            assert!(error < 1e-5, "case {i} with ReLU: relative {error}");
        }
    }

    #[test]
    fn bf16_weights_give_the_numbers_of_their_f32_values() {
        let x = random(&[2, 24, 13, 18], 7);
        let half = random(&[20, 24, 3, 3], 8).to_dtype(DType::BF16).unwrap();
        let wide = half.to_dtype(DType::F32).unwrap();
        let padding = Padding::uniform(1);
        let from_half = conv2d_3x3_padded(&x, &half, None, padding).unwrap();
        let from_wide = conv2d_3x3_padded(&x, &wide, None, padding).unwrap();
        assert_eq!(max_difference(&from_half, &from_wide), 0.0);
    }

    #[test]
    fn products_split_into_blocks_of_output_channels_on_many_threads() {
        // With more threads than a group's six positions, each product is split into blocks
        // of output channels (here 16 channels in blocks of 6, 6 and 4).
        let x = random(&[2, 12, 17, 14], 11);
        let weight = random(&[16, 12, 3, 3], 12);
        let reference = x.conv2d(&weight, 1, 1, 1, 1).unwrap();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(16)
            .build()
            .unwrap();
        let bounds = Limits {
            filter_values: 1,
            fused_tiles: 0,
            ..LIMITS
        };
        let ours = pool
            .install(|| convolve(&x, &weight, None, Padding::uniform(1), bounds, false))
            .unwrap();
        let error = max_difference(&ours, &reference) / max_abs(&reference);
        assert!(error < 1e-5, "relative {error}");
    }

    #[test]
    fn fused_products_give_the_same_numbers_on_any_count_of_threads() {
        // One block of 16 outputs and 40 tiles: on 16 threads the tiles go in four runs, each
        // task making its own block of `U`; on one thread, in one.
        let x = random(&[2, 12, 17, 14], 13);
        let weight = random(&[16, 12, 3, 3], 14);
        let reference = x.conv2d(&weight, 1, 1, 1, 1).unwrap();
        let on = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| convolve(&x, &weight, None, Padding::uniform(1), LIMITS, false))
                .unwrap()
        };
        let (alone, many) = (on(1), on(16));
        let error = max_difference(&many, &reference) / max_abs(&reference);
        assert!(error < 1e-5, "relative {error}");
        assert_eq!(max_difference(&alone, &many), 0.0);
    }

    /// A cache line of `U`, aligned as one.
    #[derive(Clone, Copy)]
    #[repr(C, align(64))]
    struct Line([MaybeUninit<f32>; CHUNK]);

    #[test]
    fn filters_streamed_past_the_caches_are_the_ones_stored_plainly() {
        // 32 outputs: two whole lines per position, streamed where `U` starts on a line, by
        // plain stores where it starts a value later (every line then straddles two).
        let (c_out, c_in, rows) = (32, 20, 1..4usize);
        let len = c_in * 6 * rows.len() * c_out;
        let weight = random(&[c_out, c_in, 3, 3], 21).flatten_all().unwrap();
        let weight = weight.to_vec1::<f32>().unwrap();
        let mut lines = vec![Line([MaybeUninit::uninit(); CHUNK]); len / CHUNK + 1];
        // SAFETY: `lines` is `len + CHUNK` contiguous f32 slots (`Line` has no padding).
        #[allow(unsafe_code)]
        let slots = unsafe {
            std::slice::from_raw_parts_mut(
                lines.as_mut_ptr().cast::<MaybeUninit<f32>>(),
                len + CHUNK,
            )
        };
        let transform = |u: &mut [MaybeUninit<f32>]| {
            let filters = Filters::F32(&weight);
            transform_filter_block(filters, c_out, c_in, 0..c_in, rows.clone(), u);
            // SAFETY: the transform writes all `len` values of its block.
            #[allow(unsafe_code)]
            u.iter()
                .map(|value| unsafe { value.assume_init() })
                .collect::<Vec<f32>>()
        };
        assert!((slots.as_ptr() as usize).is_multiple_of(64));
        let streamed = transform(&mut slots[..len]);
        let stored = transform(&mut slots[1..len + 1]);
        // Whether a convolution's `U` streams depends on where its allocator put it; here both
        // ways run, and the tests above check the numbers against candle's.
        assert_eq!(streamed, stored);
    }

    #[test]
    fn a_wrong_filter_transform_would_be_seen() {
        // The same check with the kernel flipped must fail: the test can see a wiring error.
        let x = random(&[1, 8, 20, 20], 1);
        let weight = random(&[4, 8, 3, 3], 2);
        let flipped = weight.flip(&[2, 3]).unwrap();
        let reference = x.conv2d(&weight, 1, 1, 1, 1).unwrap();
        let ours = conv2d_3x3(&x, &flipped, None, 1, false).unwrap();
        let error = max_difference(&ours, &reference) / max_abs(&reference);
        assert!(error > 0.1, "{error}");
    }
}
