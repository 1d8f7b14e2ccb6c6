//! Stride-1 convolutions in bf16 on CPUs with AVX512-BF16: the parent module's implicit GEMM,
//! its products in bf16 with f32 accumulation (`bf16_gemm`).
//!
//! A network held in bf16 widened every convolution's input and weights to f32 and narrowed
//! the output back, around an f32 product. Here the input is padded once into rows of
//! 32-bit words, one row per pair of input channels, each word the pair's two bf16 values at
//! one position of the padded grid (rows `Wp = W + 2p` wide), the batch's images one after
//! another in each row. That is the product's `B` for every tap: tap `(ky, kx)` reads the
//! same rows from offset `ky·Wp + kx`, so nothing is copied per tap. The weights, rearranged
//! tap by tap (kept from call to call, laid out as the AMX tiles read them: [`TapMatrices`]),
//! are `A` (`c_out × c_in` per tap). The taps add into one f32 accumulator `[c_out, columns]`
//! for the whole batch (one product for both images of a CFG batch, which read the weights
//! once between them); each block of sums is narrowed into the bf16 output with the bias added
//! as it leaves the tiles (`bf16_gemm::Epilogue::Conv`), its extra columns (each row's last
//! `Wp − out_w`, each image's last padded rows) dropped.
//!
//! With stride 2 (the UNet's downsamplers) the padded grid is split into its four phases
//! (even and odd rows × even and odd columns), each `⌈Hp/2⌉ × ⌈Wp/2⌉` and paired as above: tap
//! `(ky, kx)` reads phase `(ky mod 2, kx mod 2)` from offset `⌊ky/2⌋·Wp' + ⌊kx/2⌋`, so the
//! same sum of products makes the strided output, with no work on the positions it skips
//! (these convolutions were widened to f32 before: their products, and the conversions around
//! them, were 4 % of a bf16 UNet step).

use super::super::bf16_gemm::{self, amx, Epilogue, Grid, PairedB, Values, View, Words, NR};
use super::super::kept::{kept_or_made, Kept};
use super::super::winograd::Padding;
use super::super::{contiguous_values, filled, unfilled};
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use half::bf16;
use rayon::prelude::*;
use std::sync::{Arc, OnceLock};

/// A convolution's weights rearranged tap by tap for the bf16 kernel ([`TapMatrices`]).
pub(crate) type RearrangedWeights = Kept<TapMatrices>;

/// Whether [`conv2d_bf16`] takes this convolution: bf16 input and weight on the CPU, and a
/// CPU with AVX512-BF16.
pub(crate) fn takes(x: &Tensor, weight: &Tensor) -> bool {
    x.device().is_cpu()
        && x.dtype() == DType::BF16
        && weight.dtype() == DType::BF16
        && bf16_gemm::available()
}

/// `conv2d(x, weight) + bias` with stride 1 or 2, dilation 1, one group and `padding` zeros
/// on each side, in bf16 (f32 accumulation): `x` `[batch, c_in, h, w]`, `weight`
/// `[c_out, c_in, k_h, k_w]`, both bf16 (see [`takes`]); the result in bf16.
pub fn conv2d_bf16(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
    stride: usize,
) -> Result<Tensor> {
    conv2d_bf16_keeping(x, weight, bias, (Padding::uniform(padding), stride), None)
}

/// [`conv2d_bf16`] with `weight` rearranged once into `kept` (and read from it at later
/// calls) while `keep_rearranged_weights` is on. `kept` must belong to this `weight` alone.
/// `padding` may differ above and below: a band of rows of a larger map (`nn::Conv2d::
/// forward_band`) is padded only where it touches the map's edge, and the rows it reads
/// beyond its own are in `x`.
pub(crate) fn conv2d_bf16_keeping(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    (padding, stride): (Padding, usize),
    kept: Option<&RearrangedWeights>,
) -> Result<Tensor> {
    if !takes(x, weight) {
        candle_core::bail!("conv2d_bf16: bf16 on a CPU with AVX512-BF16 only");
    }
    if !matches!(stride, 1 | 2) {
        candle_core::bail!("conv2d_bf16: stride 1 or 2 only, not {stride}");
    }
    let bias = bias
        .map(|b| b.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>())
        .transpose()?;
    let kept = kept.and_then(Kept::cell);
    let op = Conv2dBf16 {
        padding,
        stride,
        bias,
        kept,
    };
    x.contiguous()?.apply_op2_no_bwd(&weight.contiguous()?, &op)
}

