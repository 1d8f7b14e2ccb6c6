//! 3×3 convolution with stride 1 by Winograd's minimal filtering, F(2×2, 3×3), on the CPU.
//!
//! Each 2×2 block of outputs needs 16 multiplications per input channel instead of 36: the
//! 4×4 input tile `d` and the 3×3 filter `g` are transformed (`V = Bᵀ d B`, `U = G g Gᵀ`),
//! multiplied element by element and summed over input channels — for each of the 16
//! positions `ξ` of the tile that sum is one matrix product `M_ξ = U_ξ · V_ξ`
//! (`[c_out, c_in] · [c_in, tiles]`) — and transformed back (`Y = Aᵀ M A`). The matrix products
//! do 2.25 × fewer multiply-adds than the direct convolution; the transforms are a few adds per
//! value. F(2×2, 3×3) keeps f32 rounding within a few ulp of the direct sum (the larger
//! F(4×4, 3×3) does not).
//!
//! The image is cut into bands of tile rows so the transformed tiles stay a few MiB; in each
//! band the input transform runs in parallel over input channels, the 16 products use every
//! thread, and the output transform runs in parallel over output channels.
//!
//! The diffusion engine takes it for maps from 16×16 to 32×32 only on CPUs where it was
//! measured faster than im2col (`nn::f2_beats_im2col`); its band helpers serve
//! [`super::winograd4`] everywhere.

use super::{contiguous_f32, filled, unfilled};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::cell::RefCell;
use std::mem::MaybeUninit;

/// Values in each of a band's buffers (its transformed inputs and its products): a band is as
/// many whole rows of tiles of one image as fit, so the buffers stay 32 MiB at most whatever
/// the image's size.
const BAND_VALUES: usize = 8 << 20;

/// `conv2d(x, weight) + bias` for a 3×3 `weight` with stride 1, dilation 1, one group and
/// `padding` zeros on each side, f32 on the CPU: `x` `[batch, c_in, h, w]`, `weight`
/// `[c_out, c_in, 3, 3]`, `bias` `[c_out]` (added as the outputs are written, not in a pass of
/// its own).
pub fn conv2d_3x3(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
) -> Result<Tensor> {
    conv2d_3x3_padded(x, weight, bias, Padding::uniform(padding))
}

/// [`conv2d_3x3`] with its own padding above and below: a band of rows of a larger image pads
/// only at the image's edges, and reads its neighbours' rows instead (`vae::banded`).
pub(crate) fn conv2d_3x3_padded(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    padding: Padding,
) -> Result<Tensor> {
    convolve(x, weight, bias, padding, BAND_VALUES)
}

fn convolve(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    padding: Padding,
    band_values: usize,
) -> Result<Tensor> {
    let (x, weight, bias) = super::conv_operands(x, weight, bias)?;
    x.apply_op2_no_bwd(
        &weight,
        &Winograd {
            padding,
            bias,
            band_values,
        },
    )
}

/// Zeros added around the input of a convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Padding {
    pub top: usize,
    pub bottom: usize,
    /// On the left and on the right.
    pub sides: usize,
}

impl Padding {
    pub(crate) fn uniform(p: usize) -> Padding {
        Padding {
            top: p,
            bottom: p,
            sides: p,
        }
    }
}

struct Winograd {
    padding: Padding,
    bias: Option<Vec<f32>>,
    /// [`BAND_VALUES`], smaller in the tests.
    band_values: usize,
}

/// The sizes of one convolution.
#[derive(Clone, Copy)]
pub(super) struct Geometry {
    pub(super) c_in: usize,
    pub(super) c_out: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    /// Zero rows above the image and zero columns left of it.
    pub(super) top: usize,
    pub(super) left: usize,
    pub(super) out_h: usize,
    pub(super) out_w: usize,
    pub(super) tiles_h: usize,
    pub(super) tiles_w: usize,
}

