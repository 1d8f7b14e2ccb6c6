//! Faces aligned to the 512² template and pasted back, as GFPGAN's `GFPGANer.enhance` drives
//! facexlib's `FaceRestoreHelper` (`face_size=512`, `crop_ratio=(1, 1)`, `upscale_factor=1`,
//! `use_parse=False`, `eye_dist_threshold=5`):
//!
//! 1. faces whose eyes are under 5 pixels apart are skipped (side or tiny faces);
//! 2. the similarity (rotation, uniform scale, shift) taking the five landmarks onto
//!    [`TEMPLATE_512`] is fitted; facexlib asks `cv2.estimateAffinePartial2D(…, LMEDS)`, whose
//!    refinement on five inlying points converges to the least-squares similarity computed
//!    here (the fixture measures 4·10⁻⁴ between the two matrices, at most one level on a crop);
//! 3. the image is warped to 512² (bilinear, border colour (135, 133, 132) in OpenCV's BGR);
//! 4. the restorer's 512² face is warped back by the inverse, with a warped square of ones
//!    eroded by 2 pixels as its hard mask, and blended through a soft mask: that square
//!    eroded again by `2·w_edge` and blurred by a `(2·w_edge + 1)²` Gaussian, `w_edge` being a
//!    twentieth of the square root of the face's area; the blend is truncated to 8 bits as
//!    numpy's `astype(uint8)` does.
//!
//! An image where no face is kept comes back unchanged, byte for byte.

mod ops;

pub use ops::{erode, gaussian_blur, warp_affine, Plane};

use super::detect::{Face, RetinaFace};
use crate::{Error, Result};
use image::RgbImage;

/// The side of the aligned face.
pub const FACE_SIZE: usize = 512;

/// facexlib's five points of an FFHQ face in 512²: eyes, nose, mouth corners.
pub const TEMPLATE_512: [[f64; 2]; 5] = [
    [192.98138, 239.94708],
    [318.90277, 240.1936],
    [256.63416, 314.01935],
    [201.26117, 371.41043],
    [313.08905, 371.15118],
];

/// The colour outside the image in a crop: facexlib's `(135, 133, 132)` is BGR.
pub const BORDER_RGB: [u8; 3] = [132, 133, 135];

/// GFPGAN's `eye_dist_threshold`: faces with eyes closer than this (pixels) are skipped.
pub const EYE_DISTANCE_THRESHOLD: f32 = 5.0;

/// A 2×3 affine matrix `[[a, b, c], [d, e, f]]` taking `(x, y)` to `(ax + by + c, dx + ey + f)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Affine(pub [[f64; 3]; 2]);

impl Affine {
    /// `cv2.invertAffineTransform`'s formula (a singular matrix gives zeros, as OpenCV's).
    pub fn invert(&self) -> Affine {
        let [[a, b, c], [d, e, f]] = self.0;
        let det = a * e - b * d;
        let inv = if det != 0.0 { 1.0 / det } else { 0.0 };
        let (a2, b2, d2, e2) = (e * inv, -b * inv, -d * inv, a * inv);
        Affine([[a2, b2, -a2 * c - b2 * f], [d2, e2, -d2 * c - e2 * f]])
    }

    pub fn apply(&self, [x, y]: [f64; 2]) -> [f64; 2] {
        let [[a, b, c], [d, e, f]] = self.0;
        [a * x + b * y + c, d * x + e * y + f]
    }
}

/// The least-squares similarity `[[s·cos, −s·sin, tx], [s·sin, s·cos, ty]]` taking `from`
/// onto `to`. An error when the points of `from` all coincide.
pub fn similarity(from: &[[f64; 2]], to: &[[f64; 2]]) -> Result<Affine> {
    let n = from.len().min(to.len()) as f64;
    let mean = |p: &[[f64; 2]]| {
        let (sx, sy) = p.iter().fold((0.0, 0.0), |(x, y), q| (x + q[0], y + q[1]));
        [sx / n, sy / n]
    };
    let (ms, md) = (mean(from), mean(to));
    let (mut norm, mut a, mut b) = (0.0, 0.0, 0.0);
    for (s, d) in from.iter().zip(to) {
        let (sx, sy, dx, dy) = (s[0] - ms[0], s[1] - ms[1], d[0] - md[0], d[1] - md[1]);
        norm += sx * sx + sy * sy;
        a += sx * dx + sy * dy;
        b += sx * dy - sy * dx;
    }
    if norm <= f64::EPSILON || !norm.is_finite() {
        return Err(bad_input("the landmarks coincide: no similarity maps them"));
    }
    let (a, b) = (a / norm, b / norm);
    Ok(Affine([
        [a, -b, md[0] - a * ms[0] + b * ms[1]],
        [b, a, md[1] - b * ms[0] - a * ms[1]],
    ]))
}