struct Conv2dBf16 {
    padding: Padding,
    stride: usize,
    bias: Option<Vec<f32>>,
    /// Where the rearranged weights are kept between calls, if they are.
    kept: Option<Arc<OnceLock<TapMatrices>>>,
}

/// The sizes of one convolution.
#[derive(Clone, Copy)]
struct Geometry {
    batch: usize,
    c_in: usize,
    c_out: usize,
    h: usize,
    w: usize,
    k_h: usize,
    k_w: usize,
    padding: Padding,
    stride: usize,
    /// Rows and columns of each phase of the padded grid (the grid itself at stride 1).
    phase_h: usize,
    phase_w: usize,
    out_h: usize,
    out_w: usize,
}

impl Geometry {
    fn new(x: &Layout, weight: &Layout, padding: Padding, stride: usize) -> Result<Geometry> {
        let (batch, c_in, h, w) = x.shape().dims4()?;
        let (c_out, w_c_in, k_h, k_w) = weight.shape().dims4()?;
        let (grid_h, grid_w) = (h + padding.top + padding.bottom, w + 2 * padding.sides);
        if w_c_in != c_in || grid_h < k_h || grid_w < k_w || k_h * k_w == 0 {
            candle_core::bail!(
                "conv2d_bf16: input {:?} and weight {:?} ({padding:?}) do not fit",
                x.shape(),
                weight.shape()
            );
        }
        Ok(Geometry {
            batch,
            c_in,
            c_out,
            h,
            w,
            k_h,
            k_w,
            padding,
            stride,
            phase_h: grid_h.div_ceil(stride),
            phase_w: grid_w.div_ceil(stride),
            out_h: (grid_h - k_h) / stride + 1,
            out_w: (grid_w - k_w) / stride + 1,
        })
    }

    /// Words of one image's phase (`phase_h × phase_w`): image `b`'s phase starts `b` times
    /// this far into a row, and its outputs as far into the accumulator's rows.
    fn image_words(&self) -> usize {
        self.phase_h * self.phase_w
    }

    /// Words per row of a phase of the padded input: every image's phase, and room for the
    /// last tap's strips to read past the last (into zeros that only feed dropped columns).
    fn row_words(&self) -> usize {
        self.batch * self.image_words() + self.k_w + NR
    }

    /// Columns of the accumulator: every image's phase but the last, then whole phase rows of
    /// the last image's output rows. A tap reads an image's outputs from inside that image's
    /// phase; the columns past each image's outputs (its last phase rows, each row's last
    /// columns) read into the next image's, and are dropped.
    fn columns(&self) -> usize {
        (self.batch.max(1) - 1) * self.image_words() + self.out_h * self.phase_w
    }

    /// Where the sums' columns land in the output: the positions of each image's phase,
    /// the columns that are no output position dropped.
    fn grid(&self) -> Grid {
        Grid {
            images: self.batch,
            channels: self.c_out,
            image_words: self.image_words(),
            grid_w: self.phase_w,
            out_h: self.out_h,
            out_w: self.out_w,
        }
    }

    /// The phase tap `(ky, kx)` reads, and from which word of its rows.
    fn tap_source(&self, ky: usize, kx: usize) -> (usize, usize) {
        let s = self.stride;
        ((ky % s) * s + kx % s, (ky / s) * self.phase_w + kx / s)
    }
}

