//! The OpenCV operations the alignment and paste-back need: `warpAffine` (bilinear, constant
//! border), `erode` with a square of ones, and `GaussianBlur` with the kernel size giving
//! sigma, on f32 planes (`[H, W, C]` row-major; 0..255 values or a 0..1 mask).
//!
//! These are loops over slices, not candle ops: candle has no remap, and the warp written as
//! whole-tensor ops (f64 coordinates, four `index_select` gathers, broadcast weights) took
//! 125 ms for a 600² RGB output, the blur as a 1-channel `conv2d` 140 ms at 41 taps; the loops
//! below take a few milliseconds each, and give the same values (the same f32 arithmetic).
//!
//! The OpenCV that facexlib runs on (5.x) computes warp coordinates in floating point, not in
//! the 1/32-pixel fixed point of older releases: exact coordinates here agree with it to one
//! 8-bit level on a few pixels (its rounding of the interpolated value).

use super::Affine;
use crate::{Error, Result};

/// An image or mask: `height × width × channels` f32 values, row by row.
#[derive(Debug, Clone, PartialEq)]
pub struct Plane {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub data: Vec<f32>,
}

impl Plane {
    pub fn filled(width: usize, height: usize, channels: usize, value: f32) -> Plane {
        Plane {
            width,
            height,
            channels,
            data: vec![value; width * height * channels],
        }
    }
}

/// `cv2.warpAffine(src, m, (out_w, out_h), INTER_LINEAR, BORDER_CONSTANT, border)`: the
/// output pixel `(x, y)` samples `src` at `m⁻¹·(x, y)` bilinearly, neighbours outside `src`
/// taking the `border` colour. Unrounded.
pub fn warp_affine(
    src: &Plane,
    m: &Affine,
    out_h: usize,
    out_w: usize,
    border: &[f32],
) -> Result<Plane> {
    let c = src.channels;
    if border.len() != c || src.data.len() != src.width * src.height * c {
        return Err(invalid(format!(
            "a warp of a {}×{}×{c} plane holding {} values, with {} border values",
            src.width,
            src.height,
            src.data.len(),
            border.len()
        )));
    }
    let [[a, b, tx], [d, e, ty]] = m.invert().0;
    let mut out = Plane::filled(out_w, out_h, c, 0.0);
    let (w, h) = (src.width as i64, src.height as i64);
    let pixel = |x: i64, y: i64| -> &[f32] {
        if x < 0 || y < 0 || x >= w || y >= h {
            border
        } else {
            let at = (y as usize * src.width + x as usize) * c;
            &src.data[at..at + c]
        }
    };
    for (y, row) in out.data.chunks_exact_mut(out_w * c).enumerate() {
        let (row_x, row_y) = (b * y as f64 + tx, e * y as f64 + ty);
        for (x, dst) in row.chunks_exact_mut(c).enumerate() {
            let (sx, sy) = (a * x as f64 + row_x, d * x as f64 + row_y);
            let (x0, y0) = (sx.floor(), sy.floor());
            let (fx, fy) = ((sx - x0) as f32, (sy - y0) as f32);
            // far outside, every neighbour is border: clamping keeps the casts in range
            let (x0, y0) = (
                x0.clamp(-2.0, w as f64) as i64,
                y0.clamp(-2.0, h as f64) as i64,
            );
            let [top_left, top_right, bottom_left, bottom_right] = [
                pixel(x0, y0),
                pixel(x0 + 1, y0),
                pixel(x0, y0 + 1),
                pixel(x0 + 1, y0 + 1),
            ];
            for (k, v) in dst.iter_mut().enumerate() {
                // OpenCV 5's float form: two horizontal lerps, then a vertical one (a constant
                // stays exactly constant, which the four-weight sum does not promise)
                let top = top_left[k] + (top_right[k] - top_left[k]) * fx;
                let bottom = bottom_left[k] + (bottom_right[k] - bottom_left[k]) * fx;
                *v = top + (bottom - top) * fy;
            }
        }
    }
    Ok(out)
}

/// `cv2.erode(mask, np.ones((k, k)))` on a one-channel plane: the minimum over a `k × k`
/// window anchored at `k / 2`, the outside of the image ignored. An empty kernel (`k = 0`)
/// is OpenCV's default 3 × 3.
pub fn erode(mask: &Plane, k: usize) -> Plane {
    let k = if k == 0 { 3 } else { k };
    let rows = along_rows(mask, |line, out| sliding_min(line, k, out));
    along_columns(&rows, |line, out| sliding_min(line, k, out))
}

/// `cv2.GaussianBlur(mask, (k, k), 0)` on a one-channel plane (k odd), borders reflected
/// without repeating the edge (`BORDER_REFLECT_101`).
pub fn gaussian_blur(mask: &Plane, k: usize) -> Result<Plane> {
    if k.is_multiple_of(2) {
        return Err(invalid(format!("a Gaussian kernel of even size {k}")));
    }
    if k == 1 {
        return Ok(mask.clone());
    }
    let kernel = gaussian_kernel(k);
    let rows = along_rows(mask, |line, out| {
        convolve_reflect_101(line, &kernel, out, false)
    });
    Ok(along_columns(&rows, |line, out| {
        convolve_reflect_101(line, &kernel, out, true)
    }))
}

