//! Which worker may take which request: the one matching implementation.
//!
//! `can_generate` answers for one (request, worker) pair with the public horde's skip reasons,
//! which pop answers count in `skipped`. The queue decides the order in which pairs are tried.

use crate::bridge::BridgeCapabilities;
use crate::post_processing;
use crate::request::LiveRequest;
use horde_api::image::SourceProcessing;
use std::collections::HashMap;
use uuid::Uuid;

/// Requests that ask for fast workers only (`slow_workers: false`) skip workers slower than
/// this, in megapixelsteps per second (the public horde's 500 000 pixelsteps/s).
pub const SLOW_WORKER_MPS: f64 = 0.5;
/// The step limit of a `limit_max_steps` worker when the model reference gives none: the mean
/// of the default 20 and 40.
pub const DEFAULT_STEP_LIMIT: u32 = 30;

/// What a worker declared in its pop, plus what the coordinator knows of it.
#[derive(Debug, Clone)]
pub struct WorkerCaps {
    pub worker_id: Uuid,
    pub owner_id: i64,
    pub owner_trusted: bool,
    pub models: Vec<String>,
    pub max_pixels: u64,
    pub nsfw: bool,
    pub blacklist: Vec<String>,
    pub allow_img2img: bool,
    pub allow_painting: bool,
    pub allow_post_processing: bool,
    /// It runs the NSFW censor on SFW requests that ask for it.
    pub nsfw_censor: bool,
    /// The post-processors the worker declared it runs (`post_processors` of its pop); `None`:
    /// those its bridge version grants.
    pub declared_post_processors: Option<Vec<String>>,
    pub allow_lora: bool,
    pub allow_controlnet: bool,
    /// The control types it draws maps for from a picture; `None`: any.
    pub control_types: Option<Vec<String>>,
    /// The control types it runs from a map the request gives (`image_is_control`); `None`: any.
    pub control_map_types: Option<Vec<String>>,
    pub amount: u32,
    pub bridge_agent: String,
    /// Users (by id) whose requests this worker serves first; always includes the owner.
    pub priority_user_ids: Vec<i64>,
    pub maintenance: bool,
    /// Takes only requests whose requester could pay upfront (or that it prioritises).
    pub require_upfront_kudos: bool,
    /// Measured speed, megapixelsteps per second; `None` before its first finished job.
    pub speed_mps: Option<f64>,
    /// Declared extra slow: takes only requests that accept extra slow workers.
    pub extra_slow: bool,
    /// With `limit_max_steps`, the most steps it takes per model it serves (the mean of the
    /// model's min and max steps in the reference); `None` without the flag.
    pub step_limits: Option<HashMap<String, u32>>,
    /// Models this worker may run in place of others, for requests that allow model fallback:
    /// (a requested model nobody online serves, this worker's model of the same baseline).
    pub fallback: Vec<(String, String)>,
    /// The worker's models the model reference marks `inpainting` (an inpainting or
    /// outpainting job needs one; a worker with nothing else takes only those jobs).
    pub inpainting_models: Vec<String>,
    /// The models of `models` it holds in memory now (`loaded_models` of its pop; it loads the
    /// others first). `None`: it did not say, and is treated as holding them all.
    pub loaded_models: Option<Vec<String>>,
}

/// Whether a worker that declared `loaded` (its pop's `loaded_models`) holds `model` in memory.
/// One that declared nothing (every public-horde worker) is treated as holding every model it
/// serves, so routing and deadlines treat it as before.
pub fn holds_model(loaded: Option<&[String]>, model: &str) -> bool {
    loaded.is_none_or(|held| held.iter().any(|m| m == model))
}

/// Why a worker was not given a request; the names are the public horde's `skipped` keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipReason {
    Models,
    MaxPixels,
    Nsfw,
    Untrusted,
    WorkerId,
    Blacklist,
    Img2img,
    Painting,
    PostProcessing,
    Lora,
    Controlnet,
    Maintenance,
    Kudos,
    Performance,
    StepCount,
    BridgeVersion,
    /// Text: the worker's context is shorter than the request's.
    MaxContextLength,
    /// Text: the worker generates fewer tokens than the request asks.
    MaxLength,
    /// Text: the worker does not offer the request's softprompt.
    MatchingSoftprompt,
    /// Alchemy: the source image has more 512×512 tiles than the alchemist takes.
    MaxTiles,
}

