//! The text model reference: the public horde's `db.json`
//! (`db0/AI-Horde-text-model-reference`), built into the binary like the image reference, so a
//! coordinator without network access prices and recognises text models as the public horde
//! does. A model's price grows with its parameter count (`parameters / 1e9`).
//!
//! Names are looked up as the public horde looks them up: exactly, then with a user suffix
//! `::…` dropped, then with a quantisation suffix (`-8B-Q4_K_M` and the like) removed by the
//! public horde's own expression.

use regex::Regex;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::OnceLock;

/// The reference built into this binary (a copy of `shared/reference/text/db.json`).
pub const BUILTIN_TEXT_MODELS: &str = include_str!("../../data/text_db.json");

/// What the horde uses of one text model.
#[derive(Debug, Clone, PartialEq)]
pub struct TextModelInfo {
    pub name: String,
    pub baseline: String,
    /// The parameter count.
    pub parameters: u64,
    pub nsfw: bool,
}

#[derive(Deserialize)]
struct RawTextModel {
    #[serde(default)]
    baseline: String,
    parameters: serde_json::Value,
    #[serde(default)]
    nsfw: bool,
}

/// The public horde's quantisation-suffix expression (`model_reference.no_q_regex`).
fn no_q_regex() -> &'static Regex {
    static NO_Q: OnceLock<Regex> = OnceLock::new();
    NO_Q.get_or_init(|| {
        Regex::new(r"[.,-][a-zA-Z0-9]+?-?Q(-[Ii]nt)?[2-9]{1,2}([_.-][0-9a-zA-Z]+)*")
            .expect("a valid expression")
    })
}

/// The text models the horde knows, by name.
#[derive(Debug, Clone, Default)]
pub struct TextModelReference {
    models: HashMap<String, TextModelInfo>,
}

impl TextModelReference {
    /// The reference built into this binary.
    pub fn builtin() -> TextModelReference {
        TextModelReference::parse(BUILTIN_TEXT_MODELS)
            .expect("the built-in text model reference is well formed")
    }

    /// Reads a reference in `db.json`'s shape: name → `{baseline, parameters, nsfw, …}`. A
    /// parameter count may be a number or a string of digits, as the public horde reads it.
    pub fn parse(json: &str) -> Result<TextModelReference, String> {
        let raw: HashMap<String, RawTextModel> = serde_json::from_str(json)
            .map_err(|e| format!("the text model reference is not valid: {e}"))?;
        if raw.is_empty() {
            return Err("the text model reference lists no models".into());
        }
        let mut models = HashMap::with_capacity(raw.len());
        for (name, model) in raw {
            let parameters = parameter_count(&model.parameters)
                .ok_or_else(|| format!("text model '{name}': parameters is not a whole number"))?;
            let info = TextModelInfo {
                name: name.clone(),
                baseline: model.baseline,
                parameters,
                nsfw: model.nsfw,
            };
            models.insert(name, info);
        }
        Ok(TextModelReference { models })
    }

    pub fn len(&self) -> usize {
        self.models.len()
    }

    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// The model `name` stands for, looked up as the public horde does (see the module
    /// documentation).
    pub fn get(&self, name: &str) -> Option<&TextModelInfo> {
        let name = name.split_once("::").map_or(name, |(model, _)| model);
        self.models.get(name).or_else(|| {
            let stripped = no_q_regex().replace_all(name, "");
            self.models.get(stripped.as_ref())
        })
    }

    pub fn is_known(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// The names among `names` the reference does not know.
    pub fn unknown<'a>(&self, names: &'a [String]) -> Vec<&'a str> {
        names
            .iter()
            .filter(|n| !self.is_known(n))
            .map(String::as_str)
            .collect()
    }

    /// The public horde's model multiplier: billions of parameters, 1 for a model it does not
    /// know (`get_text_model_multiplier`).
    pub fn multiplier(&self, name: &str) -> f64 {
        self.get(name)
            .map_or(1.0, |model| model.parameters as f64 / 1e9)
    }

    /// The largest multiplier among `names` (0 when there are none): what upfront kudos are
    /// reckoned from, so a small model named beside a big one does not lower the price.
    pub fn highest_multiplier(&self, names: &[String]) -> f64 {
        names.iter().map(|n| self.multiplier(n)).fold(0.0, f64::max)
    }
}

fn parameter_count(value: &serde_json::Value) -> Option<u64> {
    match value {
        serde_json::Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                .map(|f| f as u64)
        }),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    #[test]
    fn the_builtin_reference_is_the_shared_one() {
        // The SHA-256 of ../shared/reference/text/db.json.
        let sha = hex::encode(sha2::Sha256::digest(BUILTIN_TEXT_MODELS.as_bytes()));
        assert_eq!(
            sha,
            "46c4117e8d3aff5244edc2c8ca651326fb4f51daa6c699316dd6ab1b07068d26"
        );
        let reference = TextModelReference::builtin();
        assert_eq!(reference.len(), 2157);
    }

    #[test]
    fn a_models_multiplier_is_its_billions_of_parameters() {
        let reference = TextModelReference::builtin();
        let marx = reference.get("acrastt/Marx-3B-V3").unwrap();
        assert_eq!(marx.parameters, 3_000_000_000);
        assert_eq!(marx.baseline, "StableLM-3B-4E1T");
        assert!(!marx.nsfw);
        assert_eq!(reference.multiplier("koboldcpp/Marx-3B-V3"), 3.0);
        assert_eq!(reference.multiplier("aphrodite/acrastt/Marx-3B-V3"), 3.0);
        assert_eq!(reference.multiplier("no such model"), 1.0);
    }

    #[test]
    fn names_are_looked_up_as_the_public_horde_does() {
        let reference = TextModelReference::parse(
            r#"{"koboldcpp/Llama-3": {"baseline": "llama", "parameters": "8000000000"},
                "Big": {"parameters": 70000000000, "nsfw": true}}"#,
        )
        .unwrap();
        // A user suffix is dropped.
        assert_eq!(reference.multiplier("Big::someone#12"), 70.0);
        // The public expression removes "-8B-Q4_K_M", the size with the quantisation.
        assert_eq!(reference.multiplier("koboldcpp/Llama-3-8B-Q4_K_M"), 8.0);
        assert!(reference.is_known("koboldcpp/Llama-3.8B-Q8_0"));
        // A suffix that is no quantisation is not removed.
        assert!(!reference.is_known("koboldcpp/Llama-3-8B-Instruct"));
        assert_eq!(
            reference.unknown(&["Big".into(), "Small".into()]),
            ["Small"]
        );
        assert_eq!(
            reference.highest_multiplier(&["koboldcpp/Llama-3".into(), "Big".into()]),
            70.0
        );
        assert_eq!(reference.highest_multiplier(&[]), 0.0);
        assert!(reference.get("Big").unwrap().nsfw);
    }

    #[test]
    fn a_malformed_reference_is_refused_naming_the_model() {
        let error = TextModelReference::parse(r#"{"m": {"parameters": "many"}}"#).unwrap_err();
        assert!(error.contains("'m'"), "{error}");
        assert!(TextModelReference::parse("{}").is_err());
        assert!(TextModelReference::parse("[").is_err());
    }
}