impl Geometry {
    /// The sizes of a 3×3, stride-1 convolution of `xl` by `wl` with `padding`, in square
    /// output tiles of `tile` pixels, and its batch; or why the shapes do not fit.
    pub(super) fn of(
        xl: &Layout,
        wl: &Layout,
        padding: Padding,
        bias: Option<&[f32]>,
        tile: usize,
        op: &str,
    ) -> Result<(usize, Geometry)> {
        let (batch, c_in, h, w) = xl.shape().dims4()?;
        let (c_out, w_c_in, k_h, k_w) = wl.shape().dims4()?;
        let p = padding;
        let (padded_h, padded_w) = (h + p.top + p.bottom, w + 2 * p.sides);
        let bias_fits = bias.is_none_or(|b| b.len() == c_out);
        if w_c_in != c_in || (k_h, k_w) != (3, 3) || padded_h < 3 || padded_w < 3 || !bias_fits {
            candle_core::bail!(
                "{op}: input {:?}, weight {:?}, padding {p:?} do not fit",
                xl.shape(),
                wl.shape()
            );
        }
        let (out_h, out_w) = (padded_h - 2, padded_w - 2);
        let geometry = Geometry {
            c_in,
            c_out,
            h,
            w,
            top: p.top,
            left: p.sides,
            out_h,
            out_w,
            tiles_h: out_h.div_ceil(tile),
            tiles_w: out_w.div_ceil(tile),
        };
        Ok((batch, geometry))
    }

    /// Rows of tiles per band: as many as keep a buffer of `positions` values per tile and
    /// channel within `band_values`.
    pub(super) fn rows_per_band(&self, band_values: usize, positions: usize) -> usize {
        (band_values / (positions * self.c_in.max(self.c_out) * self.tiles_w))
            .clamp(1, self.tiles_h)
    }
}

/// The whole output of a batch (`[batch, c_out, out_h, out_w]`), made band of tile rows by band:
/// `band(image, rows, out, buffers)` writes those rows of one image's output, with the calling
/// thread's buffers first grown to `lens` (grid, transformed tiles, products).
///
/// # Safety
///
/// `band` writes every value of the output rows that its tile rows cover (those inside the
/// output), in every channel of the image's output it is given: the output is returned as
/// written values.
#[allow(unsafe_code)]
pub(super) unsafe fn by_bands(
    g: &Geometry,
    batch: usize,
    x: &[f32],
    rows_per_band: usize,
    lens: [usize; 3],
    band: impl Fn(&[f32], std::ops::Range<usize>, &mut [MaybeUninit<f32>], &mut Buffers),
) -> Vec<f32> {
    let (in_image, out_image) = (g.c_in * g.h * g.w, g.c_out * g.out_h * g.out_w);
    // Written whole: the bands of tile rows cover every output row, each row in full.
    let mut out = unfilled(batch * out_image);
    with_buffers(lens, |buffers| {
        for (b, out_b) in out.chunks_mut(out_image).enumerate() {
            let image = &x[b * in_image..(b + 1) * in_image];
            let mut first = 0;
            while first < g.tiles_h {
                let rows = first..(first + rows_per_band).min(g.tiles_h);
                band(image, rows.clone(), out_b, buffers);
                first = rows.end;
            }
        }
    });
    // SAFETY: the bands cover tile rows `0..tiles_h`, whose output rows cover `0..out_h`, of
    // every image, and the caller promises each band writes its rows whole.
    unsafe { filled(out) }
}

/// `f` with the calling thread's buffers, grown to `lens` (grid, transformed tiles, products).
pub(super) fn with_buffers<T>(lens: [usize; 3], f: impl FnOnce(&mut Buffers) -> T) -> T {
    BUFFERS.with(|buffers| {
        let buffers = &mut *buffers.borrow_mut();
        buffers.grid.resize(lens[0], 0.0);
        buffers.v.resize(lens[1], 0.0);
        buffers.m.resize(lens[2], 0.0);
        f(buffers)
    })
}

