//! The text job kind: what a text request stores, what a text worker declares, and when the
//! worker may take a job, with the public horde's skip reasons (its base worker's checks, then
//! the text worker's: `max_context_length`, `max_length`, `matching_softprompt`). A text job is
//! one generation of `max_length` tokens; work is measured in tokens.
//!
//! A text job cannot reach an image worker by construction: each kind has its own queue
//! (`Queue<Text>` holds only text bodies) and a worker of one kind has caps of that kind only.

use crate::deadline::DeadlineBounds;
use crate::kind::{Capabilities, JobKind};
use crate::matching::SkipReason;
use crate::request::LiveRequest;
use crate::text::pricing;
use crate::text::reference::TextModelReference;
use horde_api::text::{TextJobPayload, TextRequest};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A worker under this many tokens a second is slow: requests with `slow_workers: false` skip
/// it (ours; the public horde measures text speed in the same unit).
pub const SLOW_WORKER_TOKENS_PER_SEC: f64 = 2.0;
/// Assumed speed of a text worker that has finished no job yet (a CPU running a small model).
pub const UNMEASURED_TOKENS_PER_SEC: f64 = 2.0;
/// Bridges whose backends the horde validated: requests with `validated_backends` (the
/// default) go only to them. The public horde's `LLM_VALIDATED_BACKENDS`, and (ours) this
/// project's worker running its built-in engine, `horde-worker`, whose numbers are pinned to
/// llama.cpp's (`horde-text`'s fixtures); not the same worker bridging to a server it knows
/// nothing about (`horde-worker~oai`, `horde-worker~kai`).
pub const VALIDATED_BACKENDS: &[&str] = &[
    "AI Horde Worker",
    "AI Horde Worker~aphrodite~oai",
    "AI Horde Worker~aphrodite~kai",
    "KoboldCppEmbedWorker",
    "TabbyAPI",
    "horde-worker",
];

/// The `ttl` a text pop tells the worker: the public horde's 150 s.
pub const TEXT_JOB_TTL_SECS: u64 = 150;

/// Text generation (`/generate/text/…`).
///
/// Its queue takes text workers only, so an image worker cannot be handed a text job: this
/// does not compile.
///
/// ```compile_fail
/// use horde_core::queue::{DeadlineTerms, Queue};
/// use horde_core::text::Text;
/// use horde_core::{Standby, WorkerCaps};
/// fn pop_as_image_worker(texts: &mut Queue<Text>, image_worker: &WorkerCaps, terms: DeadlineTerms) {
///     let _ = texts.pop(image_worker, "w", 0, terms, &mut Standby::none(), &mut rand::rng());
/// }
/// ```
///
/// while a text worker's pop does:
///
/// ```
/// use horde_core::queue::{DeadlineTerms, Queue};
/// use horde_core::text::{Text, TextWorkerCaps};
/// use horde_core::Standby;
/// fn pop_as_text_worker(texts: &mut Queue<Text>, worker: &TextWorkerCaps, terms: DeadlineTerms) {
///     let _ = texts.pop(worker, "w", 0, terms, &mut Standby::none(), &mut rand::rng());
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Text;

/// A text request as accepted: the request, normalised, and the model multiplier it was
/// priced with at acceptance (from the text model reference of that moment, so a reload does
/// not change the price of a queued request).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextBody {
    #[serde(flatten)]
    pub request: TextRequest,
    /// [`pricing::request_multiplier`] of the request's models.
    pub model_multiplier: f64,
}

impl TextBody {
    /// `request` as accepted, priced by `reference`.
    pub fn accept(request: TextRequest, reference: &TextModelReference) -> TextBody {
        let model_multiplier =
            pricing::request_multiplier(&request.models, |m| reference.multiplier(m));
        TextBody {
            request,
            model_multiplier,
        }
    }
}

/// What a worker is handed for one job of `body`: the request's parameters as sent, with
/// `n` 1 (a job is one text), and its prompt.
pub fn job_payload(body: &TextBody) -> TextJobPayload {
    let mut params = body.request.params.clone();
    params.n = 1;
    TextJobPayload {
        params,
        prompt: Some(body.request.prompt.clone()),
    }
}

/// What a text worker declares in its pop, with what the coordinator knows of it.
#[derive(Debug, Clone, PartialEq)]
pub struct TextWorkerCaps {
    pub worker_id: Uuid,
    pub owner_id: i64,
    pub owner_trusted: bool,
    pub models: Vec<String>,
    /// The most tokens it generates for one job.
    pub max_length: u32,
    /// The most tokens of context it takes.
    pub max_context_length: u32,
    /// The softprompts it can load.
    pub softprompts: Vec<String>,
    /// Declared for `/workers`; text requests carry no NSFW flag on the public horde, so it
    /// skips none.
    pub nsfw: bool,
    pub blacklist: Vec<String>,
    pub amount: u32,
    pub bridge_agent: String,
    /// Users (by id) whose requests it serves first; always includes the owner.
    pub priority_user_ids: Vec<i64>,
    pub maintenance: bool,
    pub require_upfront_kudos: bool,
    /// Measured speed in tokens a second; `None` before its first finished job.
    pub speed_tps: Option<f64>,
    pub extra_slow: bool,
}

