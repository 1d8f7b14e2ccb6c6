//! The Stable Diffusion safety checker (diffusers' `StableDiffusionSafetyChecker`, the
//! `CompVis/stable-diffusion-safety-checker` checkpoint): the `nsfw` form's verdict and the
//! worker's censor of SFW generations.
//!
//! A CLIP ViT-L/14 image tower and its `visual_projection` embed the image; its cosines to 3
//! "special care" and 17 concept embeddings, minus each one's threshold
//! (`special_care_embeds_weights`, `concept_embeds_weights`), rounded to three decimals, are the
//! scores. A special-care score over zero adds 0.01 to every later score (the checker grows
//! stricter once an image looks borderline); the image is NSFW when any concept score is over
//! zero. The arithmetic follows diffusers' in float32 (numpy's `round` of a float32), so an image
//! on the edge gets the same verdict. Pinned to diffusers by `tests/safety_numbers.rs`.

use std::path::Path;

use candle_core::{Device, IndexOp, Module, Tensor};
use candle_nn::Linear;
use image::RgbImage;

use crate::clip::{
    l2_normalise, open_weights, vision_tower, ClipError, ClipFileConfig, Preprocess, Result,
};

/// The 0.01 a special-care hit adds to the scores after it (diffusers' `adjustment`).
pub const SPECIAL_CARE_ADJUSTMENT: f32 = 0.01;

/// The checker's answer for one image.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Verdict {
    /// Some concept score is over zero (`has_nsfw_concepts`).
    pub nsfw: bool,
    /// Cosine minus threshold (plus the adjustment), rounded to 3 decimals, per special-care concept.
    pub special_scores: Vec<f32>,
    /// The same for the 17 concepts.
    pub concept_scores: Vec<f32>,
    /// The special-care concepts over zero.
    pub special_care: Vec<usize>,
    /// The concepts over zero (`bad_concepts`).
    pub bad_concepts: Vec<usize>,
}

/// The checker's cosines before thresholds: the part that is a network.
#[derive(Clone, Debug, PartialEq)]
pub struct Cosines {
    /// Cosine to each special-care embedding.
    pub special: Vec<f32>,
    /// Cosine to each concept embedding.
    pub concept: Vec<f32>,
}

/// The loaded checker.
pub struct SafetyChecker {
    vision: crate::clip::VisionTower,
    visual_projection: Linear,
    concept_embeds: Tensor,
    special_care_embeds: Tensor,
    concept_thresholds: Vec<f32>,
    special_care_thresholds: Vec<f32>,
    preprocess: Preprocess,
    device: Device,
}

impl SafetyChecker {
    /// A checker directory: `config.json` and `model.safetensors` (the diffusers layout).
    pub fn load(dir: &Path, device: &Device) -> Result<SafetyChecker> {
        SafetyChecker::load_files(
            &dir.join("config.json"),
            &dir.join("model.safetensors"),
            device,
        )
    }

    /// [`SafetyChecker::load`] of explicitly named files.
    pub fn load_files(config: &Path, weights: &Path, device: &Device) -> Result<SafetyChecker> {
        let config = ClipFileConfig::read(config)?;
        let vb = open_weights(weights, device)?;
        let named =
            |e: candle_core::Error| ClipError::File(weights.display().to_string(), e.to_string());
        // The published file nests the tower (`vision_model.vision_model.…`, transformers 4's
        // `CLIPVisionModel`); one saved by transformers 5 does not.
        let prefix = if vb.contains_tensor("vision_model.vision_model.embeddings.class_embedding") {
            "vision_model.vision_model"
        } else {
            "vision_model"
        };
        let (vision, visual_projection) = vision_tower(&vb, prefix, &config).map_err(named)?;
        let dim = config.projection_dim;
        let concept_embeds = vb.get((17, dim), "concept_embeds").map_err(named)?;
        let special_care_embeds = vb.get((3, dim), "special_care_embeds").map_err(named)?;
        let thresholds = |name: &str, n: usize| {
            vb.get(n, name)
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(named)
        };
        let mut preprocess = Preprocess::clip();
        preprocess.shortest_edge = config.vision_config.image_size as u32;
        preprocess.crop = config.vision_config.image_size as u32;
        Ok(SafetyChecker {
            vision,
            visual_projection,
            concept_embeds: l2_normalise(&concept_embeds)?,
            special_care_embeds: l2_normalise(&special_care_embeds)?,
            concept_thresholds: thresholds("concept_embeds_weights", 17)?,
            special_care_thresholds: thresholds("special_care_embeds_weights", 3)?,
            preprocess,
            device: device.clone(),
        })
    }

