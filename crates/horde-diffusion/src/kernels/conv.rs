//! 2-D convolution with stride 1 on the CPU, as a sum of shifted matrix products (an
//! implicit GEMM): no im2col matrix is built.
//!
//! candle's CPU convolution copies the input to channels-last, flattens the weights again on
//! every call and builds an im2col tile with scattered writes, all on one thread before the
//! matrix multiply; in the VAE decoder those copies took more time than the arithmetic.
//!
//! Here the input is copied once into a zero-padded `[c_in, H + 2p, W + 2p]` plane per
//! channel. On that padded grid (row width `Wp = W + 2p`), the output at grid index `i` is
//! `Σ_taps W[:, :, ky, kx] · in[:, i + ky·Wp + kx]`: each of the `k × k` taps is one gemm
//! of the weights' tap (read in place through strides) with the padded input shifted by a
//! constant offset. The grid has `Wp − W_out` extra columns per row, computed and dropped
//! (under 2 % at 64 wide and more). The output is cut in bands of rows; each band
//! accumulates its taps in a scratch buffer the thread reuses, then lands in the output; bands
//! run in parallel on rayon.
//!
//! A stride-2 convolution (the UNet's downsamplers) runs here too, as a stride-1 one over the
//! input's four phases (`conv2d_stride2`); candle's im2col took 49 ms for `[2, 320, 64, 64]`.

mod bf16;
pub use super::kept::keep_rearranged_weights;
pub use bf16::conv2d_bf16;
pub(crate) use bf16::{conv2d_bf16_keeping, takes as takes_bf16, RearrangedWeights};

use super::{contiguous_f32, filled, unfilled};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::cell::RefCell;
use std::mem::MaybeUninit;

/// Grid positions per band: the band's accumulator (`c_out` × this) stays a few MiB.
const BAND_POSITIONS: usize = 2048;

/// `conv2d(x, weight) + bias` with stride 2, dilation 1, one group and `padding` zeros on each
/// side, f32 on the CPU. With `x'` the zero-padded input, output `(y, x)` sums
/// `w[ky][kx] · x'[2y + ky][2x + kx]`; writing `ky = 2a + py` and `kx = 2b + px`, that is a
/// stride-1 convolution with a `⌈k/2⌉`-square kernel over the four phases
/// `x'[2·+py][2·+px]` stacked as `4·c_in` channels, whose weights are the original taps (zero
/// where `2a + py` or `2b + px` falls outside the kernel).
pub fn conv2d_stride2(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let (c_out, c_in, k_h, k_w) = weight.dims4()?;
    let (padded_h, padded_w) = (h + 2 * padding, w + 2 * padding);
    if padded_h < k_h || padded_w < k_w {
        candle_core::bail!(
            "conv2d_stride2: input {:?} is smaller than the kernel",
            x.dims()
        );
    }
    let (out_h, out_w) = ((padded_h - k_h) / 2 + 1, (padded_w - k_w) / 2 + 1);
    let phases = x.contiguous()?.apply_op1_no_bwd(&Phases { padding })?;
    let (half_h, half_w) = (k_h.div_ceil(2), k_w.div_ceil(2));
    let weight = weight
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let mut phase_weight = vec![0f32; c_out * 4 * c_in * half_h * half_w];
    for o in 0..c_out {
        for i in 0..c_in {
            for ky in 0..k_h {
                for kx in 0..k_w {
                    let channel = ((ky % 2) * 2 + kx % 2) * c_in + i;
                    let at = ((o * 4 * c_in + channel) * half_h + ky / 2) * half_w + kx / 2;
                    phase_weight[at] = weight[((o * c_in + i) * k_h + ky) * k_w + kx];
                }
            }
        }
    }
    let phase_weight =
        Tensor::from_vec(phase_weight, (c_out, 4 * c_in, half_h, half_w), x.device())?;
    conv2d_stride1(&phases, &phase_weight, bias, 0)?
        .narrow(2, 0, out_h)?
        .narrow(3, 0, out_w)?
        .contiguous()
}

/// `[batch, c, h, w]` zero-padded by `padding` (and to even sizes) and split into its four
/// phases: `[batch, 4·c, ⌈(h + 2p)/2⌉, ⌈(w + 2p)/2⌉]`, phase `(py, px)` at channels
/// `(2·py + px)·c ..`.
struct Phases {
    padding: usize,
}

