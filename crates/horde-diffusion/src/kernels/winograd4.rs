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
//! the six columns of [`CHUNK`] consecutive tiles are six contiguous runs.

use super::winograd::{
    by_bands, load, multiply_positions, store, Buffers, Geometry, Lanes, Padding, CHUNK,
};
use super::{contiguous_f32, contiguous_values, filled, unfilled};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Values in each of a band's buffers, as in [`super::winograd`].
const BAND_VALUES: usize = 8 << 20;

/// Positions of a transformed tile.
const XI: usize = 36;

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
    convolve(x, weight, bias, padding, BAND_VALUES, relu)
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
    convolve(x, weight, bias, padding, BAND_VALUES, false)
}

fn convolve(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    padding: Padding,
    band_values: usize,
    relu: bool,
) -> Result<Tensor> {
    let (x, weight, bias) = super::conv_operands(x, weight, bias)?;
    x.apply_op2_no_bwd(
        &weight,
        &Winograd4 {
            padding,
            bias,
            band_values,
            relu,
        },
    )
}

struct Winograd4 {
    padding: Padding,
    bias: Option<Vec<f32>>,
    band_values: usize,
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
        let u = transform_filters(weight, g.c_out, g.c_in);
        let rows_per_band = g.rows_per_band(self.band_values, XI);
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
        let out = unsafe {
            by_bands(
                &g,
                batch,
                x,
                rows_per_band,
                lens,
                |image, rows, out, buffers| {
                    convolve_band(&g, image, &u, (bias, relu), rows, out, buffers)
                },
            )
        };
        Ok((
            CpuStorage::F32(out),
            Shape::from((batch, g.c_out, g.out_h, g.out_w)),
        ))
    }
}

/// `U = G g Gᵀ` for every filter, as `[c_in, 36, c_out]` (see `winograd::transform_filters`
/// for why this order), from f32 or bf16 weights `[c_out, c_in, 3, 3]` (bf16 ones are widened
/// as they are read: no f32 copy of them is made). [`CHUNK`] output channels at a time, in
/// lanes, so each component is one contiguous store (measured no faster than one filter at a
/// time with 36 scalar stores `c_out` apart: `engine --part conv`, F(4×4) at 16×16, 207.6
/// against 211.6 ms).
#[allow(unsafe_code)]
fn transform_filters(weight: Filters<'_>, c_out: usize, c_in: usize) -> Vec<f32> {
    let mut u = unfilled(c_in * XI * c_out);
    u.par_chunks_mut(XI * c_out)
        .enumerate()
        .for_each(|(i, u_i)| transform_channel_filters(weight, c_out, c_in, i, u_i));
    // SAFETY: each input channel's task wrote the 36 components of its pair with every output:
    // every chunk of output channels, `n` lanes of each component.
    unsafe { filled(u) }
}

with_widest_vectors! {
    /// [`transform_filters`] for input channel `i`: `U` of its pair with every output channel,
    /// into `u_i` (`[36, c_out]`), compiled for the widest vectors this CPU has (the default
    /// target's SSE code took 50 ns a filter).
    fn transform_channel_filters(
        weight: Filters<'_>,
        c_out: usize,
        c_in: usize,
        i: usize,
        u_i: &mut [MaybeUninit<f32>]
    ) => transform_channel_filters_lanes
}

/// [`transform_channel_filters`] in [`CHUNK`] lanes.
#[inline(always)]
fn transform_channel_filters_lanes(
    weight: Filters<'_>,
    c_out: usize,
    c_in: usize,
    i: usize,
    u_i: &mut [MaybeUninit<f32>],
) {
    const G: [[f32; 3]; 6] = [
        [0.25, 0.0, 0.0],
        [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
        [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
        [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
        [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
        [0.0, 0.0, 1.0],
    ];
    for first in (0..c_out).step_by(CHUNK) {
        let n = CHUNK.min(c_out - first);
        // g[k]: tap k of the chunk's filters (lanes past `n` are zeros, never stored).
        let g: [Lanes; 9] = std::array::from_fn(|k| {
            std::array::from_fn(|l| {
                if l < n {
                    weight.get(((first + l) * c_in + i) * 9 + k)
                } else {
                    0.0
                }
            })
        });
        // t = G g (6 × 3), then U = t Gᵀ (6 × 6), sums in the order of one filter's.
        let t: [[Lanes; 3]; 6] = std::array::from_fn(|r| {
            std::array::from_fn(|c| {
                std::array::from_fn(|l| {
                    G[r][0] * g[c][l] + G[r][1] * g[3 + c][l] + G[r][2] * g[6 + c][l]
                })
            })
        });
        for (r, t_r) in t.iter().enumerate() {
            for (c, g_c) in G.iter().enumerate() {
                let value: Lanes = std::array::from_fn(|l| {
                    t_r[0][l] * g_c[0] + t_r[1][l] * g_c[1] + t_r[2][l] * g_c[2]
                });
                let at = (r * 6 + c) * c_out + first;
                for (slot, value) in u_i[at..at + n].iter_mut().zip(value) {
                    slot.write(value);
                }
            }
        }
    }
}

/// A convolution's weights as [`transform_filters`] reads them.
#[derive(Clone, Copy)]
enum Filters<'a> {
    F32(&'a [f32]),
    Bf16(&'a [half::bf16]),
}

impl Filters<'_> {
    #[inline(always)]
    fn get(self, at: usize) -> f32 {
        match self {
            Filters::F32(values) => values[at],
            Filters::Bf16(values) => values[at].to_f32(),
        }
    }
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
    (bias, relu): (Option<&[f32]>, bool),
    rows: std::ops::Range<usize>,
    out: &mut [MaybeUninit<f32>],
    buffers: &mut Buffers,
) {
    let tiles = rows.len() * g.tiles_w;
    pad_band(g, image, rows.clone(), &mut buffers.grid);
    let (grid_h, grid_w) = g.band_grid_4x4(rows.len());
    let v = &mut buffers.v[..g.c_in * XI * tiles];
    v.par_chunks_mut(XI * tiles)
        .zip(buffers.grid.par_chunks(grid_h * grid_w))
        .for_each(|(v_c, grid)| transform_inputs(g, grid, rows.len(), v_c, tiles));
    let m = &mut buffers.m[..XI * g.c_out * tiles];
    multiply_positions(g, u, v, m, tiles, XI);
    let plane = g.out_h * g.out_w;
    let m = &*m;
    out.par_chunks_mut(plane)
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
            for band_values in [BAND_VALUES, 1] {
                let ours = convolve(
                    &x,
                    &weight,
                    Some(&bias),
                    Padding::uniform(p),
                    band_values,
                    false,
                )
                .unwrap();
                assert_eq!(ours.dims(), reference.dims(), "case {i}");
                let error = max_difference(&ours, &reference) / max_abs(&reference).max(1e-6);
                assert!(
                    error < 1e-5,
                    "case {i}, bands of {band_values}: relative {error}"
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
