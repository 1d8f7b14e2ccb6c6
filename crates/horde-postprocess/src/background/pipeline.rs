//! rembg's pre- and post-processing around the network (rembg 2.0.86: `BaseSession.normalize`,
//! the sessions' `predict`, `bg.naive_cutout`):
//!
//! 1. the image resized to the session's square (320² for u2net and u2netp, 1024² for
//!    isnet-general-use) with Lanczos;
//! 2. divided by its largest 8-bit value (not by 255), then `(x − mean) / std` per channel;
//! 3. the first output's channel 0 min-max normalised, times 255, **truncated** to 8 bits
//!    (`astype("uint8")`), resized back to the image's size with Lanczos;
//! 4. the naive cutout: PIL's `Image.composite(image, transparent black, mask)`, which scales
//!    each colour by `mask / 255` (rounded) and takes the mask as alpha.
//!
//! Resizing is PIL's own Lanczos, reproduced in [`super::resample`] to the bit (the `image`
//! crate's Lanczos3 rounds differently: up to 8 levels apart on the mask of the u2netp
//! fixture). What remains between this pipeline and rembg's is the network's float noise
//! (about 1e-6 against PyTorch's; rembg runs the ONNX export, whose own noise is not measured
//! here), which can move a value across an integer before the truncation to 8 bits: one
//! level, on a few pixels.

use super::resample::resize_lanczos;
use super::Kind;
use crate::Result;
use candle_core::{Device, Tensor};
use image::{GrayImage, Luma, RgbImage, Rgba, RgbaImage};

/// A rembg session's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Session {
    /// The network's input side.
    pub size: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// u2net's session clips the normalised prediction to [0, 1] (a no-op after min-max).
    pub clip: bool,
}

impl Session {
    pub fn of(kind: Kind) -> Session {
        const IMAGENET: ([f32; 3], [f32; 3]) = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
        match kind {
            Kind::U2Net | Kind::U2NetP => Session {
                size: 320,
                mean: IMAGENET.0,
                std: IMAGENET.1,
                clip: kind == Kind::U2Net,
            },
            Kind::IsNet => Session {
                size: 1024,
                mean: [0.5; 3],
                std: [1.0; 3],
                clip: false,
            },
        }
    }
}

/// Steps 1 and 2: the `[1, 3, S, S]` network input for `image`.
pub fn network_input(image: &RgbImage, session: &Session, device: &Device) -> Result<Tensor> {
    if image.width() == 0 || image.height() == 0 {
        return Err(candle_core::Error::Msg(format!(
            "an empty image ({}×{}) has no background to remove",
            image.width(),
            image.height()
        ))
        .into());
    }
    let side = session.size;
    let resized = resize_lanczos(image, side, side);
    normalise(&resized, session, device)
}

/// Step 2 on an image already at the session's size.
pub fn normalise(resized: &RgbImage, session: &Session, device: &Device) -> Result<Tensor> {
    let (w, h) = (resized.width() as usize, resized.height() as usize);
    let largest = f32::from(resized.as_raw().iter().copied().max().unwrap_or(0)).max(1e-6);
    let pixels: Vec<f32> = resized.as_raw().iter().map(|&v| f32::from(v)).collect();
    let x =
        (Tensor::from_vec(pixels, (h, w, 3), device)?.permute((2, 0, 1))? / f64::from(largest))?;
    let mean = Tensor::new(&session.mean, device)?.reshape((3, 1, 1))?;
    let std = Tensor::new(&session.std, device)?.reshape((3, 1, 1))?;
    Ok(x.broadcast_sub(&mean)?
        .broadcast_div(&std)?
        .unsqueeze(0)?
        .contiguous()?)
}

/// Step 3 up to the 8-bit mask at the network's size: `prediction` is the first output,
/// `[1, 1, S, S]`. A constant prediction (max = min, where rembg divides by zero and gets
/// NaN, which numpy casts to 0) gives an all-zero mask.
pub fn to_mask(prediction: &Tensor, session: &Session) -> Result<GrayImage> {
    let (_, _, h, w) = prediction.dims4()?;
    let pred = prediction.flatten_all()?;
    let (lo, hi) = (
        pred.min(0)?.to_scalar::<f32>()?,
        pred.max(0)?.to_scalar::<f32>()?,
    );
    let levels: Vec<u8> = if hi > lo {
        let mut normalised = pred.affine(1.0, -f64::from(lo))?;
        normalised = (normalised / f64::from(hi - lo))?;
        if session.clip {
            normalised = normalised.clamp(0f32, 1f32)?;
        }
        (normalised * 255.0)?
            .to_vec1::<f32>()?
            .into_iter()
            .map(|v| v as u8) // truncates (and saturates), as numpy's astype("uint8") does
            .collect()
    } else {
        vec![0; h * w]
    };
    Ok(GrayImage::from_raw(w as u32, h as u32, levels).expect("h × w levels"))
}

/// The end of step 3: the mask resized back to the image's size.
pub fn resize_mask(mask: &GrayImage, width: u32, height: u32) -> GrayImage {
    resize_lanczos(mask, width, height)
}

/// Step 4: PIL's `Image.composite(image, Image.new("RGBA", size, 0), mask)`.
pub fn naive_cutout(image: &RgbImage, mask: &GrayImage) -> RgbaImage {
    RgbaImage::from_fn(image.width(), image.height(), |x, y| {
        let [r, g, b] = image.get_pixel(x, y).0;
        let Luma([m]) = *mask.get_pixel(x, y);
        Rgba([blend(r, m), blend(g, m), blend(b, m), m])
    })
}

/// PIL's `BLEND` of `value` over 0 with weight `mask`: `value · mask / 255`, rounded as its
/// `DIV255` does.
fn blend(value: u8, mask: u8) -> u8 {
    let t = u32::from(value) * u32::from(mask) + 128;
    (((t >> 8) + t) >> 8) as u8
}
