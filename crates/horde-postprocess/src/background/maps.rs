//! The resampling between U²-Net's levels on the CPU: bilinear resizing (`F.interpolate(…,
//! mode="bilinear", align_corners=False)`) and 2×2 max pooling in ceil mode, one plane per
//! task on rayon's threads.
//!
//! candle's own ops run these on one thread, the pooling after two padding copies: with the
//! 50-odd resizes and 30-odd poolings of one 320² pass they took about 90 ms of 900 (see
//! BENCHMARKS.md, post-processors). Elsewhere than on the CPU in f32, candle's ops run.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `x` `[batch, channels, h, w]` resized to `out_h × out_w` as PyTorch's bilinear
/// interpolation with `align_corners=False` does: output pixel `i` samples the input at
/// `(i + 0.5)·in/out − 0.5`, clamped at 0.
pub(super) fn resize_bilinear(x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    if !on_cpu_in_f32(x) {
        return x.upsample_bilinear2d(out_h, out_w, false);
    }
    x.contiguous()?.apply_op1_no_bwd(&Bilinear { out_h, out_w })
}

/// `MaxPool2d(2, stride=2, ceil_mode=True)`: each output is the largest of its 2×2 window,
/// which an odd side's last row or column cuts to what is inside the map.
pub fn max_pool_ceil(x: &Tensor) -> Result<Tensor> {
    if !on_cpu_in_f32(x) {
        let (_, _, h, w) = x.dims4()?;
        // Repeating the edge pools the last row or column alone, since max(v, v) = v.
        return x
            .pad_with_same(2, 0, h % 2)?
            .pad_with_same(3, 0, w % 2)?
            .max_pool2d(2);
    }
    x.contiguous()?.apply_op1_no_bwd(&MaxPoolCeil)
}

fn on_cpu_in_f32(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// `[batch, channels, h, w]`.
type Dims4 = (usize, usize, usize, usize);

/// The planes of a contiguous `[batch, channels, h, w]` input, and its sizes.
fn planes<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<(&'a [f32], Dims4)> {
    let dims = layout.shape().dims4()?;
    let values = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok((&values[start..end], dims)),
        None => candle_core::bail!("{op} needs a contiguous input"),
    }
}

/// Where one output row (or column) samples its input: the two neighbours and their weights.
struct Sample {
    near: usize,
    far: usize,
    near_weight: f32,
    far_weight: f32,
}

/// PyTorch's `area_pixel_compute_source_index` with `align_corners=False` and no scale
/// factor given: the scale is `in/out` in f32.
fn samples(input: usize, output: usize) -> Vec<Sample> {
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|i| {
            let source = ((i as f32 + 0.5) * scale - 0.5).max(0.0);
            let near = (source as usize).min(input - 1);
            let far = (near + 1).min(input - 1);
            let far_weight = source - near as f32;
            Sample {
                near,
                far,
                near_weight: 1.0 - far_weight,
                far_weight,
            }
        })
        .collect()
}

struct Bilinear {
    out_h: usize,
    out_w: usize,
}

impl CustomOp1 for Bilinear {
    fn name(&self) -> &'static str {
        "resize-bilinear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, (batch, channels, h, w)) = planes(storage, layout, self.name())?;
        let (out_h, out_w) = (self.out_h, self.out_w);
        if h == 0 || w == 0 || out_h == 0 || out_w == 0 {
            candle_core::bail!("resize-bilinear: {h}×{w} to {out_h}×{out_w}");
        }
        let (rows, columns) = (samples(h, out_h), samples(w, out_w));
        let mut out = vec![0f32; batch * channels * out_h * out_w];
        out.par_chunks_mut(out_h * out_w)
            .zip(x.par_chunks(h * w))
            .for_each(|(plane_out, plane)| {
                for (row, line) in rows.iter().zip(plane_out.chunks_exact_mut(out_w)) {
                    let near = &plane[row.near * w..][..w];
                    let far = &plane[row.far * w..][..w];
                    for (column, value) in columns.iter().zip(line.iter_mut()) {
                        let across = |line: &[f32]| {
                            column.near_weight * line[column.near]
                                + column.far_weight * line[column.far]
                        };
                        *value = row.near_weight * across(near) + row.far_weight * across(far);
                    }
                }
            });
        let shape = Shape::from((batch, channels, out_h, out_w));
        Ok((CpuStorage::F32(out), shape))
    }
}

