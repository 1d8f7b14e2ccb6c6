//! Running BLIP's vision tower above its training size, as the horde does: its worker builds
//! BLIP at `image_size=512` from the 384² checkpoint, and BLIP's loader (timm's
//! `interpolate_pos_embed`, the same as transformers' `interpolate_pos_encoding`) resizes the
//! grid of patch position embeddings with PyTorch's bicubic `interpolate` (`align_corners=False`,
//! the cubic convolution with A = −0.75, edge samples repeated), the class position kept.

use candle_core::{Result, Tensor};

/// PyTorch's cubic convolution weights for the four taps around a sample at fraction `t`.
fn cubic_weights(t: f64) -> [f64; 4] {
    const A: f64 = -0.75;
    let near = |x: f64| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f64| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]
}

/// For each output index: the four source indices (clamped to the edge) and their weights.
fn taps(input: usize, output: usize) -> Vec<([usize; 4], [f64; 4])> {
    let scale = input as f64 / output as f64;
    (0..output)
        .map(|i| {
            let source = (i as f64 + 0.5) * scale - 0.5;
            let floor = source.floor();
            let index = |k: i64| (floor as i64 + k).clamp(0, input as i64 - 1) as usize;
            (
                [index(-1), index(0), index(1), index(2)],
                cubic_weights(source - floor),
            )
        })
        .collect()
}

/// `[1, 1 + g², D]` position embeddings to `[1, 1 + n², D]`: the class position, then the
/// `g × g` grid of patch positions resized to `n × n`.
pub fn interpolate(positions: &Tensor, grid: usize) -> Result<Tensor> {
    let (_, count, dim) = positions.dims3()?;
    let old = ((count - 1) as f64).sqrt().round() as usize;
    if old * old != count - 1 {
        candle_core::bail!("{} patch positions are not a square grid", count - 1);
    }
    let dtype = positions.dtype();
    let rows: Vec<Vec<f64>> = positions
        .squeeze(0)?
        .to_dtype(candle_core::DType::F64)?
        .to_vec2()?;
    let (ys, xs) = (taps(old, grid), taps(old, grid));
    let mut out = rows[0].clone();
    for (y_index, y_weight) in &ys {
        for (x_index, x_weight) in &xs {
            let mut value = vec![0f64; dim];
            for (&yi, &wy) in y_index.iter().zip(y_weight) {
                for (&xi, &wx) in x_index.iter().zip(x_weight) {
                    let source = &rows[1 + yi * old + xi];
                    value
                        .iter_mut()
                        .zip(source)
                        .for_each(|(v, s)| *v += wy * wx * s);
                }
            }
            out.extend(value);
        }
    }
    Tensor::from_vec(out, (1, 1 + grid * grid, dim), positions.device())?.to_dtype(dtype)
}