impl candle_core::CustomOp1 for Phases {
    fn name(&self) -> &'static str {
        "conv-phases"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (batch, c, h, w) = layout.shape().dims4()?;
        let x = contiguous_f32(storage, layout, self.name())?;
        let p = self.padding;
        let (half_h, half_w) = ((h + 2 * p).div_ceil(2), (w + 2 * p).div_ceil(2));
        let plane = half_h * half_w;
        let mut out = vec![0f32; batch * 4 * c * plane];
        // One task per (image, phase); each reads the image's planes and writes its own.
        out.par_chunks_mut(c * plane)
            .enumerate()
            .for_each(|(task, phase_planes)| {
                let (b, phase) = (task / 4, task % 4);
                let (py, px) = (phase / 2, phase % 2);
                for (i, out_plane) in phase_planes.chunks_exact_mut(plane).enumerate() {
                    let source = &x[(b * c + i) * h * w..][..h * w];
                    for (y2, out_row) in out_plane.chunks_exact_mut(half_w).enumerate() {
                        // Padded row 2·y2 + py is input row 2·y2 + py − p.
                        let Some(y) = (2 * y2 + py).checked_sub(p).filter(|y| *y < h) else {
                            continue;
                        };
                        let row = &source[y * w..][..w];
                        for (x2, o) in out_row.iter_mut().enumerate() {
                            if let Some(x) = (2 * x2 + px).checked_sub(p).filter(|x| *x < w) {
                                *o = row[x];
                            }
                        }
                    }
                }
            });
        Ok((
            CpuStorage::F32(out),
            Shape::from((batch, 4 * c, half_h, half_w)),
        ))
    }
}

/// `conv2d(x, weight) + bias` for a 1×1 `weight` without padding, f32 on the CPU: one
/// `[c_out, c_in] · [c_in, h·w]` product per image on every thread (the banded path packs the
/// weights again for every band of 2 048 positions: 11.1 against 7.6 ms for 320 channels at
/// 64×64, batch 2, in a UNet step).
pub fn conv2d_1x1(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (batch, c_in, h, w) = x.dims4()?;
    let (c_out, w_c_in, k_h, k_w) = weight.dims4()?;
    if (w_c_in, k_h, k_w) != (c_in, 1, 1) {
        candle_core::bail!(
            "conv2d_1x1: input {:?} and weight {:?} do not fit",
            x.dims(),
            weight.dims()
        );
    }
    let x = x.reshape((batch, c_in, h * w))?;
    let weight = weight.reshape((c_out, c_in))?;
    let out = weight.broadcast_left(batch)?.matmul(&x)?;
    let out = match bias {
        Some(bias) => out.broadcast_add(&bias.reshape((1, c_out, 1))?)?,
        None => out,
    };
    out.reshape((batch, c_out, h, w))
}

/// `conv2d(x, weight)` with stride 1, dilation 1, one group and `padding` zeros on each
/// side, f32 on the CPU: `x` `[batch, c_in, h, w]`, `weight` `[c_out, c_in, k_h, k_w]`.
pub fn conv2d_stride1(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
) -> Result<Tensor> {
    let (x, weight, bias) = super::conv_operands(x, weight, bias)?;
    x.apply_op2_no_bwd(&weight, &Conv2dStride1 { padding, bias })
}

struct Conv2dStride1 {
    padding: usize,
    /// `[c_out]`, added as the outputs are written.
    bias: Option<Vec<f32>>,
}

/// The sizes of one convolution.
#[derive(Clone, Copy)]
struct Geometry {
    c_in: usize,
    c_out: usize,
    k_h: usize,
    k_w: usize,
    /// The padded grid: `h + 2p` rows of `w + 2p`.
    grid_h: usize,
    grid_w: usize,
    out_h: usize,
    out_w: usize,
}

impl Geometry {
    fn plane(&self) -> usize {
        self.grid_h * self.grid_w
    }
    /// Floats per padded image: the planes, and room for the last tap's reads past the last
    /// plane (they only feed dropped columns).
    fn padded_image(&self) -> usize {
        self.c_in * self.plane() + self.k_w
    }
}