struct MaxPoolCeil;

impl CustomOp1 for MaxPoolCeil {
    fn name(&self) -> &'static str {
        "max-pool-ceil"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, (batch, channels, h, w)) = planes(storage, layout, self.name())?;
        let (out_h, out_w) = (h.div_ceil(2), w.div_ceil(2));
        let mut out = vec![0f32; batch * channels * out_h * out_w];
        out.par_chunks_mut(out_h * out_w.max(1))
            .zip(x.par_chunks(h * w.max(1)))
            .for_each(|(plane_out, plane)| {
                for (y, line) in plane_out.chunks_exact_mut(out_w).enumerate() {
                    let top = &plane[2 * y * w..][..w];
                    let bottom = &plane[(2 * y + 1).min(h - 1) * w..][..w];
                    for (x, value) in line.iter_mut().enumerate() {
                        let (left, right) = (2 * x, (2 * x + 1).min(w - 1));
                        *value = top[left]
                            .max(top[right])
                            .max(bottom[left].max(bottom[right]));
                    }
                }
            });
        let shape = Shape::from((batch, channels, out_h, out_w));
        Ok((CpuStorage::F32(out), shape))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Values spread over [-1, 1] without a pattern a resize or a pooling would line up with.
    fn random(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|i| (i as f32 * 0.737 + seed as f32 * 1.3).sin())
            .collect();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }

    use crate::test_support::max_difference;

    #[test]
    fn bilinear_resizing_matches_candles_pytorch_compatible_kernel() {
        // Twice the size (U²-Net's levels), odd sizes up and down, and one side unchanged.
        let cases = [
            ((2, 3, 10, 10), (20, 20)),
            ((1, 2, 5, 7), (10, 13)),
            ((1, 4, 40, 40), (320, 320)),
            ((1, 1, 9, 6), (4, 6)),
            ((1, 2, 1, 1), (3, 2)),
        ];
        for (n, (shape, (out_h, out_w))) in cases.into_iter().enumerate() {
            let x = random(&[shape.0, shape.1, shape.2, shape.3], n as u64);
            let ours = resize_bilinear(&x, out_h, out_w).unwrap();
            let candles = x.upsample_bilinear2d(out_h, out_w, false).unwrap();
            assert_eq!(ours.dims(), candles.dims(), "case {n}");
            let diff = max_difference(&ours, &candles);
            assert!(diff < 1e-5, "case {n}: differs by {diff}");
        }
    }

    #[test]
    fn ceil_mode_pooling_takes_each_windows_largest_value_and_the_edges_alone() {
        for (n, (h, w)) in [(8, 8), (7, 5), (1, 3), (20, 21)].into_iter().enumerate() {
            let x = random(&[2, 3, h, w], 10 + n as u64);
            let ours = max_pool_ceil(&x).unwrap();
            let padded = x
                .pad_with_same(2, 0, h % 2)
                .unwrap()
                .pad_with_same(3, 0, w % 2)
                .unwrap();
            let expected = padded.max_pool2d(2).unwrap();
            assert_eq!(ours.dims(), &[2, 3, h.div_ceil(2), w.div_ceil(2)]);
            assert_eq!(max_difference(&ours, &expected), 0.0, "{h}×{w}");
        }
        // By hand: the last column of a 2×3 map is pooled alone.
        let x = Tensor::new(&[[[[1f32, 5., -2.], [3., 0., -7.]]]], &Device::Cpu).unwrap();
        let pooled: Vec<f32> = max_pool_ceil(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(pooled, [5., -2.]);
    }
}
