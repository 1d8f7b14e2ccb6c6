//! `CLIPImageProcessor`'s preprocessing, exactly (of an RGB image: an alpha channel is dropped,
//! as PIL's `convert("RGB")` and the `image` crate's `to_rgb8` both do): the shortest side resized to 224 with PIL's
//! bicubic filter, a 224² centre crop, then `x / 255`, minus CLIP's mean, over its standard
//! deviation. transformers resizes through PIL (`CLIPImageProcessorPil`, and the slow processor
//! every diffusers pipeline's `feature_extractor` was), and PIL resamples in 8-bit fixed point
//! with an 8-bit intermediate image between its horizontal and vertical passes, so a float
//! bicubic (the `image` crate's, or torchvision's) lands a level or two away on many pixels.
//! [`resize_bicubic`] is a port of Pillow's `Resample.c` (`precompute_coeffs`,
//! `normalize_coeffs_8bpc`, the two 8-bit passes) and matches it to the level (the fixtures).

use candle_core::{Device, Tensor};
use image::RgbImage;

use crate::clip::{ClipError, Result};

/// CLIP's normalisation (`OPENAI_CLIP_MEAN`, `OPENAI_CLIP_STD` in transformers).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// See [`CLIP_MEAN`].
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// The preprocessing settings (`preprocessor_config.json`'s `shortest_edge`, `crop_size`,
/// `image_mean`, `image_std`); [`Preprocess::clip`] is openai/clip-vit-large-patch14's.
#[derive(Clone, Debug, PartialEq)]
pub struct Preprocess {
    /// The shortest side after resizing.
    pub shortest_edge: u32,
    /// The side of the square centre crop.
    pub crop: u32,
    /// Per-channel mean, subtracted after scaling to [0, 1].
    pub mean: [f32; 3],
    /// Per-channel standard deviation, divided by last.
    pub std: [f32; 3],
}

impl Preprocess {
    /// ViT-L/14's (and the safety checker's) settings: 224, 224, CLIP's mean and std.
    pub fn clip() -> Self {
        Preprocess {
            shortest_edge: 224,
            crop: 224,
            mean: CLIP_MEAN,
            std: CLIP_STD,
        }
    }

    /// The resized and cropped 8-bit image, before scaling and normalisation.
    pub fn crop_image(&self, image: &RgbImage) -> Result<RgbImage> {
        if image.width() == 0 || image.height() == 0 {
            return Err(ClipError::Image(format!(
                "an empty {}x{} image",
                image.width(),
                image.height()
            )));
        }
        let (width, height) = shortest_edge_size(image.width(), image.height(), self.shortest_edge);
        if width < self.crop || height < self.crop {
            return Err(ClipError::Image(format!(
                "a {}x{} image resizes to {width}x{height}, smaller than the {} crop",
                image.width(),
                image.height(),
                self.crop
            )));
        }
        let resized = resize_bicubic(image, width, height);
        Ok(center_crop(&resized, self.crop))
    }

    /// `pixel_values` of one image: `[1, 3, crop, crop]` float32 on `device`.
    pub fn pixel_values(&self, image: &RgbImage, device: &Device) -> Result<Tensor> {
        let cropped = self.crop_image(image)?;
        let side = self.crop as usize;
        let mut planes = vec![0f32; 3 * side * side];
        for (index, pixel) in cropped.pixels().enumerate() {
            for channel in 0..3 {
                let scaled = f32::from(pixel[channel]) * (1.0 / 255.0);
                planes[channel * side * side + index] =
                    (scaled - self.mean[channel]) / self.std[channel];
            }
        }
        Ok(Tensor::from_vec(planes, (1, 3, side, side), device)?)
    }
}

