//! The NSFW censor of image jobs: an SFW request asks the worker to censor what the model drew
//! by accident (`use_nsfw_censor` in the payload, the public horde's `censor_nsfw` on a request
//! that is not `nsfw`). A worker with a safety checker (`safety_checker` in its config) runs it
//! on each finished image of such a job; an image it flags is replaced by a placeholder and
//! submitted with `state: "censored"` and `gen_metadata: [{"type": "censorship", "value":
//! "nsfw"}]`, as the public horde's workers mark it, so the coordinator records it censored and
//! charges the requester nothing for it.
//!
//! The placeholder is a plain black image of the image's size (the public workers send a
//! picture of their own; the horde requires none in particular). The checker sees the image as
//! it is submitted (after post-processing), decoded from the WebP the engine gave.

use crate::backend::encode_webp;
use crate::job::Unrunnable;
use horde_alchemy::safety::SafetyChecker;
use horde_api::image::GenMetadata;
use image::{DynamicImage, RgbImage};

/// What the censor made of one image.
#[derive(Debug, Clone, PartialEq)]
pub enum Censored {
    /// Not flagged: the image as it was.
    Clean(Vec<u8>),
    /// Flagged: the placeholder's WebP, same size.
    Replaced(Vec<u8>),
}

/// The `gen_metadata` entry of a censored image.
pub fn censorship_note() -> GenMetadata {
    GenMetadata {
        kind: "censorship".into(),
        value: "nsfw".into(),
        r#ref: None,
    }
}

/// The placeholder of a censored `width`×`height` image: plain black.
pub fn placeholder(width: u32, height: u32) -> DynamicImage {
    DynamicImage::ImageRgb8(RgbImage::new(width, height))
}

/// Runs `checker` on one finished image (WebP); a flagged one is replaced.
pub fn censor_webp(checker: &SafetyChecker, webp: Vec<u8>) -> Result<Censored, Unrunnable> {
    let image = image::load_from_memory_with_format(&webp, image::ImageFormat::WebP)
        .map_err(|e| Unrunnable(format!("the censor could not read the image: {e}")))?;
    let verdict = checker
        .check(&image.to_rgb8())
        .map_err(|e| Unrunnable(format!("the safety checker failed: {e}")))?;
    if !verdict.nsfw {
        return Ok(Censored::Clean(webp));
    }
    let replaced = encode_webp(&placeholder(image.width(), image.height()))?;
    Ok(Censored::Replaced(replaced))
}
