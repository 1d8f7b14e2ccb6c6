//! The OpenCV operations the alignment and paste-back need, on whole tensors: `warpAffine`
//! (bilinear, constant border), `erode` with a square of ones, and `GaussianBlur` with the
//! kernel size giving sigma. Images are `[H, W, C]` f32 (values 0..255 or a 0..1 mask).
//!
//! The OpenCV that facexlib runs on (5.x) computes warp coordinates in floating point, not in
//! the 1/32-pixel fixed point of older releases: exact coordinates here agree with it to one
//! 8-bit level on a few pixels (its rounding of the interpolated value).

use super::Affine;
use candle_core::{DType, Result, Tensor};

/// `cv2.warpAffine(src, m, (out_w, out_h), INTER_LINEAR, BORDER_CONSTANT, border)`: the
/// output pixel `(x, y)` samples `src` at `m⁻¹·(x, y)` bilinearly, neighbours outside `src`
/// taking the `border` colour. Unrounded.
pub fn warp_affine(
    src: &Tensor,
    m: &Affine,
    out_h: usize,
    out_w: usize,
    border: &[f32],
) -> Result<Tensor> {
    let (h, w, c) = src.dims3()?;
    if border.len() != c {
        candle_core::bail!("a border of {} values for {c} channels", border.len());
    }
    let device = src.device();
    let [[a, b, tx], [d, e, ty]] = m.invert().0;
    let xs = Tensor::arange(0u32, out_w as u32, device)?
        .to_dtype(DType::F64)?
        .reshape((1, out_w))?;
    let ys = Tensor::arange(0u32, out_h as u32, device)?
        .to_dtype(DType::F64)?
        .reshape((out_h, 1))?;
    let sx = (&xs * a)?.broadcast_add(&((&ys * b)? + tx)?)?;
    let sy = (&xs * d)?.broadcast_add(&((&ys * e)? + ty)?)?;
    let (x0, y0) = (sx.floor()?, sy.floor()?);
    let fx = (&sx - &x0)?
        .to_dtype(DType::F32)?
        .reshape((out_h * out_w, 1))?;
    let fy = (&sy - &y0)?
        .to_dtype(DType::F32)?
        .reshape((out_h * out_w, 1))?;

    // `src` framed by one pixel of border colour: a neighbour outside the image is clamped
    // onto the frame, so it reads the border.
    let padded = with_border(src, border)?.reshape(((h + 2) * (w + 2), c))?;
    let column = |x: &Tensor| x.clamp(-1.0, w as f64)? + 1.0;
    let row = |y: &Tensor| y.clamp(-1.0, h as f64)? + 1.0;
    let (c0, c1) = (column(&x0)?, column(&(&x0 + 1.0)?)?);
    let (r0, r1) = (row(&y0)?, row(&(&y0 + 1.0)?)?);
    let gather = |r: &Tensor, col: &Tensor| -> Result<Tensor> {
        let index = ((r * (w + 2) as f64)? + col)?
            .to_dtype(DType::U32)?
            .flatten_all()?;
        padded.index_select(&index, 0)
    };
    let (one_x, one_y) = ((1.0 - &fx)?, (1.0 - &fy)?);
    let out = (gather(&r0, &c0)?.broadcast_mul(&(&one_x * &one_y)?)?
        + gather(&r0, &c1)?.broadcast_mul(&(&fx * &one_y)?)?)?;
    let out = (out
        + gather(&r1, &c0)?.broadcast_mul(&(&one_x * &fy)?)?
        + gather(&r1, &c1)?.broadcast_mul(&(&fx * &fy)?)?)?;
    out.reshape((out_h, out_w, c))
}

/// `[H, W, C]` → `[H + 2, W + 2, C]` with a one-pixel frame of `border`.
fn with_border(src: &Tensor, border: &[f32]) -> Result<Tensor> {
    let (h, w, c) = src.dims3()?;
    let frame = |t: &Tensor| t.pad_with_zeros(0, 1, 1)?.pad_with_zeros(1, 1, 1);
    let inside = frame(&Tensor::ones((h, w, 1), DType::F32, src.device())?)?;
    let colour = Tensor::new(border, src.device())?.reshape((1, 1, c))?;
    frame(src)? + (1.0 - inside)?.broadcast_mul(&colour)?
}