impl SkipReason {
    pub fn key(self) -> &'static str {
        match self {
            SkipReason::Models => "models",
            SkipReason::MaxPixels => "max_pixels",
            SkipReason::Nsfw => "nsfw",
            SkipReason::Untrusted => "untrusted",
            SkipReason::WorkerId => "worker_id",
            SkipReason::Blacklist => "blacklist",
            SkipReason::Img2img => "img2img",
            SkipReason::Painting => "painting",
            SkipReason::PostProcessing => "post-processing",
            SkipReason::Lora => "lora",
            SkipReason::Controlnet => "controlnet",
            SkipReason::Maintenance => "maintenance",
            SkipReason::Kudos => "kudos",
            SkipReason::Performance => "performance",
            SkipReason::StepCount => "step_count",
            SkipReason::BridgeVersion => "bridge_version",
            SkipReason::MaxContextLength => "max_context_length",
            SkipReason::MaxLength => "max_length",
            SkipReason::MatchingSoftprompt => "matching_softprompt",
            SkipReason::MaxTiles => "max_tiles",
        }
    }
}

/// The model this worker would run for this request, if any: the first model both name, or
/// any of the worker's models when the request names none, or else (when the request allows
/// model fallback) the worker's stand-in for a requested model nobody online serves.
pub fn chosen_model(request: &LiveRequest, worker: &WorkerCaps) -> Option<String> {
    if request.body.models.is_empty() {
        return worker.models.first().cloned();
    }
    let models = &request.body.models;
    models
        .iter()
        .find(|m| worker.models.contains(m))
        .cloned()
        .or_else(|| fallback_model(request, worker))
}

/// The worker's stand-in for one of the request's models, when the request allows fallback.
pub fn fallback_model(request: &LiveRequest, worker: &WorkerCaps) -> Option<String> {
    if !request.body.allow_model_fallback {
        return None;
    }
    worker
        .fallback
        .iter()
        .find(|(wanted, _)| request.body.models.contains(wanted))
        .map(|(_, substitute)| substitute.clone())
}

/// Whether `worker` may take a job of `request`, or the first reason it may not.
pub fn can_generate(request: &LiveRequest, worker: &WorkerCaps) -> Result<(), SkipReason> {
    let body = &request.body;
    let params = &body.params;
    if worker.maintenance && request.user_id != worker.owner_id {
        return Err(SkipReason::Maintenance);
    }
    if worker.require_upfront_kudos
        && !request.can_pay_upfront
        && !worker.priority_user_ids.contains(&request.user_id)
    {
        return Err(SkipReason::Kudos);
    }
    let Some(model) = chosen_model(request, worker) else {
        return Err(SkipReason::Models);
    };
    if u64::from(params.width) * u64::from(params.height) > worker.max_pixels {
        return Err(SkipReason::MaxPixels);
    }
    if body.nsfw && !worker.nsfw {
        return Err(SkipReason::Nsfw);
    }
    if !body.nsfw && body.censor_nsfw && !worker.nsfw_censor {
        return Err(SkipReason::Nsfw);
    }
    if body.trusted_workers && !worker.owner_trusted {
        return Err(SkipReason::Untrusted);
    }
    check_speed(request, worker)?;
    if let Some(limits) = &worker.step_limits {
        let limit = limits.get(&model).copied().unwrap_or(DEFAULT_STEP_LIMIT);
        if params.effective_steps() > limit {
            return Err(SkipReason::StepCount);
        }
    }
    check_worker_list(request, worker)?;
    check_blacklist(&body.prompt, &worker.blacklist)?;
    check_sources(request, worker)?;
    if !params.post_processing.is_empty()
        && (!worker.allow_post_processing
            || !post_processing::declared_cover(
                &params.post_processing,
                worker.declared_post_processors.as_deref(),
            ))
    {
        return Err(SkipReason::PostProcessing);
    }
    if !params.loras.is_empty() && !worker.allow_lora {
        return Err(SkipReason::Lora);
    }
    if let Some(control) = params.control_type {
        let offered = if params.image_is_control {
            &worker.control_map_types
        } else {
            &worker.control_types
        };
        let runs_it = offered
            .as_ref()
            .is_none_or(|types| types.iter().any(|t| t == control.name()));
        if !worker.allow_controlnet || !runs_it {
            return Err(SkipReason::Controlnet);
        }
    }
    check_bridge(request, &BridgeCapabilities::of(&worker.bridge_agent))
}

