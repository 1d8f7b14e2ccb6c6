//! 2-D convolution with stride 1 and any dilation on small maps, f32 on the CPU: the input
//! unrolled into columns (im2col), then one matrix product over every thread.
//!
//! The banded kernel of `kernels::conv` cuts the work by rows of the output, so a 20×20 map
//! of one image is one or two bands, and each of its nine tap products rearranges the weights
//! first; candle's dilated convolution runs on one thread. Here the columns
//! `[c_in·k_h·k_w, out_h·out_w]` of a small map (or of an RGB input) are a few MiB, the weights
//! are read in the checkpoint's own `[c_out, c_in·k_h·k_w]` layout, and the one product
//! `weights · columns` is split over the threads by the gemm itself. U²-Net's convolutions
//! below 32×32 (dilated by 2, 4 and 8 among them) took 212 ms of a 320² pass on the banded
//! kernel and space-to-batch, and 143 ms here (2 threads of an AMD EPYC; BENCHMARKS.md).

use super::{contiguous_f32, filled, unfilled};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// The most values the columns of one image may hold when [`crate::nn`] sends a convolution
/// of few input channels here (64 MiB: an RGB input of 1 200² or so).
pub(crate) const MAX_COLUMNS: usize = 16 << 20;

/// `conv2d(x, weight) + bias` with stride 1, one group, `padding` zeros on each side and taps
/// `dilation` apart: `x` `[batch, c_in, h, w]`, `weight` `[c_out, c_in, k_h, k_w]`, `bias`
/// `[c_out]`; with `relu`, ReLU after.
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
    dilation: usize,
    relu: bool,
) -> Result<Tensor> {
    let (x, weight, bias) = super::conv_operands(x, weight, bias)?;
    x.apply_op2_no_bwd(
        &weight,
        &Im2colConv {
            padding,
            dilation: dilation.max(1),
            bias,
            relu,
        },
    )
}

struct Im2colConv {
    padding: usize,
    dilation: usize,
    /// `[c_out]`, the starting value of each output channel.
    bias: Option<Vec<f32>>,
    /// ReLU over each image's output while it is still in cache.
    relu: bool,
}

/// The sizes of one convolution.
#[derive(Clone, Copy)]
struct Geometry {
    c_in: usize,
    c_out: usize,
    h: usize,
    w: usize,
    k_h: usize,
    k_w: usize,
    padding: usize,
    dilation: usize,
    out_h: usize,
    out_w: usize,
}

impl Geometry {
    fn taps(&self) -> usize {
        self.k_h * self.k_w
    }
    fn out_pixels(&self) -> usize {
        self.out_h * self.out_w
    }
    /// The input row (or column) that output row `o` reads at tap `k`, if inside the map.
    fn source(&self, o: usize, k: usize, side: usize) -> Option<usize> {
        (o + k * self.dilation)
            .checked_sub(self.padding)
            .filter(|&i| i < side)
    }
}

impl CustomOp2 for Im2colConv {
    fn name(&self) -> &'static str {
        "conv2d-im2col"
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
        let (p, d) = (self.padding, self.dilation);
        let reach = |k: usize| (k - 1) * d + 1;
        let bias_fits = self.bias.as_ref().is_none_or(|b| b.len() == c_out);
        if w_c_in != c_in || reach(k_h) > h + 2 * p || reach(k_w) > w + 2 * p || !bias_fits {
            candle_core::bail!(
                "conv2d_im2col: input {:?}, weight {:?}, padding {p}, dilation {d} do not fit",
                xl.shape(),
                wl.shape()
            );
        }
        let g = Geometry {
            c_in,
            c_out,
            h,
            w,
            k_h,
            k_w,
            padding: p,
            dilation: d,
            out_h: h + 2 * p - reach(k_h) + 1,
            out_w: w + 2 * p - reach(k_w) + 1,
        };
        let (x, weight) = (
            contiguous_f32(xs, xl, self.name())?,
            contiguous_f32(ws, wl, self.name())?,
        );
        let image_in = c_in * h * w;
        let image_out = c_out * g.out_pixels();
        // Written whole: each image's product overwrites (or adds to the bias written over)
        // every value of its `[c_out, out_pixels]`.
        let mut out = unfilled(batch * image_out);
        let mut columns = unfilled(c_in * g.taps() * g.out_pixels());
        for (image, out) in x
            .chunks_exact(image_in)
            .zip(out.chunks_exact_mut(image_out))
        {
            unroll(&g, image, &mut columns);
            // SAFETY: `unroll` wrote every value of the columns.
            #[allow(unsafe_code)]
            let written_columns = unsafe { columns.assume_init_ref() };
            if let Some(bias) = &self.bias {
                out.par_chunks_mut(g.out_pixels())
                    .zip(bias)
                    .for_each(|(channel, &b)| channel.fill(MaybeUninit::new(b)));
            }
            multiply(&g, weight, written_columns, out, self.bias.is_some());
            if self.relu {
                // SAFETY: the product wrote every value of this image's output.
                #[allow(unsafe_code)]
                let out = unsafe { out.assume_init_mut() };
                out.par_chunks_mut(g.out_pixels())
                    .for_each(|channel| channel.iter_mut().for_each(|v| *v = v.max(0.0)));
            }
        }
        // SAFETY: every image's product wrote its whole `[c_out, out_pixels]`.
        #[allow(unsafe_code)]
        let out = unsafe { filled(out) };
        let shape = Shape::from((batch, c_out, g.out_h, g.out_w));
        Ok((CpuStorage::F32(out), shape))
    }
}