fn invalid(reason: String) -> Error {
    Error::Run(candle_core::Error::Msg(reason))
}

/// `f` on every row of a one-channel plane.
fn along_rows(plane: &Plane, f: impl Fn(&[f32], &mut [f32])) -> Plane {
    let mut out = Plane::filled(plane.width, plane.height, 1, 0.0);
    for (line, dst) in plane
        .data
        .chunks_exact(plane.width)
        .zip(out.data.chunks_exact_mut(plane.width))
    {
        f(line, dst);
    }
    out
}

/// `f` on every column of a one-channel plane.
fn along_columns(plane: &Plane, f: impl Fn(&[f32], &mut [f32])) -> Plane {
    let (w, h) = (plane.width, plane.height);
    let mut out = Plane::filled(w, h, 1, 0.0);
    let (mut line, mut result) = (vec![0.0; h], vec![0.0; h]);
    for x in 0..w {
        for (y, v) in line.iter_mut().enumerate() {
            *v = plane.data[y * w + x];
        }
        f(&line, &mut result);
        for (y, v) in result.iter().enumerate() {
            out.data[y * w + x] = *v;
        }
    }
    out
}

/// `out[i] = min(line[i − k/2 ..= i − k/2 + k − 1])`, positions outside ignored, in O(1) a
/// value (van Herk / Gil–Werman: block prefix and suffix minima).
fn sliding_min(line: &[f32], k: usize, out: &mut [f32]) {
    let before = k / 2;
    let mut padded = vec![f32::INFINITY; line.len() + k - 1];
    padded[before..before + line.len()].copy_from_slice(line);
    let n = padded.len();
    let (mut prefix, mut suffix) = (padded.clone(), padded.clone());
    for j in 1..n {
        if j % k != 0 {
            prefix[j] = prefix[j].min(prefix[j - 1]);
        }
    }
    for j in (0..n - 1).rev() {
        if (j + 1) % k != 0 {
            suffix[j] = suffix[j].min(suffix[j + 1]);
        }
    }
    for (i, v) in out.iter_mut().enumerate() {
        *v = suffix[i].min(prefix[i + k - 1]);
    }
}

/// `line` convolved with the symmetric `kernel`, reflected at both ends (`dcb|abcd|cba`).
/// OpenCV sums a row filter's taps in order and a symmetric column filter's in pairs
/// (`k₀·x₀ + Σ kⱼ·(x₋ⱼ + xⱼ)`); `paired` follows the latter, so that the f32 sums round as
/// OpenCV's do and values that are 1 in exact arithmetic land on the same side of 1.
fn convolve_reflect_101(line: &[f32], kernel: &[f32], out: &mut [f32], paired: bool) {
    let r = kernel.len() / 2;
    let padded: Vec<f32> = reflect_101(line.len(), r)
        .into_iter()
        .map(|i| line[i])
        .collect();
    for (i, v) in out.iter_mut().enumerate() {
        let window = &padded[i..i + kernel.len()];
        *v = if paired {
            (1..=r).fold(kernel[r] * window[r], |sum, j| {
                sum + kernel[r + j] * (window[r - j] + window[r + j])
            })
        } else {
            window
                .iter()
                .zip(kernel)
                .fold(0.0, |sum, (a, b)| sum + a * b)
        };
    }
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

/// Indices `−pad .. n + pad` reflected into `0 .. n` as `BORDER_REFLECT_101` does.
fn reflect_101(n: usize, pad: usize) -> Vec<usize> {
    let last = n as i64 - 1;
    (-(pad as i64)..n as i64 + pad as i64)
        .map(|mut i| {
            if last == 0 {
                return 0;
            }
            while i < 0 || i > last {
                i = if i < 0 { -i } else { 2 * last - i };
            }
            i as usize
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_min_is_the_windowed_minimum_with_the_outside_ignored() {
        let line = [5.0, 3.0, 4.0, 1.0, 6.0, 2.0, 7.0];
        for k in 1..=8 {
            let mut fast = vec![0.0; line.len()];
            sliding_min(&line, k, &mut fast);
            let naive: Vec<f32> = (0..line.len() as i64)
                .map(|i| {
                    let from = (i - (k / 2) as i64).max(0) as usize;
                    let to = ((i - (k / 2) as i64 + k as i64) as usize).min(line.len());
                    line[from..to].iter().cloned().fold(f32::INFINITY, f32::min)
                })
                .collect();
            assert_eq!(fast, naive, "k = {k}");
        }
    }

    #[test]
    fn reflection_skips_the_edge_pixel() {
        assert_eq!(reflect_101(4, 3), [3, 2, 1, 0, 1, 2, 3, 2, 1, 0]);
        assert_eq!(reflect_101(1, 2), [0; 5]);
    }

    #[test]
    fn gaussian_kernels_sum_to_one() {
        for k in [3, 5, 7, 9, 11, 41] {
            let sum: f32 = gaussian_kernel(k).iter().sum();
            assert!((sum - 1.0).abs() < 1e-6, "{k}: {sum}");
        }
    }
}
