//! The rules on the extra networks a request names: LoRAs (`params.loras`), textual
//! inversions (`params.tis`) and ControlNet (`params.control_type`), each refusal with the
//! public horde's `rc` (horde-api.md §3, §10), checked in its order
//! (`ImageGenerateAsync.validate`).
//!
//! Why at acceptance: a request no worker can run (a control type without a control image, a
//! LoRA version that is not a version id, ControlNet on a family it was never trained for)
//! would otherwise wait until it expires. The model-dependent rules need each requested
//! model's baseline, which the caller looks up in its model reference (`baseline_of`), so
//! they follow the reference as it is reloaded.

use super::RequestRefusal;
use crate::Refusal;
use horde_api::image::{
    ControlType, ImageRequest, SourceProcessing, CONTROL_STRENGTH_RANGE, MAX_LORAS, MAX_TIS,
};
use horde_api::Rc;

/// Why a request's LoRAs, textual inversions or control fields were refused.
#[derive(Debug, Clone, PartialEq)]
pub enum NetworkRefusal {
    /// More than [`MAX_LORAS`] LoRAs.
    TooManyLoras { count: usize },
    /// The LoRA at `index`, asked for by version (`is_version`), is not named by a version id.
    BadLoraVersion { index: usize, name: String },
    /// More than [`MAX_TIS`] textual inversions.
    TooManyTis { count: usize },
    /// No ControlNet of `control_type` exists for `model`'s family, or ControlNet cannot drive
    /// `model` at all.
    ControlNetUnsupported {
        control_type: ControlType,
        model: String,
    },
    /// A control type without a source image.
    ControlNetSourceMissing,
    /// A control type with inpainting.
    ControlNetInpaintingMismatch,
    /// A control type with `model`, whose family (`baseline`) ControlNet does not run on.
    ControlNetMismatch { model: String, baseline: String },
    /// The legacy `init_as_image` with `return_control_map`.
    ControlNetInvalidPayload,
    /// A `control_strength` without a control type.
    ControlStrengthWithoutControlType,
    /// A `control_strength` outside [`CONTROL_STRENGTH_RANGE`].
    ControlStrengthOutOfRange { value: f64 },
}

impl Refusal for NetworkRefusal {
    fn rc(&self) -> Rc {
        match self {
            NetworkRefusal::TooManyLoras { .. } => Rc::TooManyLoras,
            NetworkRefusal::BadLoraVersion { .. } => Rc::BadLoraVersion,
            NetworkRefusal::TooManyTis { .. } => Rc::TooManyTIs,
            NetworkRefusal::ControlNetUnsupported { .. } => Rc::ControlNetUnsupported,
            NetworkRefusal::ControlNetSourceMissing => Rc::ControlNetSourceMissing,
            NetworkRefusal::ControlNetInpaintingMismatch => Rc::ControlNetInpaintingMismatch,
            NetworkRefusal::ControlNetMismatch { .. } => Rc::ControlNetMismatch,
            NetworkRefusal::ControlNetInvalidPayload => Rc::ControlNetInvalidPayload,
            NetworkRefusal::ControlStrengthWithoutControlType => {
                Rc::ControlStrengthWithoutControlType
            }
            NetworkRefusal::ControlStrengthOutOfRange { .. } => Rc::ControlStrengthOutOfRange,
        }
    }

    /// The public horde's message, naming the field.
    fn message(&self) -> String {
        match self {
            NetworkRefusal::TooManyLoras { count } => format!(
                "You cannot request more than {MAX_LORAS} loras per generation (params.loras has {count})."
            ),
            NetworkRefusal::BadLoraVersion { index, name } => format!(
                "params.loras.{index}.name '{name}' is not a version ID: explicit LoRa version requests (is_version) have to be a CivitAI version ID (i.e. an integer)."
            ),
            NetworkRefusal::TooManyTis { count } => format!(
                "You cannot request more than {MAX_TIS} Textual Inversions per generation (params.tis has {count})."
            ),
            NetworkRefusal::ControlNetUnsupported {
                control_type,
                model,
            } => format!(
                "params.control_type '{}' cannot be used with the model '{model}': no ControlNet of that type exists for it.",
                control_type.name()
            ),
            NetworkRefusal::ControlNetSourceMissing => "ControlNet requires a source image: params.control_type needs source_image (the image to compute the control map from, or the map itself with params.image_is_control).".into(),
            NetworkRefusal::ControlNetInpaintingMismatch => "ControlNet cannot be used with inpainting at this time (params.control_type with source_processing \"inpainting\").".into(),
            NetworkRefusal::ControlNetMismatch { model, baseline } => format!(
                "ControlNet does not work with {baseline} models currently (params.control_type with the model '{model}')."
            ),
            NetworkRefusal::ControlNetInvalidPayload => "Invalid ControlNet parameters - cannot send initial map and return the same map (params.init_as_image with params.return_control_map).".into(),
            NetworkRefusal::ControlStrengthWithoutControlType => "params.control_strength only applies alongside a params.control_type.".into(),
            NetworkRefusal::ControlStrengthOutOfRange { value } => format!(
                "params.control_strength must be between {} and {}, inclusive, not {value}.",
                CONTROL_STRENGTH_RANGE.start(),
                CONTROL_STRENGTH_RANGE.end()
            ),
        }
    }
}