impl CustomOp2 for Conv2dStride1 {
    fn name(&self) -> &'static str {
        "conv2d-stride1"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (batch, c_in, h, w) = xl.shape().dims4()?;
        let (c_out, w_c_in, k_h, k_w) = wl.shape().dims4()?;
        let p = self.padding;
        let bias_fits = self.bias.as_ref().is_none_or(|b| b.len() == c_out);
        if w_c_in != c_in || k_h > h + 2 * p || k_w > w + 2 * p || !bias_fits {
            candle_core::bail!(
                "conv2d_stride1: input {:?}, weight {:?}, padding {p} do not fit",
                xl.shape(),
                wl.shape()
            );
        }
        let g = Geometry {
            c_in,
            c_out,
            k_h,
            k_w,
            grid_h: h + 2 * p,
            grid_w: w + 2 * p,
            out_h: h + 2 * p - k_h + 1,
            out_w: w + 2 * p - k_w + 1,
        };
        let (x, weight) = (
            contiguous_f32(xs, xl, self.name())?,
            contiguous_f32(ws, wl, self.name())?,
        );
        let padded = pad(x, batch, c_in, h, w, p, &g);
        let weight = &taps_first(weight, &g);
        let out_image = c_out * g.out_h * g.out_w;
        // Written whole: the bands cover every output row, each row in full.
        let mut out = unfilled(batch * out_image);
        let rows_per_band = rows_per_band(&g, batch);
        let bands = g.out_h.div_ceil(rows_per_band);
        let target = OutPtr::to(&mut out);
        (0..batch * bands).into_par_iter().for_each(|task| {
            let (b, band) = (task / bands, task % bands);
            let rows = band * rows_per_band..((band + 1) * rows_per_band).min(g.out_h);
            let image = &padded[b * g.padded_image()..(b + 1) * g.padded_image()];
            let bias = self.bias.as_deref();
            convolve_band(&g, image, weight, bias, rows, target, b * out_image);
        });
        // SAFETY: the bands cover rows `0..out_h` of every image, and each band writes every
        // column of its rows in every output channel.
        #[allow(unsafe_code)]
        let out = unsafe { filled(out) };
        let shape = Shape::from((batch, c_out, g.out_h, g.out_w));
        Ok((CpuStorage::F32(out), shape))
    }
}

/// Output rows per band: as many as [`BAND_POSITIONS`] allows, fewer where the images alone
/// would not give every thread a band (a 20×20 map of one image was one band, so one thread
/// did all of its work).
fn rows_per_band(g: &Geometry, batch: usize) -> usize {
    let bands_per_image = rayon::current_num_threads().div_ceil(batch);
    (BAND_POSITIONS / g.grid_w)
        .min(g.out_h.div_ceil(bands_per_image))
        .max(1)
}

/// The weight as `[taps, c_out, c_in]`: each tap's matrix contiguous. In the checkpoint's
/// `[c_out, c_in, k_h, k_w]` a tap's matrix is strided by the 9 taps, and every band's product
/// gathered it a value per 36 bytes: at 16×16 with 1 280 channels that was half the time.
#[allow(unsafe_code)]
fn taps_first(weight: &[f32], g: &Geometry) -> Vec<f32> {
    let taps = g.k_h * g.k_w;
    if taps == 1 {
        return weight.to_vec();
    }
    // Written whole: a permutation of the weight.
    let mut out = unfilled(weight.len());
    assert_eq!(
        weight.len(),
        taps * g.c_out * g.c_in,
        "a weight of [c_out, c_in, k_h, k_w]"
    );
    let target = OutPtr::to(&mut out);
    weight
        .par_chunks(g.c_in * taps)
        .enumerate()
        .for_each(|(o, filter)| match taps {
            9 => scatter_filter::<9>(filter, o, g, target),
            _ => {
                for (i, taps_of_i) in filter.chunks_exact(taps).enumerate() {
                    for (tap, value) in taps_of_i.iter().enumerate() {
                        let at = (tap * g.c_out + o) * g.c_in + i;
                        // SAFETY: `at` is inside `taps·c_out·c_in`, the length asserted above,
                        // and only filter `o`'s task writes row `o` of each tap.
                        #[allow(unsafe_code)]
                        unsafe {
                            target.get().add(at).write(*value);
                        }
                    }
                }
            }
        });
    // SAFETY: the filters' tasks wrote every (tap, o, i) of the permutation.
    unsafe { filled(out) }
}