/// The matrix taking a face's landmarks onto [`TEMPLATE_512`].
pub fn affine_to_template(face: &Face) -> Result<Affine> {
    let points = face.landmarks.map(|[x, y]| [f64::from(x), f64::from(y)]);
    similarity(&points, &TEMPLATE_512)
}

/// Whether GFPGAN keeps the face: eyes at least [`EYE_DISTANCE_THRESHOLD`] apart.
pub fn keeps_face(face: &Face) -> bool {
    let [[lx, ly], [rx, ry]] = [face.landmarks[0], face.landmarks[1]];
    (lx - rx).hypot(ly - ry) >= EYE_DISTANCE_THRESHOLD
}

/// A face cut out and aligned: the 512² crop and the matrix from the image to it.
#[derive(Debug, Clone)]
pub struct AlignedFace {
    pub face: RgbImage,
    pub affine: Affine,
}

/// `face` aligned to the template: the 512² crop of `image`.
pub fn align_face(image: &RgbImage, face: &Face) -> Result<AlignedFace> {
    let affine = affine_to_template(face)?;
    Ok(AlignedFace {
        face: warp_image(image, &affine)?,
        affine,
    })
}

/// The 512² crop of `image` under `affine` (`cv2.warpAffine` with the border colour).
pub fn warp_image(image: &RgbImage, affine: &Affine) -> Result<RgbImage> {
    let border = BORDER_RGB.map(f32::from);
    let out = warp_affine(&plane_of(image), affine, FACE_SIZE, FACE_SIZE, &border)?;
    Ok(rounded_image(&out))
}

/// The restored faces blended back into `image` (facexlib's `paste_faces_to_input_image`
/// without face parsing, at upscale 1). Each restored face must be 512².
///
/// Each face is worked on only within its footprint (the box its warped square can reach,
/// plus two pixels): outside it facexlib's masks are exactly zero, and the zero rim keeps the
/// erosions and the blur inside the box equal to theirs over the whole image.
pub fn paste_back(image: &RgbImage, faces: &[(AlignedFace, RgbImage)]) -> Result<RgbImage> {
    if faces.is_empty() {
        return Ok(image.clone());
    }
    let (w, h) = (image.width() as usize, image.height() as usize);
    let mut blended = plane_of(image);
    for (aligned, restored) in faces {
        if restored.dimensions() != (FACE_SIZE as u32, FACE_SIZE as u32) {
            return Err(bad_input(&format!(
                "a restored face of {}×{} where {FACE_SIZE}² was expected",
                restored.width(),
                restored.height()
            )));
        }
        let inverse = aligned.affine.invert();
        let Some(region) = Region::footprint(&inverse, h, w) else {
            continue; // the face lies wholly outside the image
        };
        let inverse = region.local(&inverse);
        let face = warp_affine(&plane_of(restored), &inverse, region.h, region.w, &[0.0; 3])?;
        let (hard, soft) = masks(&inverse, region.h, region.w)?;
        blend_into(&mut blended, &region, &face, &hard, &soft);
    }
    // numpy's astype(uint8) truncates
    let bytes = blended
        .data
        .iter()
        .map(|v| v.clamp(0.0, 255.0) as u8)
        .collect();
    Ok(RgbImage::from_raw(w as u32, h as u32, bytes).expect("h × w × 3 bytes"))
}

/// facexlib's blend inside `region`: `soft·(hard·face) + (1 − soft)·image`, the warped face
/// rounded to 8 bits first as `cv2.warpAffine` returns it.
fn blend_into(image: &mut Plane, region: &Region, face: &Plane, hard: &Plane, soft: &Plane) {
    for y in 0..region.h {
        for x in 0..region.w {
            let local = y * region.w + x;
            let (hard, soft) = (hard.data[local], soft.data[local]);
            let at = ((region.y + y) * image.width + region.x + x) * 3;
            for k in 0..3 {
                let pasted = hard * face.data[local * 3 + k].round();
                let v = &mut image.data[at + k];
                *v = soft * pasted + (1.0 - soft) * *v;
            }
        }
    }
}