impl CustomOp2 for Conv2dBf16 {
    fn name(&self) -> &'static str {
        "conv2d-bf16"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geometry::new(xl, wl, self.padding, self.stride)?;
        if self.bias.as_ref().is_some_and(|b| b.len() != g.c_out) {
            candle_core::bail!("conv2d_bf16: a bias of the wrong length for {}", g.c_out);
        }
        let x = contiguous_values::<bf16>(xs, xl, self.name())?;
        let weight = contiguous_values::<bf16>(ws, wl, self.name())?;
        let mut made = None;
        let taps = kept_or_made(self.kept.as_deref(), &mut made, || {
            TapMatrices::new(weight, &g)
        });
        if (taps.taps, taps.c_out, taps.c_in) != (g.k_h * g.k_w, g.c_out, g.c_in) {
            candle_core::bail!("conv2d_bf16: weights kept for another convolution");
        }
        // Written whole by the landing (nothing to write when it is empty).
        let mut out = unfilled::<bf16>(g.batch * g.c_out * g.out_h * g.out_w);
        if !out.is_empty() {
            let phases = paired_input(x, &g);
            let terms: Vec<_> = (0..g.k_h * g.k_w)
                .map(|tap| {
                    let a = taps.tap(tap);
                    let (phase, shift) = g.tap_source(tap / g.k_w, tap % g.k_w);
                    let words = &phases[phase];
                    let b = PairedB::rows(words, shift, (g.c_in, g.columns()), g.row_words());
                    (a, b)
                })
                .collect();
            let epilogue = Epilogue::Conv {
                bias: self.bias.as_deref(),
                grid: g.grid(),
            };
            // Every output position written, as its block of sums is finished.
            bf16_gemm::matmul_sum_to_bf16(&mut out, &terms, epilogue, true);
        }
        // SAFETY: the landing wrote every value (there are none when it did not run).
        #[allow(unsafe_code)]
        let out = unsafe { filled(out) };
        let shape = Shape::from((g.batch, g.c_out, g.out_h, g.out_w));
        Ok((CpuStorage::BF16(out), shape))
    }
}

/// A convolution's weight as one `c_out × c_in` matrix per tap, the product's `A` for that
/// tap. Where the products run on AMX tiles the matrices are laid out as the tiles read them
/// (rows on cache lines, zero-padded to whole tiles: `View::in_tile_rows`), so that no product
/// packs them again (packing them was 5 % of a bf16 UNet step); elsewhere row after row.
pub(crate) struct TapMatrices {
    words: Words,
    taps: usize,
    c_out: usize,
    c_in: usize,
    /// Rows per tap's matrix (`c_out`, or up to a whole block of tile rows), and values per
    /// row (`c_in`, or up to whole tiles).
    rows: usize,
    row_len: usize,
    tile_rows: bool,
}

impl TapMatrices {
    /// The weight (`[c_out, c_in, k_h, k_w]`) rearranged. One pass over it: each filter
    /// (`[c_in, taps]`, in L1) transposed into its row of every tap's matrix, a row written
    /// straight through (gathering each matrix instead read the whole weight once per tap:
    /// 1 280 channels took 30 ms; scattering each value to its tap's row with the index
    /// computed per value was a tenth of a bf16 UNet step's samples).
    fn new(weight: &[bf16], g: &Geometry) -> TapMatrices {
        TapMatrices::laid_out(weight, g, bf16_gemm::tiles_available())
    }

    /// [`TapMatrices::new`], in tile rows or not.
    #[allow(unsafe_code)]
    fn laid_out(weight: &[bf16], g: &Geometry, tile_rows: bool) -> TapMatrices {
        let (taps, c_in, c_out) = (g.k_h * g.k_w, g.c_in, g.c_out);
        assert_eq!(
            weight.len(),
            taps * c_out * c_in,
            "a weight of [c_out, c_in, k_h, k_w]"
        );
        let (rows, row_len) = if tile_rows {
            (c_out.next_multiple_of(amx::MR), 2 * amx::row_words(c_in))
        } else {
            (c_out, c_in.next_multiple_of(2))
        };
        // Zeros wherever no weight goes: the padding the tiles read.
        let mut words = Words::zeroed((taps * rows * row_len).div_ceil(2));
        let target = Scatter(words.as_bf16_mut().as_mut_ptr());
        weight
            .par_chunks(c_in * taps)
            .enumerate()
            .for_each(|(o, filter)| {
                for tap in 0..taps {
                    // SAFETY: row `o` of tap `tap`'s matrix, `c_in ≤ row_len` values from
                    // `(tap·rows + o)·row_len`, is inside the `taps·rows·row_len` values,
                    // and only filter `o`'s task writes it.
                    let row = unsafe {
                        std::slice::from_raw_parts_mut(target.at((tap * rows + o) * row_len), c_in)
                    };
                    for (value, taps_of_i) in row.iter_mut().zip(filter.chunks_exact(taps)) {
                        *value = taps_of_i[tap];
                    }
                }
            });
        TapMatrices {
            words,
            taps,
            c_out,
            c_in,
            rows,
            row_len,
            tile_rows,
        }
    }