    /// The verdict on one image.
    pub fn check(&self, image: &RgbImage) -> Result<Verdict> {
        Ok(self.verdict(&self.cosines(image)?))
    }

    /// The projected image embedding (not normalised): `[projection_dim]`.
    pub fn image_embeds(&self, image: &RgbImage) -> Result<Tensor> {
        let pixels = self.preprocess.pixel_values(image, &self.device)?;
        let pooled = self.vision.forward(&pixels)?;
        Ok(self.visual_projection.forward(&pooled)?.i(0)?)
    }

    /// The cosines of one image to the special-care and concept embeddings.
    pub fn cosines(&self, image: &RgbImage) -> Result<Cosines> {
        let embeds = l2_normalise(&self.image_embeds(image)?.unsqueeze(0)?)?;
        let cosine = |targets: &Tensor| -> Result<Vec<f32>> {
            Ok(embeds.matmul(&targets.t()?)?.i(0)?.to_vec1::<f32>()?)
        };
        Ok(Cosines {
            special: cosine(&self.special_care_embeds)?,
            concept: cosine(&self.concept_embeds)?,
        })
    }

    /// diffusers' thresholds loop over the cosines.
    pub fn verdict(&self, cosines: &Cosines) -> Verdict {
        verdict_with(
            cosines,
            &self.special_care_thresholds,
            &self.concept_thresholds,
            SPECIAL_CARE_ADJUSTMENT,
        )
    }

    /// The thresholds (`special_care_embeds_weights`, `concept_embeds_weights`).
    pub fn thresholds(&self) -> (&[f32], &[f32]) {
        (&self.special_care_thresholds, &self.concept_thresholds)
    }
}

/// numpy's `round(x, 3)` of a float32: `rint(x × 1000) / 1000`, ties to even, in float32.
fn round3(x: f32) -> f32 {
    (x * 1000.0).round_ties_even() / 1000.0
}

/// The loop of `StableDiffusionSafetyChecker.forward` for one image, with the adjustment a
/// special-care hit sets as a parameter (diffusers': [`SPECIAL_CARE_ADJUSTMENT`]).
pub fn verdict_with(
    cosines: &Cosines,
    special_thresholds: &[f32],
    concept_thresholds: &[f32],
    hit_adjustment: f32,
) -> Verdict {
    let mut adjustment = 0.0f32;
    let mut special_scores = Vec::with_capacity(cosines.special.len());
    let mut special_care = Vec::new();
    for (index, (cos, threshold)) in cosines.special.iter().zip(special_thresholds).enumerate() {
        let score = round3(cos - threshold + adjustment);
        special_scores.push(score);
        if score > 0.0 {
            special_care.push(index);
            adjustment = hit_adjustment;
        }
    }
    let concept_scores: Vec<f32> = cosines
        .concept
        .iter()
        .zip(concept_thresholds)
        .map(|(cos, threshold)| round3(cos - threshold + adjustment))
        .collect();
    let bad_concepts: Vec<usize> = concept_scores
        .iter()
        .enumerate()
        .filter(|(_, s)| **s > 0.0)
        .map(|(i, _)| i)
        .collect();
    Verdict {
        nsfw: !bad_concepts.is_empty(),
        special_scores,
        concept_scores,
        special_care,
        bad_concepts,
    }
}