impl Capabilities for TextWorkerCaps {
    fn worker_id(&self) -> Uuid {
        self.worker_id
    }

    fn models(&self) -> &[String] {
        &self.models
    }

    fn stands_in_for(&self) -> Vec<&str> {
        vec![]
    }

    fn priority_user_ids(&self) -> &[i64] {
        &self.priority_user_ids
    }
}

/// Why a text worker was not given a request; [`TextSkip::key`] is the public `skipped` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TextSkip {
    Maintenance,
    Kudos,
    Models,
    Untrusted,
    Performance,
    WorkerId,
    Blacklist,
    BridgeVersion,
    MaxContextLength,
    MaxLength,
    MatchingSoftprompt,
}

impl TextSkip {
    pub fn key(self) -> &'static str {
        match self {
            TextSkip::Maintenance => "maintenance",
            TextSkip::Kudos => "kudos",
            TextSkip::Models => "models",
            TextSkip::Untrusted => "untrusted",
            TextSkip::Performance => "performance",
            TextSkip::WorkerId => "worker_id",
            TextSkip::Blacklist => "blacklist",
            TextSkip::BridgeVersion => "bridge_version",
            TextSkip::MaxContextLength => "max_context_length",
            TextSkip::MaxLength => "max_length",
            TextSkip::MatchingSoftprompt => "matching_softprompt",
        }
    }

    /// The generic queue's reason (whose key is [`TextSkip::key`], the public name).
    pub fn reason(self) -> SkipReason {
        match self {
            TextSkip::Maintenance => SkipReason::Maintenance,
            TextSkip::Kudos => SkipReason::Kudos,
            TextSkip::Models => SkipReason::Models,
            TextSkip::MatchingSoftprompt => SkipReason::MatchingSoftprompt,
            TextSkip::Untrusted => SkipReason::Untrusted,
            TextSkip::Performance => SkipReason::Performance,
            TextSkip::WorkerId => SkipReason::WorkerId,
            TextSkip::Blacklist => SkipReason::Blacklist,
            TextSkip::BridgeVersion => SkipReason::BridgeVersion,
            TextSkip::MaxContextLength => SkipReason::MaxContextLength,
            TextSkip::MaxLength => SkipReason::MaxLength,
        }
    }
}

/// Whether the bridge `bridge_agent` (`name:version:url`) is a validated backend.
pub fn is_validated_backend(bridge_agent: &str) -> bool {
    let name = bridge_agent.split(':').next().unwrap_or_default();
    VALIDATED_BACKENDS.contains(&name)
}

/// The model `worker` runs `request` with: the first requested model it serves, or its first
/// model when the request names none.
pub fn chosen_model(request: &LiveRequest<Text>, worker: &TextWorkerCaps) -> Option<String> {
    let models = &request.body.request.models;
    if models.is_empty() {
        return worker.models.first().cloned();
    }
    models.iter().find(|m| worker.models.contains(m)).cloned()
}

/// Whether `worker` may take a job of `request`, or the first reason it may not, in the
/// public horde's order.
pub fn can_serve(request: &LiveRequest<Text>, worker: &TextWorkerCaps) -> Result<(), TextSkip> {
    let body = &request.body.request;
    let prioritised = worker.priority_user_ids.contains(&request.user_id);
    if worker.maintenance && request.user_id != worker.owner_id {
        return Err(TextSkip::Maintenance);
    }
    if worker.require_upfront_kudos && !request.can_pay_upfront && !prioritised {
        return Err(TextSkip::Kudos);
    }
    if chosen_model(request, worker).is_none() {
        return Err(TextSkip::Models);
    }
    if body.trusted_workers && !worker.owner_trusted {
        return Err(TextSkip::Untrusted);
    }
    check_speed(body, worker)?;
    check_worker_list(body, worker)?;
    check_blacklist(&body.prompt, &worker.blacklist)?;
    if body.validated_backends && !is_validated_backend(&worker.bridge_agent) {
        return Err(TextSkip::BridgeVersion);
    }
    check_lengths(body, worker)?;
    check_softprompt(body.softprompt.as_deref(), &worker.softprompts)
}

fn check_speed(body: &TextRequest, worker: &TextWorkerCaps) -> Result<(), TextSkip> {
    let slow = worker
        .speed_tps
        .is_some_and(|s| s < SLOW_WORKER_TOKENS_PER_SEC);
    if (!body.slow_workers && (slow || worker.extra_slow))
        || (worker.extra_slow && !body.extra_slow_workers)
    {
        return Err(TextSkip::Performance);
    }
    Ok(())
}