/// transformers' `get_resize_output_image_size(…, default_to_square=False)`: the short side to
/// `edge`, the long side `int(edge * long / short)`.
pub fn shortest_edge_size(width: u32, height: u32, edge: u32) -> (u32, u32) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    let new_long = (f64::from(edge) * f64::from(long) / f64::from(short)) as u32;
    if width <= height {
        (edge, new_long)
    } else {
        (new_long, edge)
    }
}

/// transformers' `center_crop`: offsets `(size - crop) // 2`.
pub fn center_crop(image: &RgbImage, crop: u32) -> RgbImage {
    let left = (image.width() - crop) / 2;
    let top = (image.height() - crop) / 2;
    image::imageops::crop_imm(image, left, top, crop, crop).to_image()
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// PIL's bicubic kernel (a = -0.5), support 2.
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

/// One output pixel's window in the input and its fixed-point weights.
struct Taps {
    start: usize,
    weights: Vec<i32>,
}

/// Pillow's `precompute_coeffs` and `normalize_coeffs_8bpc` for the whole input range.
fn coefficients(in_size: u32, out_size: u32) -> Vec<Taps> {
    let scale = f64::from(in_size) / f64::from(out_size);
    let filter_scale = scale.max(1.0);
    let support = 2.0 * filter_scale;
    (0..out_size)
        .map(|xx| {
            let center = (f64::from(xx) + 0.5) * scale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(i64::from(in_size)) as usize;
            let raw: Vec<f64> = (xmin..xmax)
                .map(|x| bicubic((x as f64 - center + 0.5) / filter_scale))
                .collect();
            let total: f64 = raw.iter().sum();
            let weights = raw
                .iter()
                .map(|w| {
                    let w = if total != 0.0 { w / total } else { *w };
                    let fixed = w * f64::from(1u32 << PRECISION_BITS);
                    if w < 0.0 {
                        (fixed - 0.5) as i32
                    } else {
                        (fixed + 0.5) as i32
                    }
                })
                .collect();
            Taps {
                start: xmin,
                weights,
            }
        })
        .collect()
}

fn clip8(sum: i32) -> u8 {
    if sum >= (1 << PRECISION_BITS << 8) {
        255
    } else if sum <= 0 {
        0
    } else {
        (sum >> PRECISION_BITS) as u8
    }
}

/// One tap sum over `count` samples read by `sample(i)`.
fn convolve(taps: &Taps, sample: impl Fn(usize) -> u8) -> u8 {
    let mut sum = 1i32 << (PRECISION_BITS - 1);
    for (i, weight) in taps.weights.iter().enumerate() {
        sum += i32::from(sample(taps.start + i)) * weight;
    }
    clip8(sum)
}

/// `PIL.Image.resize((width, height), Image.BICUBIC)` of an RGB image: a horizontal pass over
/// the rows the vertical pass reads, into an 8-bit image, then the vertical pass (each skipped
/// when that side keeps its size, as Pillow does).
pub fn resize_bicubic(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let horizontal = image.width() != width;
    let vertical = image.height() != height;
    let rows = coefficients(image.height(), height);
    let (first_row, last_row) = match (rows.first(), rows.last()) {
        (Some(first), Some(last)) => (first.start, last.start + last.weights.len()),
        _ => return RgbImage::new(width, height),
    };
    let stage = if horizontal {
        let columns = coefficients(image.width(), width);
        let band = (last_row - first_row) as u32;
        RgbImage::from_fn(width, band, |x, y| {
            let taps = &columns[x as usize];
            let row = first_row as u32 + y;
            image::Rgb(std::array::from_fn(|c| {
                convolve(taps, |i| image.get_pixel(i as u32, row)[c])
            }))
        })
    } else {
        image.clone()
    };
    if !vertical {
        return stage;
    }
    let offset = if horizontal { first_row } else { 0 };
    RgbImage::from_fn(width, height, |x, y| {
        let taps = &rows[y as usize];
        image::Rgb(std::array::from_fn(|c| {
            convolve(taps, |i| stage.get_pixel(x, (i - offset) as u32)[c])
        }))
    })
}
