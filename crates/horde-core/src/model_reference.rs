//! The image model reference: which model names the horde knows, their baseline (the family
//! they were trained from), whether they inpaint, and what each baseline costs.
//!
//! It is read from the AI Horde image model reference (`stable_diffusion.json`) and the baseline
//! catalog (`baselines.json`, which also gives alternative names such as "SD1.5"). A copy of
//! both is built in; the coordinator may replace them from a file or URL and reload them while
//! it runs (parsing lives here, fetching in the server).

use serde::Deserialize;
use std::collections::HashMap;

/// The built-in image model reference (`stable_diffusion.json`).
pub const BUILTIN_MODELS: &str = include_str!("../data/stable_diffusion.json");
/// The built-in baseline catalog (`baselines.json`).
pub const BUILTIN_BASELINES: &str = include_str!("../data/baselines.json");

/// One model of the reference.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    pub name: String,
    /// The canonical baseline id (e.g. `stable_diffusion_xl`), or the reference's own baseline
    /// text when the catalog does not know it.
    pub baseline: String,
    pub inpainting: bool,
    pub nsfw: bool,
    /// `ckpt`, `diffusers`, `controlnet`, ...
    pub kind: String,
    /// The reference's recommended step range (`requirements`), when it gives one.
    pub min_steps: Option<u32>,
    pub max_steps: Option<u32>,
}

/// A baseline's kudos policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Baseline {
    pub id: String,
    /// Multiplier of a job's kudos (the public horde's `get_gen_kudos` family factor).
    pub kudos: f64,
    /// The multiplier instead, with hires fix (Stable Cascade).
    pub kudos_hires: Option<f64>,
}

#[derive(Debug, Clone, Default)]
pub struct ModelReference {
    models: HashMap<String, ModelInfo>,
    baselines: HashMap<String, Baseline>,
}

#[derive(Deserialize)]
struct RawModel {
    baseline: Option<String>,
    #[serde(default)]
    inpainting: bool,
    #[serde(default)]
    nsfw: bool,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    requirements: Option<RawRequirements>,
}

#[derive(Deserialize)]
struct RawRequirements {
    min_steps: Option<u32>,
    max_steps: Option<u32>,
}

#[derive(Deserialize)]
struct RawCatalog {
    baselines: HashMap<String, RawBaseline>,
}

#[derive(Deserialize)]
struct RawBaseline {
    #[serde(default)]
    alternative_names: Vec<String>,
    horde_policy: RawPolicy,
}

#[derive(Deserialize)]
struct RawPolicy {
    kudos: f64,
    kudos_hires: Option<f64>,
}

impl ModelReference {
    /// The reference built into this binary.
    pub fn builtin() -> ModelReference {
        ModelReference::parse(BUILTIN_MODELS, BUILTIN_BASELINES)
            .expect("the built-in model reference is well formed")
    }

    /// Reads a model reference and a baseline catalog (both JSON).
    pub fn parse(models_json: &str, baselines_json: &str) -> Result<ModelReference, String> {
        let raw_models: HashMap<String, RawModel> = serde_json::from_str(models_json)
            .map_err(|e| format!("the model reference is not valid: {e}"))?;
        let catalog: RawCatalog = serde_json::from_str(baselines_json)
            .map_err(|e| format!("the baseline catalog is not valid: {e}"))?;
        let mut alias: HashMap<String, String> = HashMap::new();
        let mut baselines = HashMap::new();
        for (id, raw) in catalog.baselines {
            for name in raw.alternative_names.iter().chain(std::iter::once(&id)) {
                alias.insert(name.to_lowercase(), id.clone());
            }
            baselines.insert(
                id.clone(),
                Baseline {
                    id,
                    kudos: raw.horde_policy.kudos,
                    kudos_hires: raw.horde_policy.kudos_hires,
                },
            );
        }
        if raw_models.is_empty() {
            return Err("the model reference lists no models".into());
        }
        let models = raw_models
            .into_iter()
            .map(|(name, raw)| {
                let listed = raw.baseline.unwrap_or_else(|| "infer".into());
                let baseline = alias.get(&listed.to_lowercase()).cloned().unwrap_or(listed);
                let info = ModelInfo {
                    name: name.clone(),
                    baseline,
                    inpainting: raw.inpainting,
                    nsfw: raw.nsfw,
                    kind: raw.kind.unwrap_or_else(|| "ckpt".into()),
                    min_steps: raw.requirements.as_ref().and_then(|r| r.min_steps),
                    max_steps: raw.requirements.as_ref().and_then(|r| r.max_steps),
                };
                (name, info)
            })
            .collect();
        Ok(ModelReference { models, baselines })
    }