impl CustomOp2 for Winograd {
    fn name(&self) -> &'static str {
        "conv2d-3x3-winograd"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let bias = self.bias.as_deref();
        let (batch, g) = Geometry::of(xl, wl, self.padding, bias, 2, self.name())?;
        let (x, weight) = (
            contiguous_f32(xs, xl, self.name())?,
            contiguous_f32(ws, wl, self.name())?,
        );
        let u = transform_filters(weight, g.c_out, g.c_in);
        let rows_per_band = g.rows_per_band(self.band_values, 16);
        let band_tiles = rows_per_band * g.tiles_w;
        let (grid_h, grid_w) = g.band_grid(rows_per_band);
        let lens = [
            g.c_in * grid_h * grid_w,
            g.c_in * 16 * band_tiles,
            g.c_out * 16 * band_tiles,
        ];
        // SAFETY: `convolve_band` writes every channel's output rows of its tile rows whole:
        // `transform_outputs` writes both rows of each tile (the second only inside the output)
        // and both columns of every tile of the row (the second only inside the output).
        #[allow(unsafe_code)]
        let out = unsafe {
            by_bands(
                &g,
                batch,
                x,
                rows_per_band,
                lens,
                |image, rows, out, buffers| convolve_band(&g, image, &u, bias, rows, out, buffers),
            )
        };
        Ok((
            CpuStorage::F32(out),
            Shape::from((batch, g.c_out, g.out_h, g.out_w)),
        ))
    }
}

thread_local! {
    /// The calling thread's band buffers, kept from convolution to convolution: each band
    /// writes every value it reads back (the grid's padding included), so they need no
    /// clearing, and zeroing fresh ones was a pass over up to 96 MiB per convolution.
    static BUFFERS: RefCell<Buffers> = RefCell::new(Buffers::default());
}

/// One band's padded input and transformed tiles (F(4×4, 3×3) uses them too, with 36
/// positions where this has 16).
#[derive(Default)]
pub(super) struct Buffers {
    /// `[c_in, grid rows, grid columns]`: see [`pad_band`].
    pub(super) grid: Vec<f32>,
    /// `[c_in, 16, tiles]`
    pub(super) v: Vec<f32>,
    /// `[16, c_out, tiles]`
    pub(super) m: Vec<f32>,
}

/// The rows of the padded image that tile rows `rows` read, into `grid` (`[c_in, 2·rows + 2,
/// grid_w]`): the padding's zeros above and left of the image and enough below and right of it
/// for whole tiles, so tiles are read without bounds checks. Each row is stored deinterleaved,
/// its even columns then its odd ones (`tiles_w + 1` of each): the four columns of tile `t`
/// are then `even[t], odd[t], even[t + 1], odd[t + 1]`, so consecutive tiles read consecutive
/// values and the transforms run in vector code.
fn pad_band(g: &Geometry, image: &[f32], rows: std::ops::Range<usize>, grid: &mut [f32]) {
    let (grid_h, grid_w) = g.band_grid(rows.len());
    let half = grid_w / 2;
    grid[..g.c_in * grid_h * grid_w]
        .par_chunks_mut(grid_h * grid_w)
        .zip(image.par_chunks(g.h * g.w))
        .for_each(|(grid, plane)| {
            for (i, line) in grid.chunks_exact_mut(grid_w).enumerate() {
                line.fill(0.0);
                // Row `i` of the band's grid is row `2·first + i` of the whole padded image.
                let Some(y) = (2 * rows.start + i).checked_sub(g.top) else {
                    continue;
                };
                let Some(row) = plane.chunks_exact(g.w).nth(y) else {
                    continue;
                };
                let (even, odd) = line.split_at_mut(half);
                for (x, value) in row.iter().enumerate() {
                    let column = x + g.left;
                    let half_row = if column.is_multiple_of(2) {
                        &mut *even
                    } else {
                        &mut *odd
                    };
                    half_row[column / 2] = *value;
                }
            }
        });
}

impl Geometry {
    /// The padded grid that `tile_rows` rows of tiles read: 2 more rows and columns than the
    /// tiles cover.
    fn band_grid(&self, tile_rows: usize) -> (usize, usize) {
        (2 * tile_rows + 2, 2 * self.tiles_w + 2)
    }
}