/// Filter `o` (`[c_in, TAPS]`) of [`taps_first`] into row `o` of each of its `TAPS` matrices,
/// the rows' starts computed once, where each value's index had been computed from scratch
/// (two integer multiplies a value), at every call of every direct convolution (`engine --part
/// conv`, one thread, a Zen 4: 1 280 channels at 8×8 79.9 → 74.3 ms, at 16×16 189 → 184).
fn scatter_filter<const TAPS: usize>(filter: &[f32], o: usize, g: &Geometry, target: OutPtr) {
    assert_eq!(filter.len(), g.c_in * TAPS, "a filter of [c_in, taps]");
    assert_eq!(g.k_h * g.k_w, TAPS, "a filter of k_h·k_w taps");
    let rows: [*mut f32; TAPS] =
        std::array::from_fn(|tap| target.get().wrapping_add((tap * g.c_out + o) * g.c_in));
    for (i, taps_of_i) in filter.chunks_exact(TAPS).enumerate() {
        for (row, value) in rows.iter().zip(taps_of_i) {
            // SAFETY: row `o` of tap `tap`'s matrix is `c_in` values from `(tap·c_out + o)·c_in`,
            // inside the `TAPS·c_out·c_in` of the output (the caller's assertion), `i < c_in`;
            // only filter `o`'s task writes it.
            #[allow(unsafe_code)]
            unsafe {
                row.add(i).write(*value)
            };
        }
    }
}

/// The input with `p` zeros around each plane, images one after the other.
fn pad(
    x: &[f32],
    batch: usize,
    c_in: usize,
    h: usize,
    w: usize,
    p: usize,
    g: &Geometry,
) -> Vec<f32> {
    let mut padded = vec![0f32; batch * g.padded_image()];
    padded
        .par_chunks_mut(g.padded_image())
        .enumerate()
        .for_each(|(b, image)| {
            for c in 0..c_in {
                let src = &x[(b * c_in + c) * h * w..][..h * w];
                let plane = &mut image[c * g.plane()..][..g.plane()];
                for (y, row) in src.chunks_exact(w).enumerate() {
                    plane[(y + p) * g.grid_w + p..][..w].copy_from_slice(row);
                }
            }
        });
    padded
}

/// The output buffer, written by bands that never overlap, and its length in values.
#[derive(Clone, Copy)]
struct OutPtr {
    start: *mut f32,
    len: usize,
}

impl OutPtr {
    /// The start and length of `buffer`, which the tasks then write through the pointer.
    fn to(buffer: &mut [MaybeUninit<f32>]) -> Self {
        Self {
            start: buffer.as_mut_ptr().cast::<f32>(),
            len: buffer.len(),
        }
    }

    /// The pointer (a method, so closures capture the whole `Send` wrapper).
    fn get(self) -> *mut f32 {
        self.start
    }
}

// SAFETY: each band writes only its own output rows (see `convolve_band`), and each filter's
// task only its own rows of the reordered weight (`taps_first`).
#[allow(unsafe_code)]
unsafe impl Send for OutPtr {}
// SAFETY: as for `Send`: the tasks that share it write disjoint values.
#[allow(unsafe_code)]
unsafe impl Sync for OutPtr {}

