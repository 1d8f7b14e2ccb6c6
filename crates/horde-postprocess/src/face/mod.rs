//! Face restoration: faces found by RetinaFace ([`detect`]), aligned to the 512² template by
//! their five landmarks ([`align`]), restored by GFPGAN ([`gfpgan`]), CodeFormer
//! ([`codeformer`]) or RestoreFormer ([`restoreformer`]), and pasted back with a soft mask.
//!
//! [`FaceFixer`] is the one entry point per image, shared by a generation's post-processing
//! chain and alchemy's face-fixing forms: an image with no face comes back unchanged.

pub mod align;
pub mod codeformer;
pub mod detect;
pub mod gfpgan;
pub mod restoreformer;

use crate::tensors::read_checkpoint;
use crate::{Error, Result};
use candle_core::Device;
use image::imageops::FilterType;
use image::RgbImage;
use std::path::Path;
use std::sync::Arc;

/// The side of the aligned face crops ([`align`]'s template), which the published restorers
/// are trained on.
pub const FACE_SIZE: u32 = 512;

/// The network that restores an aligned face crop, recognised from its checkpoint's tensors.
pub enum Restorer {
    Gfpgan(Box<gfpgan::Gfpgan>),
    CodeFormer(Box<codeformer::CodeFormer>),
    RestoreFormer(Box<restoreformer::RestoreFormer>),
}

impl Restorer {
    /// Loads a face restorer (`.pth` as published, or `.safetensors`), whichever of the three
    /// families its tensors are.
    pub fn load(path: &Path, device: &Device) -> Result<Restorer> {
        // The checkpoint is read once: the family's constructor takes its tensors.
        let tensors = read_checkpoint(path, device)?;
        if gfpgan::recognises(&tensors) {
            let net = gfpgan::Gfpgan::from_tensors(tensors, path, device)?;
            Ok(Restorer::Gfpgan(Box::new(net)))
        } else if codeformer::recognises(&tensors) {
            let net = codeformer::CodeFormer::from_tensors(tensors, path, device)?;
            Ok(Restorer::CodeFormer(Box::new(net)))
        } else if restoreformer::recognises(&tensors) {
            let net = restoreformer::RestoreFormer::from_tensors(tensors, path, device)?;
            Ok(Restorer::RestoreFormer(Box::new(net)))
        } else {
            Err(Error::Unsupported {
                path: path.display().to_string(),
                reason: "not a face restorer: neither GFPGAN (v1 clean), CodeFormer nor \
                         RestoreFormer tensors"
                    .into(),
            })
        }
    }

    /// The family, as the horde names it.
    pub fn family(&self) -> &'static str {
        match self {
            Restorer::Gfpgan(_) => "GFPGAN",
            Restorer::CodeFormer(_) => "CodeFormers",
            Restorer::RestoreFormer(_) => "RestoreFormer",
        }
    }

    /// The crop side the network takes, where it takes one size only.
    fn face_side(&self) -> Option<u32> {
        match self {
            Restorer::Gfpgan(net) => Some(net.shape.out_size as u32),
            Restorer::CodeFormer(net) => Some(net.shape.face_size() as u32),
            Restorer::RestoreFormer(_) => None,
        }
    }

    /// One aligned `FACE_SIZE`² crop restored; `fidelity` is CodeFormer's `w` (the horde's
    /// `facefixer_strength`), unused by the others. A network made for another crop size (the
    /// tiny test checkpoints) gets the crop resized to its size and back.
    pub fn restore(&self, face: &RgbImage, fidelity: f64) -> Result<RgbImage> {
        let side = self.face_side().unwrap_or(face.width());
        let resized = side != face.width();
        let input = if resized {
            image::imageops::resize(face, side, side, FilterType::Triangle)
        } else {
            face.clone()
        };
        let out = match self {
            Restorer::Gfpgan(net) => net.restore(&input)?,
            Restorer::CodeFormer(net) => net.restore(&input, fidelity)?,
            Restorer::RestoreFormer(net) => net.restore(&input)?,
        };
        Ok(if resized {
            image::imageops::resize(&out, face.width(), face.height(), FilterType::Triangle)
        } else {
            out
        })
    }
}

/// A face fixer: the detector finds and aligns the faces, the restorer restores each, and they
/// are pasted back.
pub struct FaceFixer {
    pub detector: Arc<detect::RetinaFace>,
    pub restorer: Restorer,
}

impl FaceFixer {
    /// `image` with every face the detector keeps restored; without one, `image` unchanged.
    /// `fidelity` goes to CodeFormer (0 = the codebook's face, 1 = the input's).
    pub fn fix(&self, image: &RgbImage, fidelity: f64) -> Result<RgbImage> {
        align::restore_faces(image, &self.detector, |face| {
            self.restorer.restore(face, fidelity)
        })
    }
}