/// `U = G g Gᵀ` for every filter, as `[c_in, 16, c_out]`: each `U_ξ` is then a column-major
/// matrix whose columns (one per input channel) are contiguous, which the matrix product
/// packs at memory speed; laid out `[c_out, c_in, 16]`, each of the 16 products gathered it
/// with a stride of 16 values, a cache line per value.
#[allow(unsafe_code)]
fn transform_filters(weight: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    // Written whole: 16 components of every (input, output) pair.
    let mut u = unfilled(c_in * 16 * c_out);
    u.par_chunks_mut(16 * c_out)
        .enumerate()
        .for_each(|(i, u_i)| {
            for o in 0..c_out {
                let g = &weight[(o * c_in + i) * 9..][..9];
                // t = G g  (4 × 3)
                let mut t = [0f32; 12];
                for col in 0..3 {
                    let (g0, g1, g2) = (g[col], g[3 + col], g[6 + col]);
                    t[col] = g0;
                    t[3 + col] = 0.5 * (g0 + g1 + g2);
                    t[6 + col] = 0.5 * (g0 - g1 + g2);
                    t[9 + col] = g2;
                }
                // U = t Gᵀ  (4 × 4), component ξ = 4·row + column into row ξ of `u_i`.
                for row in 0..4 {
                    let (t0, t1, t2) = (t[row * 3], t[row * 3 + 1], t[row * 3 + 2]);
                    let values = [t0, 0.5 * (t0 + t1 + t2), 0.5 * (t0 - t1 + t2), t2];
                    for (column, value) in values.into_iter().enumerate() {
                        u_i[(row * 4 + column) * c_out + o].write(value);
                    }
                }
            }
        });
    // SAFETY: each input channel's task wrote the 16 components of its pair with every output.
    unsafe { filled(u) }
}

/// Output tile rows `rows` of one image (`out` is that image's output).
fn convolve_band(
    g: &Geometry,
    image: &[f32],
    u: &[f32],
    bias: Option<&[f32]>,
    rows: std::ops::Range<usize>,
    out: &mut [MaybeUninit<f32>],
    buffers: &mut Buffers,
) {
    let tiles = rows.len() * g.tiles_w;
    pad_band(g, image, rows.clone(), &mut buffers.grid);
    let (grid_h, grid_w) = g.band_grid(rows.len());
    let v = &mut buffers.v[..g.c_in * 16 * tiles];
    v.par_chunks_mut(16 * tiles)
        .zip(buffers.grid.par_chunks(grid_h * grid_w))
        .for_each(|(v_c, grid)| transform_inputs(g, grid, rows.len(), v_c, tiles));
    // M_ξ = U_ξ · V_ξ, into M: [16, c_out, tiles], the 16 products in parallel.
    let m = &mut buffers.m[..16 * g.c_out * tiles];
    multiply_positions(g, u, v, m, tiles, 16, 0..16);
    let plane = g.out_h * g.out_w;
    let m = &*m;
    out.par_chunks_mut(plane)
        .enumerate()
        .for_each(|(c, out_c)| {
            let bias_c = bias.map_or(0.0, |b| b[c]);
            transform_outputs(g, m, c, bias_c, rows.clone(), out_c, tiles)
        });
}