/// `columns[(i·taps + tap), pixel]` = the input channel `i` that output `pixel` reads at
/// `tap`, 0 where that falls in the padding. Every value is written.
fn unroll(g: &Geometry, image: &[f32], columns: &mut [MaybeUninit<f32>]) {
    columns
        .par_chunks_mut(g.taps() * g.out_pixels())
        .zip(image.par_chunks_exact(g.h * g.w))
        .for_each(|(rows, plane)| {
            for (tap, row) in rows.chunks_exact_mut(g.out_pixels()).enumerate() {
                let (ky, kx) = (tap / g.k_w, tap % g.k_w);
                for (oy, line) in row.chunks_exact_mut(g.out_w).enumerate() {
                    let Some(y) = g.source(oy, ky, g.h) else {
                        line.fill(MaybeUninit::new(0.0));
                        continue;
                    };
                    let input = &plane[y * g.w..][..g.w];
                    for (ox, value) in line.iter_mut().enumerate() {
                        value.write(g.source(ox, kx, g.w).map_or(0.0, |x| input[x]));
                    }
                }
            }
        });
}

/// `out [c_out, pixels] (+)= weight [c_out, c_in·taps] · columns [c_in·taps, pixels]`, the
/// product split over rayon's threads by the gemm; `out` is read only when `accumulate`
/// (its values must then have been written), and written whole either way.
#[allow(unsafe_code)]
fn multiply(
    g: &Geometry,
    weight: &[f32],
    columns: &[f32],
    out: &mut [MaybeUninit<f32>],
    accumulate: bool,
) {
    let (m, n, k) = (g.c_out, g.out_pixels(), g.c_in * g.taps());
    assert!(weight.len() == m * k && columns.len() == k * n && out.len() == m * n);
    // SAFETY: the three matrices are row-major with the sizes asserted just above, read and
    // written only inside those bounds; `out` is borrowed mutably, the others shared.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr().cast::<f32>(),
            1,
            n as isize,
            accumulate,
            weight.as_ptr(),
            1,
            k as isize,
            columns.as_ptr(),
            1,
            n as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(rayon::current_num_threads()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{max_difference, random};
    use super::*;

    fn candle_with_bias(x: &Tensor, weight: &Tensor, bias: &Tensor, p: usize, d: usize) -> Tensor {
        let c_out = bias.dims1().unwrap();
        x.conv2d(weight, p, 1, d, 1)
            .and_then(|y| y.broadcast_add(&bias.reshape((1, c_out, 1, 1))?))
            .unwrap()
    }

    #[test]
    fn matches_candles_convolution_at_every_dilation_padding_and_size() {
        // (batch, c_in, c_out, h, w, kernel, padding, dilation): U²-Net's dilated levels, a
        // map smaller than the dilation (taps wholly in the padding), odd sizes, no padding.
        let cases = [
            (1, 8, 6, 10, 10, 3, 8, 8),
            (1, 5, 7, 20, 20, 3, 2, 2),
            (2, 4, 3, 7, 9, 3, 4, 4),
            (1, 6, 5, 3, 3, 3, 1, 1),
            (2, 3, 4, 9, 6, 3, 0, 2),
            (1, 4, 4, 5, 5, 1, 0, 1),
        ];
        for (n, (batch, c_in, c_out, h, w, k, p, d)) in cases.into_iter().enumerate() {
            let seed = 10 * n as u64;
            let x = random(&[batch, c_in, h, w], seed, 1.0);
            let weight = random(&[c_out, c_in, k, k], seed + 1, 0.5);
            let bias = random(&[c_out], seed + 2, 0.5);
            let ours = conv2d(&x, &weight, Some(&bias), p, d, false).unwrap();
            let expected = candle_with_bias(&x, &weight, &bias, p, d);
            assert_eq!(ours.dims(), expected.dims(), "case {n}");
            let diff = max_difference(&ours, &expected);
            assert!(diff < 1e-4, "case {n}: differs by {diff}");
            let ours = conv2d(&x, &weight, Some(&bias), p, d, true).unwrap();
            let diff = max_difference(&ours, &expected.relu().unwrap());
            assert!(diff < 1e-4, "case {n} with ReLU: differs by {diff}");
            let unbiased = conv2d(&x, &weight, None, p, d, false).unwrap();
            let expected = x.conv2d(&weight, p, 1, d, 1).unwrap();
            assert!(
                max_difference(&unbiased, &expected) < 1e-4,
                "case {n} without bias"
            );
        }
    }

    #[test]
    fn a_kernel_that_does_not_fit_the_padded_map_is_an_error() {
        let x = random(&[1, 2, 4, 4], 1, 1.0);
        let weight = random(&[3, 2, 3, 3], 2, 1.0);
        // Reach 5 (dilation 2) over a 4-pixel side unpadded.
        assert!(conv2d(&x, &weight, None, 0, 2, false).is_err());
        let wrong_channels = random(&[3, 5, 3, 3], 3, 1.0);
        assert!(conv2d(&x, &wrong_channels, None, 1, 1, false).is_err());
    }
}