/// `cv2.erode(mask, np.ones((k, k)))` on `[H, W]`: the minimum over a `k × k` window anchored
/// at `k / 2`, the outside of the image ignored. An empty kernel (`k = 0`) is OpenCV's default
/// 3 × 3.
pub fn erode(mask: &Tensor, k: usize) -> Result<Tensor> {
    let k = if k == 0 { 3 } else { k };
    let (before, after) = (k / 2, k - 1 - k / 2);
    // min(x) = −max(−x); shifted into [1, 3] so that the zero padding never wins the max
    let shifted = (2.0 - mask.unsqueeze(0)?.unsqueeze(0)?)?;
    let rows = shifted
        .pad_with_zeros(3, before, after)?
        .max_pool2d_with_stride((1, k), (1, 1))?;
    let both = rows
        .pad_with_zeros(2, before, after)?
        .max_pool2d_with_stride((k, 1), (1, 1))?;
    (2.0 - both)?.squeeze(0)?.squeeze(0)
}

/// `cv2.GaussianBlur(mask, (k, k), 0)` on `[H, W]` (k odd), borders reflected without
/// repeating the edge (`BORDER_REFLECT_101`).
pub fn gaussian_blur(mask: &Tensor, k: usize) -> Result<Tensor> {
    if k.is_multiple_of(2) {
        candle_core::bail!("a Gaussian kernel of even size {k}");
    }
    if k == 1 {
        return Ok(mask.clone());
    }
    let (h, w) = mask.dims2()?;
    let device = mask.device();
    let kernel = Tensor::new(gaussian_kernel(k), device)?;
    let r = k / 2;
    let x = mask.unsqueeze(0)?.unsqueeze(0)?;
    let x = x.index_select(&Tensor::new(reflect_101(w, r), device)?, 3)?;
    let x = x.conv2d(&kernel.reshape((1, 1, 1, k))?, 0, 1, 1, 1)?;
    let x = x.index_select(&Tensor::new(reflect_101(h, r), device)?, 2)?;
    let x = x.conv2d(&kernel.reshape((1, 1, k, 1))?, 0, 1, 1, 1)?;
    x.squeeze(0)?.squeeze(0)
}

/// OpenCV's `getGaussianKernel(k, 0)`: its fixed tables up to 9 taps, otherwise
/// `exp(−x²/2σ²)` normalised, σ = 0.3·((k − 1)/2 − 1) + 0.8.
fn gaussian_kernel(k: usize) -> Vec<f32> {
    let table: &[f32] = match k {
        3 => &[0.25, 0.5, 0.25],
        5 => &[0.0625, 0.25, 0.375, 0.25, 0.0625],
        7 => &[
            0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125,
        ],
        9 => &[4., 13., 30., 51., 60., 51., 30., 13., 4.],
        _ => &[],
    };
    if !table.is_empty() {
        let sum: f32 = table.iter().sum();
        return table.iter().map(|v| v / sum).collect();
    }
    let sigma = 0.3 * ((k as f64 - 1.0) * 0.5 - 1.0) + 0.8;
    let centre = (k / 2) as f64;
    let values: Vec<f64> = (0..k)
        .map(|i| (-(i as f64 - centre).powi(2) / (2.0 * sigma * sigma)).exp())
        .collect();
    let sum: f64 = values.iter().sum();
    values.iter().map(|v| (v / sum) as f32).collect()
}

/// Indices `−pad .. n + pad` reflected into `0 .. n` as `BORDER_REFLECT_101` does
/// (`dcb|abcd|cba`).
fn reflect_101(n: usize, pad: usize) -> Vec<u32> {
    let last = n as i64 - 1;
    (-(pad as i64)..n as i64 + pad as i64)
        .map(|mut i| {
            if last == 0 {
                return 0;
            }
            while i < 0 || i > last {
                i = if i < 0 { -i } else { 2 * last - i };
            }
            i as u32
        })
        .collect()
}