/// Baselines ControlNet does not run on (`ControlNetMismatch`): those horde-api.md §10 names
/// (SDXL, Stable Cascade, Flux, Qwen, Z-Image) and those the baseline catalog marks without
/// ControlNet.
const NO_CONTROLNET_BASELINES: &[&str] = &[
    "stable_diffusion_xl",
    "stable_cascade",
    "flux_1",
    "flux_schnell",
    "flux_dev",
    "qwen_image",
    "z_image_turbo",
    "krea2_turbo",
    "anima",
];

/// Control types no Stable Diffusion 2 ControlNet exists for (`ControlNetUnsupported`); the
/// public horde also names `mlsd`, which is not a control type of its API.
const NOT_ON_SD2: &[ControlType] = &[ControlType::Normal, ControlType::Hough];

/// Models ControlNet cannot drive at all (`ControlNetUnsupported`).
const NO_CONTROLNET_MODELS: &[&str] = &["pix2pix"];

/// The LoRA, textual-inversion and ControlNet rules of `body`, in the public horde's order;
/// `baseline_of` gives a model's baseline id as the model reference knows it.
pub fn check_networks(
    body: &ImageRequest,
    baseline_of: impl Fn(&str) -> String,
) -> Result<(), RequestRefusal> {
    check_all(body, &baseline_of).map_err(RequestRefusal::Network)
}

/// [`check_networks`] with its own refusal type.
fn check_all(
    body: &ImageRequest,
    baseline_of: &impl Fn(&str) -> String,
) -> Result<(), NetworkRefusal> {
    check_control_strength(body)?;
    if let Some(control_type) = body.params.control_type {
        check_control(body, control_type, baseline_of)?;
    }
    check_loras(body)?;
    let tis = body.params.tis.len();
    if tis > MAX_TIS {
        return Err(NetworkRefusal::TooManyTis { count: tis });
    }
    if body.params.init_as_image && body.params.return_control_map {
        return Err(NetworkRefusal::ControlNetInvalidPayload);
    }
    Ok(())
}

/// A control strength weighs a control map: only with a control type (asked first, as the
/// public horde asks it), and within [`CONTROL_STRENGTH_RANGE`].
fn check_control_strength(body: &ImageRequest) -> Result<(), NetworkRefusal> {
    let Some(value) = body.params.control_strength else {
        return Ok(());
    };
    if body.params.control_type.is_none() {
        return Err(NetworkRefusal::ControlStrengthWithoutControlType);
    }
    if !CONTROL_STRENGTH_RANGE.contains(&value) {
        return Err(NetworkRefusal::ControlStrengthOutOfRange { value });
    }
    Ok(())
}

/// A control type needs a source image (its control map, or the image to compute it from),
/// no inpainting, and a model family with ControlNets of that type.
fn check_control(
    body: &ImageRequest,
    control_type: ControlType,
    baseline_of: &impl Fn(&str) -> String,
) -> Result<(), NetworkRefusal> {
    let unsupported = |model: &str| NetworkRefusal::ControlNetUnsupported {
        control_type,
        model: model.to_string(),
    };
    if NOT_ON_SD2.contains(&control_type) {
        if let Some(model) = body.models.iter().find(|m| is_sd2(&baseline_of(m))) {
            return Err(unsupported(model));
        }
    }
    if let Some(model) = body
        .models
        .iter()
        .find(|m| NO_CONTROLNET_MODELS.contains(&m.as_str()))
    {
        return Err(unsupported(model));
    }
    if body.source_image.is_none() {
        return Err(NetworkRefusal::ControlNetSourceMissing);
    }
    if body.source_processing == SourceProcessing::Inpainting {
        return Err(NetworkRefusal::ControlNetInpaintingMismatch);
    }
    for model in &body.models {
        let baseline = baseline_of(model);
        if NO_CONTROLNET_BASELINES.contains(&baseline.as_str()) {
            return Err(NetworkRefusal::ControlNetMismatch {
                model: model.clone(),
                baseline,
            });
        }
    }
    Ok(())
}