    /// Tap `tap`'s matrix as the product's `A`.
    fn tap(&self, tap: usize) -> View<'_> {
        let (values, start) = (self.words.as_bf16(), tap * self.rows * self.row_len);
        let shape = (self.c_out, self.c_in);
        if self.tile_rows {
            View::in_tile_rows(values, start, shape)
        } else {
            View::new(Values::Bf16(values), start, shape, (self.row_len, 1))
        }
    }
}

/// The rearranged weight as the filters' tasks write it: a raw pointer, since each writes a
/// row of every tap's matrix.
#[derive(Clone, Copy)]
struct Scatter(*mut bf16);

impl Scatter {
    fn at(self, i: usize) -> *mut bf16 {
        self.0.wrapping_add(i)
    }
}

// SAFETY: the tasks write disjoint values through it (see `TapMatrices::new`).
#[allow(unsafe_code)]
unsafe impl Send for Scatter {}
// SAFETY: as above.
#[allow(unsafe_code)]
unsafe impl Sync for Scatter {}

/// The batch (`[batch, c_in, h, w]`) zero-padded, each phase of the padded grid (one at
/// stride 1) in rows of words, a row per pair of channels (`row_words` long: every image's
/// phase in turn), each word a position's two channels (the first in the low half; zero for
/// the missing second of an odd last pair).
fn paired_input(input: &[bf16], g: &Geometry) -> Vec<Vec<u32>> {
    let (s, image) = (g.stride, g.c_in * g.h * g.w);
    (0..s * s)
        .map(|phase| {
            let mut words = vec![0u32; g.c_in.div_ceil(2) * g.row_words()];
            words
                .par_chunks_mut(g.row_words())
                .enumerate()
                .for_each(|(pair, row)| {
                    let phases = row.chunks_mut(g.image_words());
                    for (input, row) in input.chunks_exact(image).zip(phases) {
                        pair_phase(input, g, (phase / s, phase % s), pair, row)
                    }
                });
            words
        })
        .collect()
}