/// `M_ξ = U_ξ · V_ξ` for the positions `xis` of a transformed tile (of `positions`: 16 for
/// F(2×2, 3×3), 36 for F(4×4, 3×3)), the products in parallel: `u` is `[c_in, xis.len(),
/// c_out]` (those positions' filters only), `v` `[c_in, positions, tiles]`, `m` `[positions,
/// c_out, tiles]`. Where there are fewer positions than threads, each product is split into
/// blocks of output channels as well.
#[allow(unsafe_code)]
pub(super) fn multiply_positions(
    g: &Geometry,
    u: &[f32],
    v: &[f32],
    m: &mut [f32],
    tiles: usize,
    positions: usize,
    xis: std::ops::Range<usize>,
) {
    let count = xis.len();
    assert!(
        xis.end <= positions
            && u.len() >= g.c_in * count * g.c_out
            && v.len() >= g.c_in * positions * tiles
            && m.len() >= positions * g.c_out * tiles,
        "buffers too short for positions {xis:?} of {positions}"
    );
    let blocks = rayon::current_num_threads().div_ceil(count.max(1));
    let block_rows = g.c_out.div_ceil(blocks).max(1);
    m[xis.start * g.c_out * tiles..xis.end * g.c_out * tiles]
        .par_chunks_mut(g.c_out * tiles)
        .enumerate()
        .for_each(|(at, m_xi)| {
            let xi = xis.start + at;
            m_xi.par_chunks_mut(block_rows * tiles)
                .enumerate()
                .for_each(|(block, m_block)| {
                    let (first, rows) = (block * block_rows, m_block.len() / tiles);
                    // SAFETY: U_ξ's rows `first..first + rows` read `rows × c_in` values at
                    // `(i·count + at)·c_out + o` of `u`; V_ξ reads `c_in × tiles` at `ξ·tiles +
                    // i·positions·tiles + t` of `v`; the block of M_ξ is `rows × tiles`: all
                    // within the lengths asserted above.
                    unsafe {
                        gemm::gemm(
                            rows,
                            tiles,
                            g.c_in,
                            m_block.as_mut_ptr(),
                            1,
                            tiles as isize,
                            false,
                            u.as_ptr().add(at * g.c_out + first),
                            (count * g.c_out) as isize,
                            1,
                            v.as_ptr().add(xi * tiles),
                            1,
                            (positions * tiles) as isize,
                            0.0,
                            1.0,
                            false,
                            false,
                            false,
                            gemm::Parallelism::None,
                        );
                    }
                });
        });
}

/// Tiles transformed together: the transforms are element-wise over them, in vector code.
pub(super) const CHUNK: usize = 16;

pub(super) type Lanes = [f32; CHUNK];

with_widest_vectors! {
    /// `V = Bᵀ d B` for each 4×4 input tile of one channel's padded band grid (`tile_rows` rows
    /// of tiles), into `v[ξ·tiles + t]`, [`CHUNK`] tiles at a time, compiled for the widest
    /// vectors this CPU has (the crate's default target gives SSE).
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
    let (_, grid_w) = g.band_grid(tile_rows);
    let half = grid_w / 2;
    for r in 0..tile_rows {
        let row = |i: usize| grid[(2 * r + i) * grid_w..][..grid_w].split_at(half);
        let lines = [row(0), row(1), row(2), row(3)];
        for first in (0..g.tiles_w).step_by(CHUNK) {
            let n = CHUNK.min(g.tiles_w - first);
            // d[row][col]: column `col` of the chunk's tiles, in row `row`.
            let mut d = [[[0f32; CHUNK]; 4]; 4];
            for (d_row, (even, odd)) in d.iter_mut().zip(&lines) {
                load(&mut d_row[0], even, first, n);
                load(&mut d_row[1], odd, first, n);
                load(&mut d_row[2], even, first + 1, n);
                load(&mut d_row[3], odd, first + 1, n);
            }
            // t = Bᵀ d (over rows), then V = t B (over columns).
            let t = [
                lanes(|c, i| d[0][c][i] - d[2][c][i]),
                lanes(|c, i| d[1][c][i] + d[2][c][i]),
                lanes(|c, i| d[2][c][i] - d[1][c][i]),
                lanes(|c, i| d[1][c][i] - d[3][c][i]),
            ];
            let at = r * g.tiles_w + first;
            for (k, t_k) in t.iter().enumerate() {
                let columns: [Lanes; 4] = [
                    std::array::from_fn(|i| t_k[0][i] - t_k[2][i]),
                    std::array::from_fn(|i| t_k[1][i] + t_k[2][i]),
                    std::array::from_fn(|i| t_k[2][i] - t_k[1][i]),
                    std::array::from_fn(|i| t_k[1][i] - t_k[3][i]),
                ];
                for (j, column) in columns.iter().enumerate() {
                    store(column, &mut v[(k * 4 + j) * tiles + at..], n);
                }
            }
        }
    }
}

/// `n` values of `src` from `at` into the first lanes of `lanes`. A whole chunk is a copy of a
/// size known when compiling, which becomes vector moves; a call to `memcpy` for each of
/// these 64-byte copies took a fifth of an ESRGAN upscale's time.
#[inline(always)]
pub(super) fn load(lanes: &mut Lanes, src: &[f32], at: usize, n: usize) {
    if n == CHUNK {
        lanes.copy_from_slice(&src[at..at + CHUNK]);
    } else {
        lanes[..n].copy_from_slice(&src[at..at + n]);
    }
}