/// A box of the image: columns `x .. x + w`, rows `y .. y + h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Region {
    x: usize,
    y: usize,
    w: usize,
    h: usize,
}

impl Region {
    /// The pixels a 512² face warped by `inverse` can touch (a bilinear sample reads up to a
    /// pixel past the square), with a rim of two pixels, within the image; `None` if none.
    fn footprint(inverse: &Affine, height: usize, width: usize) -> Option<Region> {
        let far = FACE_SIZE as f64;
        let corners =
            [[-1.0, -1.0], [far, -1.0], [-1.0, far], [far, far]].map(|p| inverse.apply(p));
        let (mut lo, mut hi) = ([f64::MAX; 2], [f64::MIN; 2]);
        for c in corners {
            for k in 0..2 {
                lo[k] = lo[k].min(c[k]);
                hi[k] = hi[k].max(c[k]);
            }
        }
        let clamp = |v: f64, max: usize| v.clamp(0.0, max as f64) as usize;
        let (x0, x1) = (
            clamp(lo[0].floor() - 2.0, width),
            clamp(hi[0].ceil() + 3.0, width),
        );
        let (y0, y1) = (
            clamp(lo[1].floor() - 2.0, height),
            clamp(hi[1].ceil() + 3.0, height),
        );
        (x1 > x0 && y1 > y0).then_some(Region {
            x: x0,
            y: y0,
            w: x1 - x0,
            h: y1 - y0,
        })
    }

    /// `m` (into the image) made to land in this box's own coordinates.
    fn local(&self, m: &Affine) -> Affine {
        let mut out = *m;
        out.0[0][2] -= self.x as f64;
        out.0[1][2] -= self.y as f64;
        out
    }
}

/// The hard mask (the warped square of ones eroded by 2) and the soft one blending a face
/// back, one channel `height × width` each, for the inverse matrix of its alignment.
pub fn masks(inverse: &Affine, height: usize, width: usize) -> Result<(Plane, Plane)> {
    let ones = Plane::filled(FACE_SIZE, FACE_SIZE, 1, 1.0);
    let square = warp_affine(&ones, inverse, height, width, &[0.0])?;
    let hard = erode(&square, 2);
    let area: f64 = hard.data.iter().map(|&v| f64::from(v)).sum();
    let edge = (area.sqrt() as usize) / 20;
    let centre = erode(&hard, 2 * edge);
    let soft = gaussian_blur(&centre, 2 * edge + 1)?;
    Ok((hard, soft))
}

/// The whole chain on one image: faces detected, the kept ones aligned, each restored by
/// `restore` (512² in, 512² out) and pasted back. No face kept: `image` unchanged.
pub fn restore_faces<F>(image: &RgbImage, detector: &RetinaFace, mut restore: F) -> Result<RgbImage>
where
    F: FnMut(&RgbImage) -> Result<RgbImage>,
{
    let faces: Vec<Face> = detector
        .detect(image)?
        .into_iter()
        .filter(keeps_face)
        .collect();
    let mut restored = Vec::with_capacity(faces.len());
    for face in &faces {
        let aligned = align_face(image, face)?;
        let out = restore(&aligned.face)?;
        restored.push((aligned, out));
    }
    paste_back(image, &restored)
}

/// An RGB image as a plane of 0..255 values.
fn plane_of(image: &RgbImage) -> Plane {
    Plane {
        width: image.width() as usize,
        height: image.height() as usize,
        channels: 3,
        data: image.as_raw().iter().map(|&v| f32::from(v)).collect(),
    }
}

/// A three-channel plane rounded to the nearest level (`cv2.warpAffine`'s `saturate_cast`).
fn rounded_image(plane: &Plane) -> RgbImage {
    let bytes = plane
        .data
        .iter()
        .map(|v| v.round().clamp(0.0, 255.0) as u8)
        .collect();
    RgbImage::from_raw(plane.width as u32, plane.height as u32, bytes).expect("h × w × 3 bytes")
}

fn bad_input(reason: &str) -> Error {
    Error::Run(candle_core::Error::Msg(reason.to_string()))
}