/// Whether `request` is an inpainting or outpainting job (a source image to paint into).
pub fn is_painting(request: &LiveRequest) -> bool {
    request.body.source_image.is_some()
        && matches!(
            request.body.source_processing,
            SourceProcessing::Inpainting | SourceProcessing::Outpainting
        )
}

/// A source image needs the worker's leave (`allow_img2img`, or `allow_painting` to paint);
/// painting needs an inpainting model among the worker's (any of them: the requested model
/// need not be one), and a worker holding only inpainting models takes only painting jobs.
/// The last two are the public horde's rules and count as `models`, as there.
fn check_sources(request: &LiveRequest, worker: &WorkerCaps) -> Result<(), SkipReason> {
    let painting = is_painting(request);
    if request.body.source_image.is_some() {
        if painting && !worker.allow_painting {
            return Err(SkipReason::Painting);
        }
        if !painting && !worker.allow_img2img {
            return Err(SkipReason::Img2img);
        }
    }
    let only_inpainting = !worker.models.is_empty()
        && worker
            .models
            .iter()
            .all(|m| worker.inpainting_models.contains(m));
    if (painting && worker.inpainting_models.is_empty()) || (!painting && only_inpainting) {
        return Err(SkipReason::Models);
    }
    Ok(())
}

/// Fast-only requests skip slow workers; extra slow workers take only requests that accept
/// them.
fn check_speed(request: &LiveRequest, worker: &WorkerCaps) -> Result<(), SkipReason> {
    let slow = worker.speed_mps.is_some_and(|s| s < SLOW_WORKER_MPS);
    if (!request.body.slow_workers && (slow || worker.extra_slow))
        || (worker.extra_slow && !request.body.extra_slow_workers)
    {
        return Err(SkipReason::Performance);
    }
    Ok(())
}

/// Whether the worker's software can run what the request needs.
fn check_bridge(request: &LiveRequest, can: &BridgeCapabilities) -> Result<(), SkipReason> {
    let body = &request.body;
    let p = &body.params;
    let painting = is_painting(request);
    let needs = [
        body.source_image.is_some() && !painting && !can.img2img,
        painting && !can.painting,
        p.post_processing
            .iter()
            .any(|pp| !can.runs_post_processor(pp)),
        p.tiling && !can.tiling,
        p.hires_fix && !can.hires_fix,
        p.clip_skip.is_some_and(|c| c > 1) && !can.clip_skip,
    ];
    if needs.into_iter().any(|missing| missing) || !runs_networks(p, can) {
        return Err(SkipReason::BridgeVersion);
    }
    Ok(())
}

/// Whether the bridge runs the request's ControlNet, LoRAs and textual inversions, as the
/// public horde's bridge reference grants them: a control job needs `controlnet` and
/// `image_is_control`, `return_control_map` its own capability (with or without a control
/// type, as there), LoRAs `lora` and `lora_versions` when one is named by version,
/// textual inversions `textual_inversion`. (Whether the worker *allows* LoRAs and ControlNet is
/// asked before, and skipped as `lora` and `controlnet`.)
fn runs_networks(p: &horde_api::image::ImageParams, can: &BridgeCapabilities) -> bool {
    let missing = [
        p.control_type.is_some() && !(can.controlnet && can.image_is_control),
        p.return_control_map && !can.return_control_map,
        !p.loras.is_empty() && !can.lora,
        p.loras.iter().any(|l| l.is_version) && !can.lora_versions,
        !p.tis.is_empty() && !can.textual_inversion,
    ];
    !missing.into_iter().any(|m| m)
}

fn check_worker_list(request: &LiveRequest, worker: &WorkerCaps) -> Result<(), SkipReason> {
    let listed = request
        .body
        .workers
        .iter()
        .any(|w| Uuid::parse_str(w).ok() == Some(worker.worker_id));
    if request.body.workers.is_empty() {
        return Ok(());
    }
    // `workers` is an allow-list, or a block-list when `worker_blacklist` is set.
    if listed == request.body.worker_blacklist {
        return Err(SkipReason::WorkerId);
    }
    Ok(())
}