/// The first `n` lanes into the start of `dst`, as [`load`].
#[inline(always)]
pub(super) fn store(lanes: &Lanes, dst: &mut [f32], n: usize) {
    if n == CHUNK {
        dst[..CHUNK].copy_from_slice(lanes);
    } else {
        dst[..n].copy_from_slice(&lanes[..n]);
    }
}

/// Four columns of lanes, each lane `f(column, lane)`.
#[inline(always)]
fn lanes(f: impl Fn(usize, usize) -> f32) -> [Lanes; 4] {
    std::array::from_fn(|c| std::array::from_fn(|i| f(c, i)))
}

with_widest_vectors! {
    /// `Y = Aᵀ M A + bias_c` for each tile of output channel `c` in tile rows `rows`, into that
    /// channel's output plane (the last row or column of a tile is dropped where the output is
    /// odd), [`CHUNK`] tiles at a time, compiled for the widest vectors this CPU has. `m` is
    /// `[16, c_out, tiles]`.
    fn transform_outputs(
        g: &Geometry,
        m: &[f32],
        c: usize,
        bias_c: f32,
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
    bias_c: f32,
    rows: std::ops::Range<usize>,
    out: &mut [MaybeUninit<f32>],
    tiles: usize,
) {
    for (r, ty) in rows.enumerate() {
        for first in (0..g.tiles_w).step_by(CHUNK) {
            let n = CHUNK.min(g.tiles_w - first);
            let at = r * g.tiles_w + first;
            let mut e = [[0f32; CHUNK]; 16];
            for (xi, e_xi) in e.iter_mut().enumerate() {
                load(e_xi, m, (xi * g.c_out + c) * tiles + at, n);
            }
            // t = Aᵀ M (over rows), then Y = t A (over columns).
            let t: [[Lanes; 4]; 2] = [
                std::array::from_fn(|c| {
                    std::array::from_fn(|i| e[c][i] + e[4 + c][i] + e[8 + c][i])
                }),
                std::array::from_fn(|c| {
                    std::array::from_fn(|i| e[4 + c][i] - e[8 + c][i] - e[12 + c][i])
                }),
            ];
            for (dy, t_row) in t.iter().enumerate() {
                let y = 2 * ty + dy;
                if y >= g.out_h {
                    continue;
                }
                let left: Lanes =
                    std::array::from_fn(|i| t_row[0][i] + t_row[1][i] + t_row[2][i] + bias_c);
                let right: Lanes =
                    std::array::from_fn(|i| t_row[1][i] - t_row[2][i] - t_row[3][i] + bias_c);
                let line = &mut out[y * g.out_w..(y + 1) * g.out_w];
                if n == CHUNK && 2 * (first + CHUNK) <= g.out_w {
                    // A whole chunk inside the line: interleaved without a check per value.
                    let pairs = &mut line[2 * first..2 * (first + CHUNK)];
                    for (i, pair) in pairs.chunks_exact_mut(2).enumerate() {
                        pair[0].write(left[i]);
                        pair[1].write(right[i]);
                    }
                    continue;
                }
                for i in 0..n {
                    let x = 2 * (first + i);
                    line[x].write(left[i]);
                    if x + 1 < g.out_w {
                        line[x + 1].write(right[i]);
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

    /// The largest difference, relative to the largest output.
    fn relative_difference(ours: &Tensor, reference: &Tensor) -> f32 {
        max_difference(ours, reference) / max_abs(reference).max(1e-6)
    }

    #[test]
    fn equals_candles_conv2d_on_many_shapes() {
        // (batch, c_in, c_out, h, w, padding): even and odd sizes (half tiles at the edges),
        // padding 0 and 1, one channel and many, bands of one tile row and of many, images
        // smaller than a tile.
        let cases = [
            (1, 1, 1, 3, 3, 0),
            (1, 1, 1, 1, 1, 1),
            (1, 3, 4, 5, 7, 1),
            (2, 8, 16, 16, 16, 1),
            (1, 5, 3, 9, 11, 0),
            (2, 4, 6, 12, 10, 1),
            (1, 16, 32, 70, 33, 1),
            (1, 3, 5, 9, 2100, 1),
            (2, 64, 40, 8, 8, 1),
            (1, 2, 3, 4, 4, 2),
        ];
        for (i, &(batch, c_in, c_out, h, w, p)) in cases.iter().enumerate() {
            let x = random(&[batch, c_in, h, w], i as u64);
            let weight = random(&[c_out, c_in, 3, 3], 100 + i as u64);
            let bias = random(&[c_out], 50 + i as u64);
            let candle = x
                .conv2d(&weight, p, 1, 1, 1)
                .and_then(|y| y.broadcast_add(&bias.reshape((1, c_out, 1, 1))?))
                .unwrap();
            // Whole images in one band, and bands of one row of tiles and of three.
            let one_row = 16 * c_in.max(c_out) * (w + 2 * p).div_ceil(2);
            for band_values in [BAND_VALUES, one_row, 3 * one_row + 1] {
                let padding = Padding::uniform(p);
                let ours = convolve(&x, &weight, Some(&bias), padding, band_values).unwrap();
                assert_eq!(ours.dims(), candle.dims(), "case {:?}", cases[i]);
                let off = relative_difference(&ours, &candle);
                assert!(
                    off < 1e-5,
                    "case {:?} in bands of {band_values} values: off by {off} of the largest output",
                    cases[i]
                );
            }
        }
    }

    #[test]
    fn uneven_padding_equals_padding_by_hand() {
        type Padded = fn(&Tensor, &Tensor, Option<&Tensor>, Padding) -> Result<Tensor>;
        let kernels: [(&str, Padded); 2] = [
            ("F(2×2)", conv2d_3x3_padded),
            ("F(4×4)", super::super::winograd4::conv2d_3x3_padded),
        ];
        // (h, top, bottom): a band at the top of an image (the VAE's banded decode), in its
        // middle, at its bottom, and one shorter than a tile.
        let cases = [(7, 1, 0), (6, 0, 0), (10, 0, 0), (9, 0, 1), (2, 0, 1)];
        for (name, padded) in kernels {
            for (i, &(h, top, bottom)) in cases.iter().enumerate() {
                let x = random(&[1, 5, h, 11], 200 + i as u64);
                let weight = random(&[4, 5, 3, 3], 300 + i as u64);
                let bias = random(&[4], 400 + i as u64);
                let padding = Padding {
                    top,
                    bottom,
                    sides: 1,
                };
                let ours = padded(&x, &weight, Some(&bias), padding).unwrap();
                let by_hand = x
                    .pad_with_zeros(2, top, bottom)
                    .and_then(|t| t.pad_with_zeros(3, 1, 1))
                    .and_then(|t| t.conv2d(&weight, 0, 1, 1, 1))
                    .and_then(|t| t.broadcast_add(&bias.reshape((1, 4, 1, 1))?))
                    .unwrap();
                assert_eq!(ours.dims(), by_hand.dims(), "{name} case {i}");
                let off = relative_difference(&ours, &by_hand);
                assert!(off < 1e-5, "{name} case {i}: off by {off}");
            }
        }
    }

    #[test]
    fn shapes_that_do_not_fit_are_refused() {
        let x = random(&[1, 4, 5, 5], 1);
        assert!(
            conv2d_3x3(&x, &random(&[2, 3, 3, 3], 2), None, 1).is_err(),
            "c_in"
        );
        assert!(
            conv2d_3x3(&x, &random(&[2, 4, 5, 5], 3), None, 1).is_err(),
            "not 3×3"
        );
        let weight = random(&[2, 4, 3, 3], 4);
        let bias = random(&[3], 5);
        assert!(
            conv2d_3x3(&x, &weight, Some(&bias), 1).is_err(),
            "3 biases for 2 filters"
        );
        let half = x.to_dtype(DType::F16).unwrap();
        let weight = random(&[2, 4, 3, 3], 4).to_dtype(DType::F16).unwrap();
        assert!(conv2d_3x3(&half, &weight, None, 1).is_err(), "f32 only");
    }
}