/// Channels `2·pair` and `2·pair + 1` of `input` at the padded grid's positions of phase
/// `(py, px)` (rows `py, py + s, …`, columns `px, px + s, …`) into `row`.
fn pair_phase(
    input: &[bf16],
    g: &Geometry,
    (py, px): (usize, usize),
    pair: usize,
    row: &mut [u32],
) {
    let (s, plane) = (g.stride, g.h * g.w);
    let (top, p) = (g.padding.top, g.padding.sides);
    let low = &input[2 * pair * plane..(2 * pair + 1) * plane];
    let high = input.get((2 * pair + 1) * plane..(2 * pair + 2) * plane);
    // The phase's columns that fall on the image: padded column `px + s·j` is image column
    // `px + s·j − p`, for `j` from `first` on.
    let first = p.saturating_sub(px).div_ceil(s);
    let columns = (first..g.phase_w)
        .take_while(|j| px + s * j < p + g.w)
        .count();
    for i in 0..g.phase_h {
        let Some(y) = (py + s * i).checked_sub(top).filter(|&y| y < g.h) else {
            continue;
        };
        let x0 = px + s * first - p;
        let out = &mut row[i * g.phase_w + first..][..columns];
        let low = low[y * g.w + x0..].iter().step_by(s);
        match high {
            Some(high) => {
                let high = high[y * g.w + x0..].iter().step_by(s);
                for ((o, l), h) in out.iter_mut().zip(low).zip(high) {
                    *o = u32::from(l.to_bits()) | u32::from(h.to_bits()) << 16;
                }
            }
            None => {
                for (o, l) in out.iter_mut().zip(low) {
                    *o = u32::from(l.to_bits());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::test_support::random;
    use super::*;

    /// A bf16 input `[batch, 24, size, size]`, a bf16 3×3 weight `[16, 24, 3, 3]` and an f32
    /// bias, seeded from `seed`.
    fn operands(batch: usize, size: usize, seed: u64) -> (Tensor, Tensor, Tensor) {
        let half = |t: Tensor| t.to_dtype(DType::BF16).unwrap();
        let x = half(random(&[batch, 24, size, size], seed, 1.0));
        let weight = half(random(&[16, 24, 3, 3], seed + 1, 0.5));
        (x, weight, random(&[16], seed + 2, 1.0))
    }

    /// candle's f32 convolution of the bf16 values (stride 1), then the bias.
    fn reference(x: &Tensor, w: &Tensor, b: &Tensor, p: usize) -> Tensor {
        strided_reference(x, w, b, p, 1)
    }

    /// candle's f32 convolution of the bf16 values with `stride`, then the bias.
    fn strided_reference(x: &Tensor, w: &Tensor, b: &Tensor, p: usize, stride: usize) -> Tensor {
        let wide = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let c_out = b.dims1().unwrap();
        wide(x)
            .conv2d(&wide(w), p, stride, 1, 1)
            .and_then(|y| y.broadcast_add(&b.reshape((1, c_out, 1, 1))?))
            .unwrap()
    }

    #[test]
    fn equals_candles_f32_convolution_of_the_bf16_values() {
        if !bf16_gemm::available() {
            eprintln!("no AVX512-BF16 on this CPU: the kernel is not run");
            return;
        }
        // (batch, c_in, c_out, h, w, kernel, padding, stride): 3×3 "same" convolutions, odd
        // channel counts, 1×1, 5×5, no padding, outputs narrower than a strip, many tiles;
        // stride 2 as the downsamplers have it (even sizes, padding 1), on odd sizes, without
        // padding, with 1×1 and 5×5 kernels.
        let shapes = [
            (1, 1, 1, 1, 1, 1, 0, 1),
            (2, 3, 5, 7, 6, 3, 1, 1),
            (1, 33, 17, 9, 11, 3, 1, 1),
            (2, 64, 40, 16, 16, 3, 1, 1),
            (1, 20, 30, 12, 10, 1, 0, 1),
            (1, 7, 9, 13, 13, 5, 2, 1),
            (1, 16, 8, 8, 8, 3, 0, 1),
            (2, 130, 100, 5, 37, 3, 1, 1),
            (2, 64, 40, 16, 16, 3, 1, 2),
            (1, 33, 17, 9, 11, 3, 1, 2),
            (1, 16, 8, 8, 7, 3, 0, 2),
            (1, 20, 30, 12, 10, 1, 0, 2),
            (1, 7, 9, 13, 14, 5, 2, 2),
            (2, 130, 100, 6, 70, 3, 1, 2),
        ];
        let mut worst = 0f32;
        for (i, &(batch, c_in, c_out, h, w, k, p, stride)) in shapes.iter().enumerate() {
            let seed = 7 * i as u64 + 300;
            let half = |t: Tensor| t.to_dtype(DType::BF16).unwrap();
            let x = half(random(&[batch, c_in, h, w], seed, 1.0));
            let weight = half(random(&[c_out, c_in, k, k], seed + 1, 0.5));
            let bias = random(&[c_out], seed + 2, 1.0);
            let ours = conv2d_bf16(&x, &weight, Some(&bias), p, stride).unwrap();
            assert_eq!(ours.dtype(), DType::BF16);
            let theirs = strided_reference(&x, &weight, &bias, p, stride);
            assert_eq!(ours.dims(), theirs.dims(), "shape {:?}", shapes[i]);
            // Products exact and summed in f32, then the output rounded to bf16 (within 2⁻⁸
            // of its magnitude): relative to the largest output.
            let ours = ours.to_dtype(DType::F32).unwrap();
            let scale = super::super::super::test_support::max_abs(&theirs);
            let off = super::super::super::test_support::max_difference(&ours, &theirs) / scale;
            assert!(off < 4e-3, "shape {:?}: off by {off} of {scale}", shapes[i]);
            worst = worst.max(off);
        }
        println!("conv2d in bf16: worst {worst:e} of the largest output");
    }

    #[test]
    fn a_band_padded_at_one_edge_is_the_convolution_of_its_rows_padded_so() {
        // A band of a larger map (`nn::Conv2d::forward_band`) is padded on its sides, and
        // above or below only where it touches the map's edge: candle's f32 convolution,
        // without padding, of the rows padded that way by hand. Reading a row with the sides'
        // padding instead of the top's (or none) puts every row of the output a row off.
        if !bf16_gemm::available() {
            return;
        }
        let paddings = [(1, 0, 1), (0, 1, 1), (0, 0, 1), (2, 0, 2), (0, 2, 1)];
        for (i, &(top, bottom, sides)) in paddings.iter().enumerate() {
            let (x, weight, bias) = operands(2, 9, 40 + i as u64);
            let padding = Padding { top, bottom, sides };
            let ours = conv2d_bf16_keeping(&x, &weight, Some(&bias), (padding, 1), None).unwrap();
            let padded = x
                .pad_with_zeros(2, top, bottom)
                .and_then(|t| t.pad_with_zeros(3, sides, sides))
                .unwrap();
            let theirs = reference(&padded, &weight, &bias, 0);
            assert_eq!(ours.dims(), theirs.dims(), "{padding:?}");
            let ours = ours.to_dtype(DType::F32).unwrap();
            let scale = super::super::super::test_support::max_abs(&theirs);
            let off = super::super::super::test_support::max_difference(&ours, &theirs) / scale;
            assert!(off < 4e-3, "{padding:?}: off by {off} of {scale}");
        }
    }

    #[test]
    fn taps_read_the_wrong_way_round_are_caught() {
        // The kernel given each filter transposed (tap (ky, kx) read as (kx, ky)) must miss
        // the reference by far more than the tolerance above.
        if !bf16_gemm::available() {
            return;
        }
        let (x, weight, bias) = operands(1, 10, 11);
        let transposed = weight.transpose(2, 3).unwrap().contiguous().unwrap();
        let wrong = conv2d_bf16(&x, &transposed, Some(&bias), 1, 1).unwrap();
        let theirs = reference(&x, &weight, &bias, 1);
        let wrong = wrong.to_dtype(DType::F32).unwrap();
        let scale = super::super::super::test_support::max_abs(&theirs);
        let off = super::super::super::test_support::max_difference(&wrong, &theirs) / scale;
        println!("taps transposed: off by {off}");
        assert!(off > 0.1, "{off}");
    }

    #[test]
    fn a_stride_2_convolution_is_the_stride_1_one_at_even_positions() {
        // Our stride-1 convolution read at even positions, and not at odd ones (what reading
        // the wrong phases would give: swapping them fails this test and the one above).
        if !bf16_gemm::available() {
            return;
        }
        let (x, weight, bias) = operands(1, 12, 21);
        let ours = conv2d_bf16(&x, &weight, Some(&bias), 1, 2).unwrap();
        let full = conv2d_bf16(&x, &weight, Some(&bias), 1, 1).unwrap();
        let wide = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let even = wide(&full)
            .reshape((1, 16, 6, 2, 6, 2))
            .and_then(|t| t.narrow(3, 0, 1)?.narrow(5, 0, 1)?.reshape((1, 16, 6, 6)))
            .unwrap();
        let odd = wide(&full)
            .reshape((1, 16, 6, 2, 6, 2))
            .and_then(|t| t.narrow(3, 1, 1)?.narrow(5, 1, 1)?.reshape((1, 16, 6, 6)))
            .unwrap();
        let scale = super::super::super::test_support::max_abs(&even);
        let diff = |a: &Tensor, b: &Tensor| {
            super::super::super::test_support::max_difference(a, b) / scale
        };
        assert!(diff(&wide(&ours), &even) < 4e-3, "the even positions");
        assert!(diff(&wide(&ours), &odd) > 0.1, "the odd positions differ");
    }

    #[test]
    fn weights_kept_rearranged_give_the_same_outputs_and_are_made_once() {
        if !bf16_gemm::available() {
            return;
        }
        let half = |t: Tensor| t.to_dtype(DType::BF16).unwrap();
        let (x, weight, bias) = operands(2, 10, 31);
        let kept = RearrangedWeights::default();
        let fresh = conv2d_bf16(&x, &weight, Some(&bias), 1, 1).unwrap();
        for stride in [1, 2] {
            let direct = conv2d_bf16(&x, &weight, Some(&bias), 1, stride).unwrap();
            let with_kept = conv2d_bf16_keeping(
                &x,
                &weight,
                Some(&bias),
                (Padding::uniform(1), stride),
                Some(&kept),
            )
            .unwrap();
            let as_f32 = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            let off = super::super::super::test_support::max_difference(
                &as_f32(&direct),
                &as_f32(&with_kept),
            );
            assert_eq!(off, 0.0, "stride {stride}");
        }
        assert!(kept.is_made(), "made at the first call, kept");
        // Later calls read the kept weights, not the weight given: another weight of the same
        // size gives the first one's outputs (hence one `RearrangedWeights` per convolution),
        // and one of another size is refused.
        let as_f32 = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let same_size = half(random(&[16, 24, 3, 3], 35, 0.5));
        let read_kept = conv2d_bf16_keeping(
            &x,
            &same_size,
            Some(&bias),
            (Padding::uniform(1), 1),
            Some(&kept),
        )
        .unwrap();
        let diff = super::super::super::test_support::max_difference;
        assert_eq!(diff(&as_f32(&read_kept), &as_f32(&fresh)), 0.0);
        let other = half(random(&[8, 24, 3, 3], 34, 0.5));
        assert!(
            conv2d_bf16_keeping(&x, &other, None, (Padding::uniform(1), 1), Some(&kept)).is_err()
        );
    }

    /// Each tap's matrix holds the weight's values for that tap, in tile rows (the layout the
    /// AMX path reads in place) and row after row (the vector path's), odd channel counts
    /// included; the padding of tile rows is zero.
    #[test]
    fn tap_matrices_hold_each_taps_weights() {
        for (c_out, c_in, k) in [(5, 3, 3), (40, 33, 3), (7, 1, 1), (3, 130, 5)] {
            let weight: Vec<bf16> = (0..c_out * c_in * k * k)
                .map(|i| bf16::from_f32(i as f32 + 1.0))
                .collect();
            let x = Layout::contiguous((1, c_in, 8, 8));
            let w = Layout::contiguous((c_out, c_in, k, k));
            let g = Geometry::new(&x, &w, Padding::uniform(1), 1).unwrap();
            for tile_rows in [false, true] {
                let taps = TapMatrices::laid_out(&weight, &g, tile_rows);
                for tap in 0..k * k {
                    let a = taps.tap(tap);
                    for (o, i) in (0..c_out).flat_map(|o| (0..c_in).map(move |i| (o, i))) {
                        let expected = weight[(o * c_in + i) * k * k + tap];
                        let case = format!("{c_out}×{c_in}×{k}², tile rows {tile_rows}, tap {tap}");
                        assert_eq!(a.bits(o, i), expected.to_bits(), "{case}: ({o}, {i})");
                    }
                }
                let written = c_out * c_in * k * k;
                let nonzero = taps
                    .words
                    .as_bf16()
                    .iter()
                    .filter(|v| v.to_bits() != 0)
                    .count();
                assert_eq!(nonzero, written, "only the weights, zeros around them");
            }
        }
    }

    #[test]
    fn shapes_that_do_not_fit_are_refused() {
        if !bf16_gemm::available() {
            return;
        }
        let half = |t: Tensor| t.to_dtype(DType::BF16).unwrap();
        let x = half(random(&[1, 4, 5, 5], 1, 1.0));
        let wrong_channels = half(random(&[2, 3, 3, 3], 2, 1.0));
        assert!(conv2d_bf16(&x, &wrong_channels, None, 1, 1).is_err());
        let too_large = half(random(&[2, 4, 9, 9], 3, 1.0));
        assert!(conv2d_bf16(&x, &too_large, None, 1, 1).is_err());
        let w = half(random(&[2, 4, 3, 3], 4, 1.0));
        let short_bias = random(&[3], 5, 1.0);
        assert!(conv2d_bf16(&x, &w, Some(&short_bias), 1, 1).is_err());
        assert!(conv2d_bf16(&x.to_dtype(DType::F32).unwrap(), &w, None, 1, 1).is_err());
        assert!(conv2d_bf16(&x, &w, None, 1, 3).is_err(), "stride 3");
    }
}
