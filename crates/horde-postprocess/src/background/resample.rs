//! PIL's Lanczos resize of 8-bit images (`Image.resize(size, Image.LANCZOS)`, Pillow's
//! `Resample.c`), reproduced to the bit: rembg resizes both ways with it, and the `image`
//! crate's Lanczos3, though the same filter, rounds differently (it resizes vertically first
//! and keeps the intermediate in f32, where PIL resizes one way then the other through an
//! 8-bit intermediate with 22-bit fixed-point weights), which moved the tiny u2netp fixture's
//! mask by up to 8 levels. The loops run over bytes: there is no tensor op for a windowed sinc, and
//! a resize is a small part of the work (the network at 320² or 1024² is the rest).

use image::{ImageBuffer, Pixel};

/// Pillow's `PRECISION_BITS` for 8-bit images: weights are integers scaled by 2^22.
const PRECISION_BITS: u32 = 32 - 8 - 2;
/// The Lanczos window's radius.
const SUPPORT: f64 = 3.0;

/// `image` resized to `width` × `height` as PIL's `resize(…, LANCZOS)` does.
pub fn resize_lanczos<P>(
    image: &ImageBuffer<P, Vec<u8>>,
    width: u32,
    height: u32,
) -> ImageBuffer<P, Vec<u8>>
where
    P: Pixel<Subpixel = u8>,
{
    let channels = usize::from(P::CHANNEL_COUNT);
    let (in_w, in_h) = (image.width() as usize, image.height() as usize);
    let (out_w, out_h) = (width as usize, height as usize);
    let mut pixels = image.as_raw().clone();
    let horizontally = |pixels: &[u8], rows: usize| {
        resample_rows(pixels, rows, in_w, channels, &Taps::new(in_w, out_w))
    };
    let vertically = |pixels: &[u8], width: usize| {
        resample_columns(pixels, width, channels, &Taps::new(in_h, out_h))
    };
    // Pillow 13 (`ImagingResampleInner`) runs the vertical pass first when the height loses
    // more than twice as many pixels as the width: 320² → 400×300 does, 400×300 → 320² and
    // 320² → 133×101 do not.
    let (lost_h, lost_w) = (in_h as i64 - out_h as i64, in_w as i64 - out_w as i64);
    let vertical_first = lost_h > 0 && lost_h > 2 * lost_w;
    if vertical_first {
        if out_h != in_h {
            pixels = vertically(&pixels, in_w);
        }
        if out_w != in_w {
            pixels = horizontally(&pixels, out_h);
        }
    } else {
        if out_w != in_w {
            pixels = horizontally(&pixels, in_h);
        }
        if out_h != in_h {
            pixels = vertically(&pixels, out_w);
        }
    }
    ImageBuffer::from_raw(width, height, pixels).expect("width × height pixels")
}

/// For each output position, the first input position it reads and its fixed-point weights
/// (Pillow's `precompute_coeffs` and `normalize_coeffs_8bpc`).
struct Taps {
    first: Vec<usize>,
    weights: Vec<Vec<i32>>,
}

impl Taps {
    fn new(in_size: usize, out_size: usize) -> Taps {
        let scale = in_size as f64 / out_size as f64;
        let filter_scale = scale.max(1.0);
        let inverse_filter_scale = 1.0 / filter_scale;
        let support = SUPPORT * filter_scale;
        let (mut first, mut weights) = (Vec::with_capacity(out_size), Vec::with_capacity(out_size));
        for out in 0..out_size {
            let center = (out as f64 + 0.5) * scale;
            // C's (int) casts truncate toward zero; the clamps make that a floor here.
            let lo = ((center - support + 0.5) as i64).max(0) as usize;
            let hi = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let raw: Vec<f64> = (lo..hi)
                .map(|x| lanczos((x as f64 - center + 0.5) * inverse_filter_scale))
                .collect();
            let total: f64 = raw.iter().sum();
            let fixed = raw
                .iter()
                .map(|&w| {
                    let w = if total != 0.0 { w / total } else { w };
                    let scaled = w * f64::from(1u32 << PRECISION_BITS);
                    (if w < 0.0 { scaled - 0.5 } else { scaled + 0.5 }) as i32
                })
                .collect();
            first.push(lo);
            weights.push(fixed);
        }
        Taps { first, weights }
    }

    /// One output value from `read(i)` of the taps' input positions, rounded and clamped.
    fn apply(&self, out: usize, read: impl Fn(usize) -> u8) -> u8 {
        let mut sum: i32 = 1 << (PRECISION_BITS - 1);
        for (i, &w) in self.weights[out].iter().enumerate() {
            sum = sum.wrapping_add(i32::from(read(self.first[out] + i)).wrapping_mul(w));
        }
        clip8(sum)
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

fn lanczos(x: f64) -> f64 {
    if (-SUPPORT..SUPPORT).contains(&x) {
        sinc(x) * sinc(x / SUPPORT)
    } else {
        0.0
    }
}

fn clip8(value: i32) -> u8 {
    if value >= (1 << PRECISION_BITS << 8) {
        255
    } else if value <= 0 {
        0
    } else {
        (value >> PRECISION_BITS) as u8
    }
}

/// The horizontal pass: each row resized to `taps`' output width.
fn resample_rows(pixels: &[u8], rows: usize, in_w: usize, channels: usize, taps: &Taps) -> Vec<u8> {
    let out_w = taps.first.len();
    let mut out = Vec::with_capacity(rows * out_w * channels);
    for row in pixels.chunks_exact(in_w * channels).take(rows) {
        for x in 0..out_w {
            for c in 0..channels {
                out.push(taps.apply(x, |i| row[i * channels + c]));
            }
        }
    }
    out
}

/// The vertical pass: each column resized to `taps`' output height.
fn resample_columns(pixels: &[u8], width: usize, channels: usize, taps: &Taps) -> Vec<u8> {
    let out_h = taps.first.len();
    let stride = width * channels;
    let mut out = Vec::with_capacity(out_h * stride);
    for y in 0..out_h {
        for offset in 0..stride {
            out.push(taps.apply(y, |i| pixels[i * stride + offset]));
        }
    }
    out
}