/// Stable Diffusion 2, by the catalog's ids (`stable_diffusion_2_768`, `…_512`) or the model
/// reference's own text (`stable diffusion 2`, which the catalog has no alias for).
fn is_sd2(baseline: &str) -> bool {
    baseline.starts_with("stable_diffusion_2") || baseline.starts_with("stable diffusion 2")
}

/// At most [`MAX_LORAS`], and a LoRA asked for by version (`is_version`) named by its version
/// id: ASCII digits (the public horde takes Python's `isdigit`, which also passes other
/// scripts' digits no CivitAI id has).
fn check_loras(body: &ImageRequest) -> Result<(), NetworkRefusal> {
    let loras = &body.params.loras;
    if loras.len() > MAX_LORAS {
        return Err(NetworkRefusal::TooManyLoras { count: loras.len() });
    }
    let is_version_id = |name: &str| !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit());
    match loras
        .iter()
        .enumerate()
        .find(|(_, lora)| lora.is_version && !is_version_id(&lora.name))
    {
        Some((index, lora)) => Err(NetworkRefusal::BadLoraVersion {
            index,
            name: lora.name.clone(),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Baselines as the built-in model reference gives them for these test names.
    fn baseline_of(model: &str) -> String {
        match model {
            "sdxl" => "stable_diffusion_xl",
            "cascade" => "stable_cascade",
            "flux" => "flux_1",
            "sd2" => "stable diffusion 2",
            "sd2_768" => "stable_diffusion_2_768",
            _ => "stable_diffusion_1",
        }
        .to_string()
    }

    fn request(fields: serde_json::Value) -> ImageRequest {
        let mut body = json!({"prompt": "a lighthouse", "models": ["sd1"]});
        for (key, value) in fields.as_object().unwrap() {
            body[key] = value.clone();
        }
        serde_json::from_value(body).unwrap()
    }

    fn rc_of(fields: serde_json::Value) -> Option<Rc> {
        check_networks(&request(fields), baseline_of)
            .err()
            .map(|r| r.rc())
    }

    fn loras(n: usize) -> serde_json::Value {
        json!((0..n)
            .map(|i| json!({"name": format!("{i}")}))
            .collect::<Vec<_>>())
    }

    fn tis(n: usize) -> serde_json::Value {
        json!((0..n)
            .map(|i| json!({"name": format!("ti{i}")}))
            .collect::<Vec<_>>())
    }

    #[test]
    fn five_loras_and_twenty_tis_pass_and_one_more_is_refused() {
        assert_eq!(rc_of(json!({"params": {"loras": loras(5)}})), None);
        assert_eq!(
            rc_of(json!({"params": {"loras": loras(6)}})),
            Some(Rc::TooManyLoras)
        );
        assert_eq!(rc_of(json!({"params": {"tis": tis(20)}})), None);
        assert_eq!(
            rc_of(json!({"params": {"tis": tis(21)}})),
            Some(Rc::TooManyTIs)
        );
        let refusal = check_networks(
            &request(json!({"params": {"loras": loras(6)}})),
            baseline_of,
        )
        .unwrap_err();
        assert!(
            refusal.message().contains("params.loras"),
            "{}",
            refusal.message()
        );
    }

    #[test]
    fn a_lora_asked_for_by_version_is_named_by_its_version_id() {
        let version = |name: &str| json!({"params": {"loras": [{"name": "1"}, {"name": name, "is_version": true}]}});
        assert_eq!(rc_of(version("128713")), None);
        for name in ["GlowingRunes", "12a", "-5", "1.5", "١٢", ""] {
            assert_eq!(rc_of(version(name)), Some(Rc::BadLoraVersion), "{name:?}");
        }
        // Without `is_version` a name is a name.
        assert_eq!(
            rc_of(json!({"params": {"loras": [{"name": "GlowingRunes"}]}})),
            None
        );
        let refusal = check_networks(&request(version("abc")), baseline_of).unwrap_err();
        assert!(
            refusal.message().contains("params.loras.1.name") && refusal.message().contains("abc"),
            "{}",
            refusal.message()
        );
    }

    #[test]
    fn control_needs_a_source_image_and_no_inpainting() {
        let source = "https://example.com/map.png";
        assert_eq!(
            rc_of(json!({"params": {"control_type": "canny"}})),
            Some(Rc::ControlNetSourceMissing)
        );
        assert_eq!(
            rc_of(
                json!({"params": {"control_type": "canny"}, "source_image": source, "source_processing": "inpainting"})
            ),
            Some(Rc::ControlNetInpaintingMismatch)
        );
        for processing in ["img2img", "outpainting"] {
            assert_eq!(
                rc_of(
                    json!({"params": {"control_type": "depth"}, "source_image": source, "source_processing": processing})
                ),
                None,
                "{processing}"
            );
        }
        // Without a control type, none of this applies.
        assert_eq!(
            rc_of(json!({"source_image": source, "source_processing": "inpainting"})),
            None
        );
    }

    #[test]
    fn control_runs_only_on_families_with_controlnets_of_its_type() {
        let source = "https://example.com/map.png";
        let on = |models: serde_json::Value, control: &str| {
            rc_of(
                json!({"models": models, "params": {"control_type": control}, "source_image": source}),
            )
        };
        for model in ["sdxl", "cascade", "flux"] {
            assert_eq!(
                on(json!(["sd1", model]), "canny"),
                Some(Rc::ControlNetMismatch),
                "{model}"
            );
        }
        for model in ["sd2", "sd2_768"] {
            assert_eq!(on(json!([model]), "hough"), Some(Rc::ControlNetUnsupported));
            assert_eq!(
                on(json!([model]), "normal"),
                Some(Rc::ControlNetUnsupported)
            );
            assert_eq!(on(json!([model]), "canny"), None, "{model} has canny");
        }
        assert_eq!(
            on(json!(["pix2pix"]), "canny"),
            Some(Rc::ControlNetUnsupported)
        );
        assert_eq!(on(json!(["sd1"]), "hough"), None);
        assert_eq!(
            on(json!([]), "openpose"),
            None,
            "no model named: any runs it"
        );
        // The SD2 rule comes first, as on the public horde: no source image is needed to hear it.
        assert_eq!(
            rc_of(json!({"models": ["sd2"], "params": {"control_type": "hough"}})),
            Some(Rc::ControlNetUnsupported)
        );
    }

    #[test]
    fn a_control_strength_needs_a_control_type_and_a_strength_in_range() {
        let source = "https://example.com/map.png";
        let with = |strength: f64, control: bool| {
            let mut params = json!({"control_strength": strength});
            if control {
                params["control_type"] = json!("canny");
            }
            rc_of(json!({"params": params, "source_image": source}))
        };
        for ok in [0.01, 1.0, 3.0] {
            assert_eq!(with(ok, true), None, "{ok}");
        }
        for out in [0.0, -1.0, 3.01, 10.0] {
            assert_eq!(
                with(out, true),
                Some(Rc::ControlStrengthOutOfRange),
                "{out}"
            );
        }
        assert_eq!(
            with(0.8, false),
            Some(Rc::ControlStrengthWithoutControlType)
        );
        assert_eq!(
            with(99.0, false),
            Some(Rc::ControlStrengthWithoutControlType),
            "the dependency is asked before the range"
        );
    }

    #[test]
    fn the_legacy_control_flag_cannot_ask_for_its_own_map_back() {
        assert_eq!(
            rc_of(json!({"params": {"init_as_image": true, "return_control_map": true}})),
            Some(Rc::ControlNetInvalidPayload)
        );
        assert_eq!(rc_of(json!({"params": {"init_as_image": true}})), None);
        assert_eq!(
            rc_of(json!({"params": {"image_is_control": true, "return_control_map": true}})),
            None,
            "the public horde checks only the legacy name"
        );
    }

    #[test]
    fn refusals_come_in_the_public_hordes_order() {
        // Control before LoRAs, LoRAs before TIs, TIs before the legacy payload rule.
        let everything = json!({"params": {
            "control_type": "canny", "loras": loras(6), "tis": tis(21),
            "init_as_image": true, "return_control_map": true
        }});
        assert_eq!(rc_of(everything), Some(Rc::ControlNetSourceMissing));
        assert_eq!(
            rc_of(json!({"params": {"loras": loras(6), "tis": tis(21)}})),
            Some(Rc::TooManyLoras)
        );
        assert_eq!(
            rc_of(
                json!({"params": {"tis": tis(21), "init_as_image": true, "return_control_map": true}})
            ),
            Some(Rc::TooManyTIs)
        );
    }
}