    pub fn len(&self) -> usize {
        self.models.len()
    }

    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&ModelInfo> {
        self.models.get(name)
    }

    pub fn is_known(&self, name: &str) -> bool {
        self.models.contains_key(name)
    }

    /// The names of `names` that the reference does not list.
    pub fn unknown<'a>(&self, names: &'a [String]) -> Vec<&'a str> {
        names
            .iter()
            .filter(|n| !self.is_known(n))
            .map(String::as_str)
            .collect()
    }

    /// The family multiplier of a job's kudos when it runs `model` (1 for unknown models and
    /// baselines): SDXL 2, Stable Cascade 4 (7 with hires fix), Flux 8, Qwen 12, ...
    pub fn kudos_multiplier(&self, model: &str, hires_fix: bool) -> f64 {
        let Some(baseline) = self.baselines.get(&self.baseline_of(model)) else {
            return 1.0;
        };
        match (hires_fix, baseline.kudos_hires) {
            (true, Some(hires)) => hires,
            _ => baseline.kudos,
        }
    }

    /// The multiplier used to project what a request costs: its first model's (any of them
    /// may run it), as on the public horde; 1 for a request naming no model.
    pub fn request_multiplier(&self, request: &horde_api::image::ImageRequest) -> f64 {
        request.models.first().map_or(1.0, |model| {
            self.kudos_multiplier(model, request.params.hires_fix)
        })
    }

    /// The baseline of `model`: the reference's, or for a custom model the family its name
    /// carries as the public horde reads it (`[SDXL]`, `[Flux]`, `[Qwen]`, `[ZImage]`/`[ZModel]`),
    /// else Stable Diffusion 1.
    pub fn baseline_of(&self, model: &str) -> String {
        if let Some(info) = self.get(model) {
            return info.baseline.clone();
        }
        let tagged = [
            ("[SDXL]", "stable_diffusion_xl"),
            ("[Flux]", "flux_1"),
            ("[Qwen]", "qwen_image"),
            ("[ZModel]", "z_image_turbo"),
            ("[ZImage]", "z_image_turbo"),
        ];
        tagged
            .iter()
            .find(|(tag, _)| model.contains(tag))
            .map_or("stable_diffusion_1", |(_, baseline)| baseline)
            .to_string()
    }

    /// The most steps a `limit_max_steps` worker takes on `model`: the mean of the model's
    /// min and max steps (20 and 40 when the reference gives none), as the public horde.
    pub fn step_limit(&self, model: &str) -> u32 {
        let info = self.get(model);
        let min = info.and_then(|m| m.min_steps).unwrap_or(20);
        let max = info.and_then(|m| m.max_steps).unwrap_or(40);
        (min + max) / 2
    }

    /// What a worker serving `offered` may stand in for: each known model nobody in `served`
    /// offers, paired with the first of `offered` that can substitute it.
    pub fn fallbacks(
        &self,
        offered: &[String],
        served: &std::collections::HashSet<String>,
    ) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .models
            .keys()
            .filter(|wanted| !served.contains(*wanted))
            .filter_map(|wanted| {
                offered
                    .iter()
                    .find(|mine| self.can_substitute(wanted, mine))
                    .map(|mine| (wanted.clone(), mine.clone()))
            })
            .collect();
        out.sort();
        out
    }

    /// Whether `substitute` may run a job asked for `model`: a different known model of the same
    /// baseline and inpainting flag.
    pub fn can_substitute(&self, model: &str, substitute: &str) -> bool {
        match (self.get(model), self.get(substitute)) {
            (Some(a), Some(b)) => {
                a.name != b.name && a.baseline == b.baseline && a.inpainting == b.inpainting
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    #[test]
    fn the_builtin_reference_is_the_shared_one() {
        // The SHA-256 of ../shared/reference/image/{stable_diffusion,baselines}.json.
        let sha = |text: &str| hex::encode(sha2::Sha256::digest(text.as_bytes()));
        assert_eq!(
            sha(BUILTIN_MODELS),
            "eb46ff303988e89d11b65584eb4d3a43dc6f3062cd606b78761455c3aa609782"
        );
        assert_eq!(
            sha(BUILTIN_BASELINES),
            "8ca7c75ae588bb89c3e5981b41edb1fc8ca6defbe0553cca88fe2a8b210889bb"
        );
        assert_eq!(ModelReference::builtin().len(), 161);
    }

    #[test]
    fn baselines_resolve_through_their_alternative_names() {
        let r = ModelReference::builtin();
        assert_eq!(
            r.get("stable_diffusion").unwrap().baseline,
            "stable_diffusion_1"
        );
        let sdxl = r
            .models
            .values()
            .find(|m| m.baseline == "stable_diffusion_xl")
            .expect("an SDXL model");
        assert_eq!(r.kudos_multiplier(&sdxl.name, false), 2.0);
        assert_eq!(r.kudos_multiplier("stable_diffusion", false), 1.0);
        assert_eq!(r.kudos_multiplier("no such model", false), 1.0);
        assert_eq!(r.kudos_multiplier("My Finetune [SDXL]", false), 2.0);
        assert_eq!(r.kudos_multiplier("My Finetune [Flux]", false), 8.0);
        let cascade = r
            .models
            .values()
            .find(|m| m.baseline == "stable_cascade")
            .expect("a Stable Cascade model");
        assert_eq!(r.kudos_multiplier(&cascade.name, false), 4.0);
        assert_eq!(r.kudos_multiplier(&cascade.name, true), 7.0);
    }

    #[test]
    fn substitutes_share_baseline_and_inpainting() {
        let r = ModelReference::builtin();
        let sd1: Vec<&ModelInfo> = r
            .models
            .values()
            .filter(|m| m.baseline == "stable_diffusion_1")
            .collect();
        let plain = sd1.iter().find(|m| !m.inpainting).unwrap();
        let other_plain = sd1
            .iter()
            .find(|m| !m.inpainting && m.name != plain.name)
            .unwrap();
        let inpainting = sd1.iter().find(|m| m.inpainting).unwrap();
        assert!(r.can_substitute(&plain.name, &other_plain.name));
        assert!(!r.can_substitute(&plain.name, &inpainting.name));
        assert!(!r.can_substitute(&plain.name, &plain.name));
        assert!(!r.can_substitute(&plain.name, "unknown"));
    }

    #[test]
    fn step_limits_and_fallbacks_follow_the_reference() {
        let r = ModelReference::builtin();
        assert_eq!(r.step_limit("stable_diffusion"), 30);
        assert_eq!(r.step_limit("DreamShaper XL"), 4, "min 3, max 6");
        assert_eq!(r.step_limit("unknown"), 30);
        let offered = vec!["stable_diffusion".to_string()];
        let served: std::collections::HashSet<String> =
            ["stable_diffusion".to_string(), "Deliberate".to_string()].into();
        let fallbacks = r.fallbacks(&offered, &served);
        assert!(fallbacks.contains(&("Anything Diffusion".into(), "stable_diffusion".into())));
        assert!(
            fallbacks.iter().all(|(wanted, _)| wanted != "Deliberate"),
            "a model someone serves is not stood in for"
        );
        assert!(fallbacks
            .iter()
            .all(
                |(wanted, _)| r.get(wanted).unwrap().baseline == "stable_diffusion_1"
                    && !r.get(wanted).unwrap().inpainting
            ));
    }

    #[test]
    fn broken_references_are_refused_with_a_reason() {
        assert!(ModelReference::parse("{", BUILTIN_BASELINES)
            .unwrap_err()
            .contains("model reference"));
        assert!(ModelReference::parse("{}", BUILTIN_BASELINES)
            .unwrap_err()
            .contains("no models"));
        assert!(ModelReference::parse(BUILTIN_MODELS, "[]")
            .unwrap_err()
            .contains("baseline catalog"));
    }
}