thread_local! {
    /// Each thread's accumulator for one band (`c_out` × the band's grid positions).
    static BAND: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Output rows `rows` of one image: the taps' gemms summed on the band's grid positions, then
/// the valid columns plus the bias written to the output (which starts at `out_offset` in
/// `out`).
#[allow(unsafe_code)]
fn convolve_band(
    g: &Geometry,
    image: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    rows: std::ops::Range<usize>,
    out: OutPtr,
    out_offset: usize,
) {
    let start = rows.start * g.grid_w;
    let positions = rows.len() * g.grid_w;
    // What the raw reads and writes below rely on, checked once per band: the last tap's
    // shifted window of the last input plane ends inside the padded image, the weight holds
    // every tap's matrix, and the band's last output row ends inside the output.
    let last_shift = start + g.k_h.saturating_sub(1) * g.grid_w + g.k_w.saturating_sub(1);
    assert!(
        (g.c_in == 0 || (g.c_in - 1) * g.plane() + last_shift + positions <= image.len())
            && weight.len() >= g.k_h * g.k_w * g.c_out * g.c_in
            && bias.is_none_or(|b| b.len() >= g.c_out)
            && (g.c_out == 0
                || out_offset + ((g.c_out - 1) * g.out_h + rows.end) * g.out_w <= out.len),
        "convolution band: buffers too short for rows {rows:?}"
    );
    BAND.with(|band| {
        let mut band = band.borrow_mut();
        band.resize(g.c_out * positions, 0.0);
        for ky in 0..g.k_h {
            for kx in 0..g.k_w {
                let tap = ky * g.k_w + kx;
                let shift = start + ky * g.grid_w + kx;
                // band (c_out × positions) += weight[:, :, ky, kx] (c_out × c_in)
                //                              · image[:, shift..shift + positions] (c_in × positions)
                // SAFETY: the weight tap reads rows `0..c_out` (stride c_in) and columns
                // `0..c_in` (stride 1) from offset `tap·c_out·c_in`; the image reads planes
                // `0..c_in` at `shift..shift + positions`, inside the padded image (asserted
                // at the top); the band holds `c_out × positions`.
                unsafe {
                    gemm::gemm(
                        g.c_out,
                        positions,
                        g.c_in,
                        band.as_mut_ptr(),
                        1,
                        positions as isize,
                        tap > 0,
                        weight.as_ptr().add(tap * g.c_out * g.c_in),
                        1,
                        g.c_in as isize,
                        image.as_ptr().add(shift),
                        1,
                        g.plane() as isize,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            }
        }
        for (c, sums) in band.chunks_exact(positions).enumerate() {
            let bias_c = bias.map_or(0.0, |b| b[c]);
            for (i, row) in sums.chunks_exact(g.grid_w).enumerate() {
                let y = rows.start + i;
                let at = out_offset + (c * g.out_h + y) * g.out_w;
                // SAFETY: row `y` of channel `c` of this image belongs to this band alone, and
                // `at + out_w` is within the output (`out.len`, asserted at the top); the values
                // are only written.
                let line = unsafe {
                    std::slice::from_raw_parts_mut(
                        out.get().add(at).cast::<MaybeUninit<f32>>(),
                        g.out_w,
                    )
                };
                for (o, sum) in line.iter_mut().zip(row) {
                    o.write(sum + bias_c);
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::super::test_support::max_difference;
    use super::*;
    use candle_core::DType;

    fn random(shape: &[usize], seed: u64) -> Tensor {
        super::super::test_support::random(shape, seed, 1.0)
    }

    /// candle's convolution, then the bias added per output channel.
    fn candle_with_bias(
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        p: usize,
        stride: usize,
    ) -> Tensor {
        let c_out = bias.dims1().unwrap();
        x.conv2d(weight, p, stride, 1, 1)
            .and_then(|y| y.broadcast_add(&bias.reshape((1, c_out, 1, 1))?))
            .unwrap()
    }

    #[test]
    fn equals_candles_conv2d_on_many_shapes() {
        // (batch, c_in, c_out, h, w, kernel, padding): the 3×3 "same" convolutions of the
        // networks, 1×1 and 5×5, no padding, odd sizes, bands that split rows unevenly,
        // narrow images where one band holds many rows, and a tall one with many bands.
        let cases = [
            (1, 1, 1, 1, 1, 1, 0),
            (1, 3, 4, 5, 7, 3, 1),
            (2, 8, 16, 16, 16, 3, 1),
            (1, 5, 3, 9, 11, 3, 0),
            (2, 4, 6, 12, 10, 5, 2),
            (1, 6, 7, 8, 8, 1, 0),
            (1, 16, 32, 70, 33, 3, 1),
            (2, 3, 5, 300, 6, 3, 1),
            (1, 2, 3, 4, 4, 3, 2),
            (1, 7, 9, 3, 40, 2, 1),
        ];
        for (i, &(batch, c_in, c_out, h, w, k, p)) in cases.iter().enumerate() {
            let x = random(&[batch, c_in, h, w], i as u64);
            let weight = random(&[c_out, c_in, k, k], 100 + i as u64);
            let ours = conv2d_stride1(&x, &weight, None, p).unwrap();
            let candle = x.conv2d(&weight, p, 1, 1, 1).unwrap();
            assert_eq!(ours.dims(), candle.dims(), "case {:?}", cases[i]);
            let worst = max_difference(&ours, &candle);
            assert!(worst < 1e-4, "case {:?}: off by {worst}", cases[i]);
            let bias = random(&[c_out], 50 + i as u64);
            let with_bias = conv2d_stride1(&x, &weight, Some(&bias), p).unwrap();
            let worst = max_difference(&with_bias, &candle_with_bias(&x, &weight, &bias, p, 1));
            assert!(
                worst < 1e-4,
                "case {:?} with a bias: off by {worst}",
                cases[i]
            );
        }
    }

    #[test]
    fn one_by_one_equals_candles_conv2d() {
        for (i, &(batch, c_in, c_out, h, w)) in
            [(1, 1, 1, 1, 1), (2, 8, 5, 7, 9), (3, 16, 32, 4, 4)]
                .iter()
                .enumerate()
        {
            let x = random(&[batch, c_in, h, w], 70 + i as u64);
            let weight = random(&[c_out, c_in, 1, 1], 80 + i as u64);
            let bias = random(&[c_out], 90 + i as u64);
            let ours = conv2d_1x1(&x, &weight, Some(&bias)).unwrap();
            let candle = candle_with_bias(&x, &weight, &bias, 0, 1);
            assert_eq!(ours.dims(), candle.dims());
            let worst = max_difference(&ours, &candle);
            assert!(worst < 1e-5, "case {i}: off by {worst}");
        }
        let x = random(&[1, 4, 2, 2], 1);
        assert!(
            conv2d_1x1(&x, &random(&[2, 4, 3, 3], 2), None).is_err(),
            "not 1×1"
        );
    }

    #[test]
    fn stride_two_equals_candles_conv2d() {
        // (batch, c_in, c_out, h, w, kernel, padding): the UNet's downsamplers (3×3, padding
        // 1, even sizes), the VAE encoder's (padding 0 on an input padded by one), odd sizes,
        // a 1×1 and a 4×4 kernel.
        let cases = [
            (2, 8, 6, 16, 16, 3, 1),
            (1, 3, 4, 9, 9, 3, 0),
            (1, 5, 7, 11, 8, 3, 1),
            (2, 4, 3, 7, 10, 1, 0),
            (1, 2, 3, 12, 9, 4, 1),
            (1, 3, 2, 3, 3, 3, 0),
        ];
        for (i, &(batch, c_in, c_out, h, w, k, p)) in cases.iter().enumerate() {
            let x = random(&[batch, c_in, h, w], 40 + i as u64);
            let weight = random(&[c_out, c_in, k, k], 50 + i as u64);
            let bias = random(&[c_out], 60 + i as u64);
            let ours = conv2d_stride2(&x, &weight, Some(&bias), p).unwrap();
            let candle = candle_with_bias(&x, &weight, &bias, p, 2);
            assert_eq!(ours.dims(), candle.dims(), "case {:?}", cases[i]);
            let worst = max_difference(&ours, &candle);
            assert!(worst < 1e-4, "case {:?}: off by {worst}", cases[i]);
        }
    }

    #[test]
    fn a_strided_view_is_read_as_its_values() {
        let x = random(&[1, 4, 9, 6], 1).transpose(2, 3).unwrap(); // [1, 4, 6, 9]
        let weight = random(&[3, 4, 3, 3], 2);
        let ours = conv2d_stride1(&x, &weight, None, 1).unwrap();
        let candle = x.contiguous().unwrap().conv2d(&weight, 1, 1, 1, 1).unwrap();
        assert!(max_difference(&ours, &candle) < 1e-4);
    }

    #[test]
    fn shapes_that_do_not_fit_are_refused() {
        let x = random(&[1, 4, 5, 5], 1);
        assert!(
            conv2d_stride1(&x, &random(&[2, 3, 3, 3], 2), None, 1).is_err(),
            "c_in"
        );
        assert!(
            conv2d_stride1(&x, &random(&[2, 4, 7, 7], 3), None, 0).is_err(),
            "kernel"
        );
        let bias = random(&[3], 5);
        assert!(
            conv2d_stride1(&x, &random(&[2, 4, 3, 3], 4), Some(&bias), 1).is_err(),
            "3 biases for 2 filters"
        );
        let half = x.to_dtype(DType::F16).unwrap();
        let weight = random(&[2, 4, 3, 3], 4).to_dtype(DType::F16).unwrap();
        assert!(conv2d_stride1(&half, &weight, None, 1).is_err(), "f32 only");
    }
}