fn check_blacklist(prompt: &str, blacklist: &[String]) -> Result<(), SkipReason> {
    if blacklist.is_empty() {
        return Ok(());
    }
    let positive = prompt
        .split("###")
        .next()
        .unwrap_or_default()
        .to_lowercase();
    let hit = blacklist
        .iter()
        .map(|w| w.trim().to_lowercase())
        .filter(|w| !w.is_empty())
        .any(|w| positive.contains(&w));
    if hit {
        Err(SkipReason::Blacklist)
    } else {
        Ok(())
    }
}

/// How many images one pass of a worker asking for `amount` holds for images like `request`'s:
/// the public horde's "safe amount", limited by max_pixels and post-processing load, at least 1.
pub fn pass_capacity(request: &LiveRequest, worker: &WorkerCaps) -> u32 {
    let params = &request.body.params;
    if request.body.disable_batching {
        return 1;
    }
    let mut pp_mult = 1.0 + 0.4 * params.post_processing.len() as f64;
    if params.post_processing.iter().any(|p| {
        matches!(
            p.as_str(),
            "RealESRGAN_x4plus" | "4x_AnimeSharp" | "NMKD_Siax" | "CodeFormers"
        )
    }) {
        pp_mult *= 1.8;
    }
    let pixels = f64::from(params.width) * f64::from(params.height);
    let safe =
        ((worker.max_pixels as f64 / 3.5) * f64::from(worker.amount) / (pixels * pp_mult)).round();
    (safe as u32).clamp(1, worker.amount.max(1))
}

/// How many images of `request` to give a worker asking for `amount`: the public horde's "safe
/// amount", limited by max_pixels and post-processing load, at least 1, at most what is waiting.
pub fn batch_size(request: &LiveRequest, worker: &WorkerCaps) -> u32 {
    pass_capacity(request, worker)
        .min(request.n_remaining)
        .max(1)
}