/// `workers` is an allow-list, or a block-list with `worker_blacklist`.
fn check_worker_list(body: &TextRequest, worker: &TextWorkerCaps) -> Result<(), TextSkip> {
    if body.workers.is_empty() {
        return Ok(());
    }
    let listed = body
        .workers
        .iter()
        .any(|w| Uuid::parse_str(w).ok() == Some(worker.worker_id));
    if listed == body.worker_blacklist {
        return Err(TextSkip::WorkerId);
    }
    Ok(())
}

/// A worker's blacklisted words, matched case-insensitively anywhere in the prompt.
fn check_blacklist(prompt: &str, blacklist: &[String]) -> Result<(), TextSkip> {
    let prompt = prompt.to_lowercase();
    let hit = blacklist
        .iter()
        .map(|w| w.trim().to_lowercase())
        .any(|w| !w.is_empty() && prompt.contains(&w));
    if hit {
        return Err(TextSkip::Blacklist);
    }
    Ok(())
}

fn check_lengths(body: &TextRequest, worker: &TextWorkerCaps) -> Result<(), TextSkip> {
    if worker.max_context_length < body.params.max_context_length {
        return Err(TextSkip::MaxContextLength);
    }
    if worker.max_length < body.params.max_length {
        return Err(TextSkip::MaxLength);
    }
    Ok(())
}

/// No softprompt (or an empty one) matches any worker; a named one, a worker softprompt
/// whose name contains it.
fn check_softprompt(wanted: Option<&str>, offered: &[String]) -> Result<(), TextSkip> {
    match wanted {
        None | Some("") => Ok(()),
        Some(wanted) if offered.iter().any(|sp| sp.contains(wanted)) => Ok(()),
        Some(_) => Err(TextSkip::MatchingSoftprompt),
    }
}

/// Seconds until `tokens_ahead` (the tokens waiting up to and including a request's) are
/// generated by online workers doing `workers_tps` tokens a second each; `None` with none.
pub fn estimate_wait_secs(tokens_ahead: f64, workers_tps: &[f64]) -> Option<f64> {
    let total: f64 = workers_tps.iter().filter(|s| **s > 0.0).sum();
    (total > 0.0).then(|| tokens_ahead / total)
}

/// Seconds a worker doing `speed_tps` tokens a second gets for `batch` jobs of `body`: three
/// times what its speed needs for the tokens, plus 30 s, within the operator's bounds.
pub fn deadline_secs(
    body: &TextBody,
    batch: u32,
    speed_tps: Option<f64>,
    bounds: DeadlineBounds,
) -> i64 {
    let tokens = Text::work(body, batch);
    let speed = speed_tps
        .filter(|s| *s > 0.0)
        .unwrap_or(UNMEASURED_TOKENS_PER_SEC);
    let secs = 30.0 + 3.0 * tokens / speed;
    (secs as i64).clamp(
        bounds.floor_secs,
        bounds.ceiling_secs.max(bounds.floor_secs),
    )
}

impl JobKind for Text {
    type Body = TextBody;
    type Caps = TextWorkerCaps;

    const NAME: &'static str = "text";

    fn models(body: &TextBody) -> &[String] {
        &body.request.models
    }

    fn can_take(request: &LiveRequest<Text>, worker: &TextWorkerCaps) -> Result<(), SkipReason> {
        can_serve(request, worker).map_err(TextSkip::reason)
    }

    fn chosen_model(request: &LiveRequest<Text>, worker: &TextWorkerCaps) -> Option<String> {
        chosen_model(request, worker)
    }

    /// Up to the worker's `amount` of what is waiting, one with `disable_batching`.
    fn batch_size(request: &LiveRequest<Text>, worker: &TextWorkerCaps) -> u32 {
        if request.body.request.disable_batching {
            return 1;
        }
        worker.amount.min(request.n_remaining).max(1)
    }

    /// A text's seed is the worker's (the Kobold API has none to give); 0 is handed out.
    fn next_seed(_request: &LiveRequest<Text>, _rng: &mut impl rand::Rng) -> u64 {
        0
    }

    /// Tokens: `max_length` a job.
    fn work(body: &TextBody, jobs: u32) -> f64 {
        f64::from(body.request.params.max_length) * f64::from(jobs)
    }

    fn deadline_secs(
        body: &TextBody,
        batch: u32,
        speed: Option<f64>,
        bounds: DeadlineBounds,
    ) -> i64 {
        deadline_secs(body, batch, speed, bounds)
    }

    fn job_kudos(body: &TextBody) -> f64 {
        let p = &body.request.params;
        pricing::job_kudos(p.max_length, p.max_context_length, body.model_multiplier)
    }

    fn requester_charge(_body: &TextBody, job_kudos: f64) -> f64 {
        pricing::requester_charge(job_kudos)
    }
}

#[cfg(test)]
mod tests;
