//! `BlipImageProcessor`'s preprocessing: PIL's bicubic resize to a square, rescale to [0, 1],
//! normalise with the CLIP mean and deviation, channels first.
//!
//! The resize is PIL's own `ImagingResample` for 8-bit images rather than `image`'s filter
//! (`clip::preprocess::resize_bicubic`, shared with CLIP): the horde's BLIP resizes a PIL image
//! (torchvision's `Resize` hands PIL images to PIL) and transformers' PIL backend does the
//! same, so the network sees PIL's bytes.

use super::config::ImageProcessing;
use candle_core::{Device, Tensor};
use image::RgbImage;

/// PIL's `Image.resize((width, height), Image.BICUBIC)` of an RGB image: the port CLIP's
/// preprocessing uses too.
pub use crate::clip::preprocess::resize_bicubic;

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