/// Whether `other`'s images may be made in the same engine pass as `request`'s: members of one
/// batch of prompts whose requests differ only in their prompt (negative prompt included) and
/// seed, so that model, size, steps, sampler and everything else are one pass's.
pub fn shares_pass(request: &LiveRequest, other: &LiveRequest) -> bool {
    let without_prompt = |r: &LiveRequest| {
        let mut body = r.body.clone();
        body.prompt.clear();
        body.params.seed = None;
        body
    };
    request.batch_id.is_some()
        && request.batch_id == other.batch_id
        && without_prompt(request) == without_prompt(other)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::tests::request_from;
    use serde_json::json;

    fn worker() -> WorkerCaps {
        WorkerCaps {
            worker_id: Uuid::new_v4(),
            owner_id: 7,
            owner_trusted: false,
            models: vec!["stable_diffusion".into()],
            max_pixels: 512 * 512,
            nsfw: true,
            blacklist: vec![],
            allow_img2img: true,
            allow_painting: true,
            allow_post_processing: true,
            nsfw_censor: true,
            declared_post_processors: None,
            allow_lora: false,
            allow_controlnet: false,
            control_types: None,
            control_map_types: None,
            amount: 1,
            bridge_agent: "AI Horde Worker reGen:9.0.1:x".into(),
            priority_user_ids: vec![7],
            maintenance: false,
            require_upfront_kudos: false,
            speed_mps: None,
            extra_slow: false,
            step_limits: None,
            fallback: vec![],
            inpainting_models: vec![],
            loaded_models: None,
        }
    }

    fn check(
        body: serde_json::Value,
        edit: impl FnOnce(&mut WorkerCaps),
        expected: Result<(), SkipReason>,
    ) {
        let request = request_from(body);
        let mut w = worker();
        edit(&mut w);
        assert_eq!(can_generate(&request, &w), expected);
    }

    #[test]
    fn a_plain_request_matches_a_plain_worker() {
        check(json!({"prompt": "cat"}), |_| {}, Ok(()));
    }

    #[test]
    fn models_must_intersect() {
        check(
            json!({"prompt": "cat", "models": ["other"]}),
            |_| {},
            Err(SkipReason::Models),
        );
    }

    #[test]
    fn a_request_without_models_takes_any_worker_model() {
        check(
            json!({"prompt": "cat", "models": []}),
            |w| w.models = vec!["x".into()],
            Ok(()),
        );
    }

    #[test]
    fn size_over_max_pixels_is_skipped() {
        check(
            json!({"prompt": "cat", "params": {"width": 1024, "height": 1024}}),
            |_| {},
            Err(SkipReason::MaxPixels),
        );
    }

    #[test]
    fn nsfw_requests_need_nsfw_workers() {
        check(
            json!({"prompt": "cat"}),
            |w| w.nsfw = false,
            Err(SkipReason::Nsfw),
        );
        check(
            json!({"prompt": "cat", "nsfw": false}),
            |w| w.nsfw = false,
            Ok(()),
        );
    }

    #[test]
    fn sfw_requests_that_ask_for_the_censor_need_a_censoring_worker() {
        let no_censor = |w: &mut WorkerCaps| w.nsfw_censor = false;
        check(
            json!({"prompt": "cat", "nsfw": false}),
            no_censor,
            Err(SkipReason::Nsfw),
        );
        check(
            json!({"prompt": "cat", "nsfw": false, "censor_nsfw": false}),
            no_censor,
            Ok(()),
        );
        check(json!({"prompt": "cat", "nsfw": true}), no_censor, Ok(()));
        check(json!({"prompt": "cat", "nsfw": false}), |_| {}, Ok(()));
    }

    #[test]
    fn trusted_workers_only_when_asked() {
        check(
            json!({"prompt": "cat", "trusted_workers": true}),
            |_| {},
            Err(SkipReason::Untrusted),
        );
        check(
            json!({"prompt": "cat", "trusted_workers": true}),
            |w| w.owner_trusted = true,
            Ok(()),
        );
    }

    #[test]
    fn blacklisted_words_in_the_positive_prompt_skip() {
        check(
            json!({"prompt": "a Red car"}),
            |w| w.blacklist = vec!["red".into()],
            Err(SkipReason::Blacklist),
        );
        check(
            json!({"prompt": "a car ### red"}),
            |w| w.blacklist = vec!["red".into()],
            Ok(()),
        );
    }

    #[test]
    fn worker_allow_and_block_lists() {
        let w = worker();
        let id = w.worker_id.to_string();
        let request = request_from(json!({"prompt": "c", "workers": [id.clone()]}));
        assert_eq!(can_generate(&request, &w), Ok(()));
        let request =
            request_from(json!({"prompt": "c", "workers": [id], "worker_blacklist": true}));
        assert_eq!(can_generate(&request, &w), Err(SkipReason::WorkerId));
        let request = request_from(json!({"prompt": "c", "workers": [Uuid::new_v4().to_string()]}));
        assert_eq!(can_generate(&request, &w), Err(SkipReason::WorkerId));
    }

    #[test]
    fn upfront_workers_take_only_requesters_who_could_pay_or_whom_they_prioritise() {
        let mut request = request_from(json!({"prompt": "c"}));
        request.can_pay_upfront = false;
        let mut w = worker();
        assert_eq!(can_generate(&request, &w), Ok(()), "others take anything");
        w.require_upfront_kudos = true;
        assert_eq!(can_generate(&request, &w), Err(SkipReason::Kudos));
        w.priority_user_ids.push(request.user_id);
        assert_eq!(can_generate(&request, &w), Ok(()));
        w.priority_user_ids.pop();
        request.can_pay_upfront = true;
        assert_eq!(can_generate(&request, &w), Ok(()));
    }

    #[test]
    fn feature_flags_gate_jobs() {
        check(
            json!({"prompt": "c", "params": {"loras": [{"name": "l"}]}}),
            |_| {},
            Err(SkipReason::Lora),
        );
        check(
            json!({"prompt": "c", "params": {"post_processing": ["GFPGAN"]}}),
            |w| w.allow_post_processing = false,
            Err(SkipReason::PostProcessing),
        );
        check(
            json!({"prompt": "c", "source_image": "x"}),
            |w| w.allow_img2img = false,
            Err(SkipReason::Img2img),
        );
        check(
            json!({"prompt": "c", "source_image": "x", "source_processing": "inpainting"}),
            |w| w.allow_painting = false,
            Err(SkipReason::Painting),
        );
    }

    #[test]
    fn painting_needs_an_inpainting_model_and_inpainting_only_workers_take_only_painting() {
        let painting =
            json!({"prompt": "c", "source_image": "x", "source_processing": "outpainting"});
        check(painting.clone(), |_| {}, Err(SkipReason::Models));
        let holds_one = |w: &mut WorkerCaps| {
            w.models.push("stable_diffusion_inpainting".into());
            w.inpainting_models = vec!["stable_diffusion_inpainting".into()];
        };
        check(painting.clone(), holds_one, Ok(()));
        check(json!({"prompt": "c"}), holds_one, Ok(()));
        let only_inpainting = |w: &mut WorkerCaps| {
            w.models = vec!["stable_diffusion_inpainting".into()];
            w.inpainting_models = w.models.clone();
        };
        check(
            json!({"prompt": "c", "models": ["stable_diffusion_inpainting"]}),
            only_inpainting,
            Err(SkipReason::Models),
        );
        check(
            json!({"prompt": "c", "models": ["stable_diffusion_inpainting"], "source_image": "x", "source_processing": "inpainting"}),
            only_inpainting,
            Ok(()),
        );
        // Without a source image, "inpainting" is plain generation.
        check(
            json!({"prompt": "c", "source_processing": "inpainting"}),
            |_| {},
            Ok(()),
        );
    }

    #[test]
    fn fast_only_requests_skip_measured_slow_and_extra_slow_workers() {
        let fast_only = json!({"prompt": "c", "slow_workers": false});
        check(fast_only.clone(), |_| {}, Ok(()));
        check(
            fast_only.clone(),
            |w| w.speed_mps = Some(0.4),
            Err(SkipReason::Performance),
        );
        check(fast_only, |w| w.speed_mps = Some(0.6), Ok(()));
        check(json!({"prompt": "c"}), |w| w.speed_mps = Some(0.1), Ok(()));
        check(
            json!({"prompt": "c"}),
            |w| w.extra_slow = true,
            Err(SkipReason::Performance),
        );
        check(
            json!({"prompt": "c", "extra_slow_workers": true}),
            |w| w.extra_slow = true,
            Ok(()),
        );
    }

    #[test]
    fn step_limits_apply_to_the_model_that_would_run() {
        let limits = |w: &mut WorkerCaps| {
            w.step_limits = Some([("stable_diffusion".to_string(), 25)].into());
        };
        check(
            json!({"prompt": "c", "params": {"steps": 25}}),
            limits,
            Ok(()),
        );
        check(
            json!({"prompt": "c", "params": {"steps": 26}}),
            limits,
            Err(SkipReason::StepCount),
        );
    }

    #[test]
    fn bridges_without_a_capability_are_skipped_as_bridge_version() {
        let unknown = |w: &mut WorkerCaps| w.bridge_agent = "mine:1:x".into();
        check(json!({"prompt": "c"}), unknown, Ok(()));
        for params in [
            json!({"tiling": true}),
            json!({"hires_fix": true}),
            json!({"clip_skip": 2}),
        ] {
            check(
                json!({"prompt": "c", "params": params}),
                unknown,
                Err(SkipReason::BridgeVersion),
            );
        }
        check(
            json!({"prompt": "c", "params": {"loras": [{"name": "l"}]}}),
            |w| {
                w.allow_lora = true;
                w.bridge_agent = "AI Horde Worker reGen:1.0:x".into();
            },
            Err(SkipReason::BridgeVersion),
        );
    }

    /// A worker that allows LoRAs and ControlNet, on `bridge`.
    fn allowing_all_on(bridge: &'static str) -> impl FnOnce(&mut WorkerCaps) {
        move |w| {
            w.allow_lora = true;
            w.allow_controlnet = true;
            w.bridge_agent = bridge.into();
        }
    }

    #[test]
    fn a_worker_that_names_its_control_types_gets_only_those() {
        let canny =
            json!({"prompt": "c", "source_image": "x", "params": {"control_type": "canny"}});
        let depth_map = json!({"prompt": "c", "source_image": "x", "params": {"control_type": "depth", "image_is_control": true}});
        let depth =
            json!({"prompt": "c", "source_image": "x", "params": {"control_type": "depth"}});
        let names = |types: &[&str]| Some(types.iter().map(|t| t.to_string()).collect());
        let declaring = move |w: &mut WorkerCaps| {
            allowing_all_on("AI Horde Worker reGen:9.0.1:x")(w);
            w.control_types = names(&["canny"]);
            w.control_map_types = names(&["canny", "depth"]);
        };
        check(canny.clone(), declaring, Ok(()));
        check(depth_map.clone(), declaring, Ok(()));
        check(depth.clone(), declaring, Err(SkipReason::Controlnet));
        // Without the lists, any type, as on the public horde.
        check(
            depth,
            allowing_all_on("AI Horde Worker reGen:9.0.1:x"),
            Ok(()),
        );
        // A declared type does not lift the worker's own refusal.
        check(
            canny,
            move |w: &mut WorkerCaps| {
                declaring(w);
                w.allow_controlnet = false;
            },
            Err(SkipReason::Controlnet),
        );
    }

    #[test]
    fn networks_need_the_workers_leave_first_and_then_its_bridge() {
        let lora = json!({"prompt": "c", "params": {"loras": [{"name": "l"}]}});
        let control =
            json!({"prompt": "c", "source_image": "x", "params": {"control_type": "canny"}});
        // Not allowed: the worker's choice, whatever its bridge.
        check(lora.clone(), |_| {}, Err(SkipReason::Lora));
        check(control.clone(), |_| {}, Err(SkipReason::Controlnet));
        check(
            control.clone(),
            |w| w.bridge_agent = "mine:1:x".into(),
            Err(SkipReason::Controlnet),
        );
        // Allowed, on a bridge that has them or not.
        let regen_2 = "AI Horde Worker reGen:2.0.0:x";
        check(lora.clone(), allowing_all_on(regen_2), Ok(()));
        check(control.clone(), allowing_all_on(regen_2), Ok(()));
        check(
            lora,
            allowing_all_on("AI Horde Worker:21:x"),
            Err(SkipReason::BridgeVersion),
        );
        check(
            control.clone(),
            allowing_all_on("AI Horde Worker:22:x"),
            Err(SkipReason::BridgeVersion),
        );
        check(control, allowing_all_on("AI Horde Worker:23:x"), Ok(()));
    }

    #[test]
    fn textual_inversions_versioned_loras_and_control_maps_need_their_bridge_capability() {
        let cases = [
            (
                json!({"tis": [{"name": "7808"}]}),
                "AI Horde Worker:23:x",
                "AI Horde Worker:24:x",
            ),
            (
                json!({"loras": [{"name": "128713", "is_version": true}]}),
                "AI Horde Worker reGen:2.9.0:x",
                "AI Horde Worker reGen:3.0.0:x",
            ),
            (
                json!({"return_control_map": true}),
                "AI Horde Worker:17:x",
                "AI Horde Worker:18:x",
            ),
        ];
        for (params, without, with) in cases {
            let body = json!({"prompt": "c", "params": params});
            check(
                body.clone(),
                allowing_all_on(without),
                Err(SkipReason::BridgeVersion),
            );
            check(body, allowing_all_on(with), Ok(()));
        }
    }

    #[test]
    fn fallback_needs_the_flag_and_a_stand_in_for_a_requested_model() {
        let stand_in = |w: &mut WorkerCaps| {
            w.fallback = vec![("Anything Diffusion".into(), "stable_diffusion".into())];
        };
        let asked = json!({"prompt": "c", "models": ["Anything Diffusion"]});
        check(asked.clone(), stand_in, Err(SkipReason::Models));
        let mut flexible = asked;
        flexible["allow_model_fallback"] = json!(true);
        check(flexible.clone(), stand_in, Ok(()));
        let request = request_from(flexible);
        let mut w = worker();
        stand_in(&mut w);
        assert_eq!(
            chosen_model(&request, &w).as_deref(),
            Some("stable_diffusion")
        );
    }

    #[test]
    fn batches_are_bounded_by_pixels_amount_and_waiting_images() {
        let mut w = worker();
        w.amount = 4;
        w.max_pixels = 4 * 1024 * 1024;
        let request = request_from(json!({"prompt": "c", "params": {"n": 3}}));
        assert_eq!(batch_size(&request, &w), 3);
        let request =
            request_from(json!({"prompt": "c", "params": {"n": 3}, "disable_batching": true}));
        assert_eq!(batch_size(&request, &w), 1);
        w.max_pixels = 512 * 512;
        let request = request_from(json!({"prompt": "c", "params": {"n": 3}}));
        assert_eq!(batch_size(&request, &w), 1);
    }
}
