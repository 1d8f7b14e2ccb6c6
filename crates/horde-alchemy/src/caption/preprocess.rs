//! `BlipImageProcessor`'s preprocessing: PIL's bicubic resize to a square, rescale to [0, 1],
//! normalise with the CLIP mean and deviation, channels first.
//!
//! The resize is PIL's own `ImagingResample` for 8-bit images rather than `image`'s filter: the
//! horde's BLIP resizes a PIL image (torchvision's `Resize` hands PIL images to PIL) and
//! transformers' PIL backend does the same, so the network sees PIL's bytes. PIL filters each
//! axis with a bicubic kernel (a = −0.5) widened by the downscale factor (antialiasing),
//! normalises the weights, turns them into 22-bit fixed point and rounds each pass to 8 bits:
//! horizontal first, then vertical.

use super::config::ImageProcessing;
use candle_core::{Device, Tensor};
use image::RgbImage;

/// PIL's fixed-point precision for 8-bit resampling (`PRECISION_BITS`).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// PIL's bicubic kernel with a = −0.5; support 2.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// One output pixel's source window: the first source index and its fixed-point weights.
struct Taps {
    first: usize,
    weights: Vec<i64>,
}

/// PIL's `precompute_coeffs` + `normalize_coeffs_8bpc` for resizing `input` samples to `output`.
fn coefficients(input: usize, output: usize) -> Vec<Taps> {
    let scale = input as f64 / output as f64;
    let filter_scale = scale.max(1.0);
    let support = 2.0 * filter_scale;
    (0..output)
        .map(|i| {
            let center = (i as f64 + 0.5) * scale;
            let lo = ((center - support + 0.5) as i64).max(0) as usize;
            let hi = ((center + support + 0.5) as i64).min(input as i64) as usize;
            let raw: Vec<f64> = (lo..hi)
                .map(|x| bicubic((x as f64 - center + 0.5) / filter_scale))
                .collect();
            let total: f64 = raw.iter().sum();
            let weights = raw
                .iter()
                .map(|w| {
                    let w = if total != 0.0 { w / total } else { *w };
                    let fixed = w * f64::from(1u32 << PRECISION_BITS);
                    (if w < 0.0 { fixed - 0.5 } else { fixed + 0.5 }) as i64
                })
                .collect();
            Taps { first: lo, weights }
        })
        .collect()
}

/// PIL's `clip8`: the fixed-point sum back to a byte.
fn clip8(sum: i64) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One separable pass over interleaved RGB rows: resizes along x when `horizontal`, else y.
fn pass(src: &[u8], (w, h): (usize, usize), out_len: usize, horizontal: bool) -> Vec<u8> {
    let taps = coefficients(if horizontal { w } else { h }, out_len);
    let (ow, oh) = if horizontal {
        (out_len, h)
    } else {
        (w, out_len)
    };
    let mut out = vec![0u8; ow * oh * 3];
    for y in 0..oh {
        for x in 0..ow {
            let tap = &taps[if horizontal { x } else { y }];
            for c in 0..3 {
                let mut sum: i64 = 1 << (PRECISION_BITS - 1);
                for (k, weight) in tap.weights.iter().enumerate() {
                    let (sx, sy) = if horizontal {
                        (tap.first + k, y)
                    } else {
                        (x, tap.first + k)
                    };
                    sum += i64::from(src[(sy * w + sx) * 3 + c]) * weight;
                }
                out[(y * ow + x) * 3 + c] = clip8(sum);
            }
        }
    }
    out
}

/// PIL's `Image.resize((width, height), Image.BICUBIC)` of an RGB image.
pub fn resize_bicubic(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let mut data = image.as_raw().clone();
    let mut current_w = w;
    if width as usize != w {
        data = pass(&data, (w, h), width as usize, true);
        current_w = width as usize;
    }
    if height as usize != h {
        data = pass(&data, (current_w, h), height as usize, false);
    }
    RgbImage::from_raw(width, height, data).expect("the passes produce width × height × 3 bytes")
}

/// The processor's `pixel_values` `[1, 3, size, size]` for an image.
pub fn pixel_values(
    image: &RgbImage,
    processing: &ImageProcessing,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let size = processing.size;
    let resized = resize_bicubic(image, size as u32, size as u32);
    let mut values = vec![0f32; 3 * size * size];
    for (i, pixel) in resized.pixels().enumerate() {
        for c in 0..3 {
            let scaled = (f64::from(pixel[c]) * processing.rescale_factor) as f32;
            let normalised = (f64::from(scaled) - processing.mean[c]) / processing.std[c];
            values[c * size * size + i] = normalised as f32;
        }
    }
    Tensor::from_vec(values, (1, 3, size, size), device)
}
