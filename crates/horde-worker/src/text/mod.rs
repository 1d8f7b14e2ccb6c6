//! Serving text jobs (`/generate/text/pop` and `/submit`): on the built-in engine (`engine`:
//! GGUF models on `horde-text`) or through an inference server the owner runs (`bridge`), with
//! the job's samplers completed and translated in `params`.
//!
//! A text worker is a worker of its own on the horde: worker names are unique across kinds (the
//! public horde answers `PolymorphicNameConflict` to an image worker's name popping text), so it
//! pops as `text_name`, by default the image worker's name with `-text` appended
//! ([`WorkerConfig::effective_text_name`]). It runs beside the image loop in the same process and
//! keeps the image loop's habits: pops are retried with backoff, a job that cannot run is
//! submitted as faulted with the reason (never dropped), a result the horde has not acknowledged
//! is resubmitted before the next pop, and after a fault the next pop waits (so a backend that
//! is down does not fault the queue away job after job).

pub mod bridge;
pub mod engine;
pub mod params;

use crate::config::{WorkerConfig, OWN_BRIDGE_AGENT};
use crate::retry::{self, with_retries};
use bridge::Bridge;
use engine::TextEngine;
use horde_api::image::{GenMetadata, SubmitState};
use horde_api::text::{TextParams, TextPopRequest, TextPopResponse, TextSubmitRequest};
use horde_client::{Client, ClientError};
use params::Resolved;
use rand::Rng;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

const SUBMIT_ATTEMPTS: u32 = 5;
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// The horde keeps at most this many characters of a `gen_metadata` reference.
const MAX_REASON_CHARS: usize = 255;

/// A pop the worker cannot serve at all: the ids to fault, and why.
pub type Unservable = (Vec<String>, String);

/// One text job: what the pop asked, with its samplers completed.
#[derive(Debug, Clone, PartialEq)]
pub struct TextJob {
    pub id: String,
    pub model: String,
    pub prompt: String,
    pub params: TextParams,
    pub resolved: Resolved,
}

impl TextJob {
    /// The jobs of a pop answer (none when it has no job), each with a seed drawn here (the
    /// horde sends none; KoboldCpp's and llama.cpp's seeds are 32-bit, so it is below 2³¹).
    /// `max_length` is held to the worker's own limit. A pop the worker cannot serve at all
    /// (no model named, a softprompt) is the reason, with the ids to fault.
    pub fn from_pop(
        pop: &TextPopResponse,
        max_length: u32,
    ) -> Option<Result<Vec<TextJob>, Unservable>> {
        let mut ids = pop.ids.clone();
        if ids.is_empty() {
            ids.extend(pop.id.clone());
        }
        if ids.is_empty() {
            return None;
        }
        let Some(model) = pop.model.clone() else {
            return Some(Err((ids, "the pop named no model".into())));
        };
        if let Some(softprompt) = pop.softprompt.as_ref().filter(|s| !s.is_empty()) {
            let reason = format!("softprompt {softprompt}: this worker serves no softprompts");
            return Some(Err((ids, reason)));
        }
        let mut params = pop.payload.params.clone();
        params.max_length = params.max_length.min(max_length);
        let jobs = ids
            .into_iter()
            .map(|id| {
                let seed = rand::rng().random_range(0..=i32::MAX as u64);
                TextJob {
                    id,
                    model: model.clone(),
                    prompt: pop.payload.prompt.clone().unwrap_or_default(),
                    resolved: params::resolve(&params, seed),
                    params: params.clone(),
                }
            })
            .collect();
        Some(Ok(jobs))
    }
}

/// A finished generation.
#[derive(Debug, Clone, PartialEq)]
pub struct TextOutput {
    /// The continuation (without the prompt), cut before the first stop sequence.
    pub text: String,
    /// Tokens generated, when the backend says.
    pub tokens: Option<u64>,
    pub seconds: f64,
}

/// Says once per distinct set which horde parameters of a job a backend cannot take.
#[derive(Debug, Default)]
pub struct NotTaken {
    seen: Mutex<BTreeSet<(String, Vec<&'static str>)>>,
}

impl NotTaken {
    /// The parameters of `job` in effect that `takes` lacks; logged the first time this set is
    /// seen for `backend`.
    pub fn note(&self, backend: &str, takes: &[&str], job: &TextJob) -> Vec<&'static str> {
        let missing: Vec<&'static str> = job
            .resolved
            .in_effect(&job.params)
            .into_iter()
            .filter(|name| !takes.contains(name))
            .collect();
        if !missing.is_empty()
            && self
                .seen
                .lock()
                .expect("not-taken lock")
                .insert((backend.to_string(), missing.clone()))
        {
            tracing::warn!(
                job = %job.id,
                backend,
                parameters = %missing.join(", "),
                "the text backend cannot take these horde parameters; they are not applied (said once per set)"
            );
        }
        missing
    }
}

/// What serves text: the built-in engine's models, a bridge's model, or both (a job goes to
/// whichever serves its model).
#[derive(Clone, Default)]
pub struct TextBackend {
    engine: TextEngine,
    bridge: Option<Bridge>,
}

impl TextBackend {
    pub fn new(engine: TextEngine, bridge: Option<Bridge>) -> Self {
        TextBackend { engine, bridge }
    }

    /// The AI Horde model names served.
    pub fn models(&self) -> Vec<String> {
        let mut models = self.engine.models();
        models.extend(self.bridge.as_ref().map(|b| b.model().to_string()));
        models.sort();
        models.dedup();
        models
    }

    pub fn engine(&self) -> &TextEngine {
        &self.engine
    }

    pub fn bridge(&self) -> Option<&Bridge> {
        self.bridge.as_ref()
    }

    /// The `bridge_agent` this worker reports for text: ours, marked `~oai` or `~kai` when jobs
    /// go to another program, so the horde knows which backend generated (we claim no backend
    /// the public horde validated: see `horde_core::text::kind::VALIDATED_BACKENDS`).
    pub fn bridge_agent(&self) -> String {
        match &self.bridge {
            None => OWN_BRIDGE_AGENT.to_string(),
            Some(bridge) => OWN_BRIDGE_AGENT.replacen(
                "horde-worker:",
                &format!("horde-worker~{}:", bridge.config().api.agent_suffix()),
                1,
            ),
        }
    }

    /// Runs `job` where its model is served.
    pub async fn run(&self, job: &TextJob, not_taken: &NotTaken) -> Result<TextOutput, String> {
        if self.engine.serves(&job.model) {
            not_taken.note("built-in engine", engine::TAKES, job);
            return self.engine.run(job).await;
        }
        match &self.bridge {
            Some(bridge) if bridge.model() == job.model => {
                not_taken.note(&bridge.endpoint(), bridge.config().api.takes(), job);
                bridge.run(job).await
            }
            _ => Err(format!("model {} is not served here", job.model)),
        }
    }
}

/// What a text run did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TextRunSummary {
    pub jobs_done: u64,
    pub jobs_faulted: u64,
    pub kudos: f64,
}

/// What one [`TextWorker::serve_once`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Served {
    /// The horde had no job.
    Idle,
    /// Jobs generated and submitted; `reward` is `None` for a submit still pending.
    Done {
        ids: Vec<String>,
        texts: Vec<String>,
        reward: Option<f64>,
    },
    /// Jobs submitted as faulted, with the reason.
    Faulted { ids: Vec<String>, reason: String },
}

/// The text worker: pops text jobs, runs them on its [`TextBackend`] and submits the texts.
pub struct TextWorker {
    config: WorkerConfig,
    client: Client,
    backend: Arc<TextBackend>,
    pending: Mutex<Vec<TextSubmitRequest>>,
    summary: Mutex<TextRunSummary>,
    not_taken: NotTaken,
}

impl TextWorker {
    pub fn new(config: WorkerConfig, backend: Arc<TextBackend>) -> Arc<Self> {
        let client = Client::new(&config.url, config.api_key.clone())
            .with_client_agent(backend.bridge_agent());
        Arc::new(TextWorker {
            config,
            client,
            backend,
            pending: Mutex::new(Vec::new()),
            summary: Mutex::new(TextRunSummary::default()),
            not_taken: NotTaken::default(),
        })
    }

    /// The pop body: this worker's text models and limits, no softprompts, one job at a time.
    pub fn pop_request(&self) -> TextPopRequest {
        let c = &self.config;
        let mut pop = TextPopRequest::new(c.effective_text_name());
        pop.models = self.backend.models();
        pop.max_length = c.max_length;
        pop.max_context_length = c.max_context_length;
        pop.softprompts = vec![];
        pop.amount = 1;
        pop.threads = 1;
        pop.nsfw = c.nsfw;
        pop.blacklist = c.blacklist.clone();
        pop.priority_usernames = c.priority_usernames.clone();
        pop.require_upfront_kudos = c.require_upfront_kudos;
        pop.bridge_agent = self.backend.bridge_agent();
        pop.hardware = Some(crate::hardware::report(
            crate::hardware::measured(&c.device),
            &c.device,
            &c.dtype,
            0,
        ));
        pop
    }

    /// One cycle: delivers what is pending, pops once, runs the job (if any) and submits it.
    /// A pop that fails is the error; everything after it is in the answer.
    pub async fn serve_once(&self) -> Result<Served, ClientError> {
        self.flush_pending().await;
        let pop = self.client.text_pop(&self.pop_request()).await?;
        let jobs = match TextJob::from_pop(&pop, self.config.max_length) {
            None => return Ok(Served::Idle),
            Some(Err((ids, reason))) => {
                self.fault(&ids, &reason).await;
                return Ok(Served::Faulted { ids, reason });
            }
            Some(Ok(jobs)) => jobs,
        };
        let mut done = Vec::new();
        for job in &jobs {
            match self.backend.run(job, &self.not_taken).await {
                Ok(output) => done.push((job, output)),
                Err(reason) => {
                    let ids: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
                    let unrun: Vec<String> =
                        jobs[done.len()..].iter().map(|j| j.id.clone()).collect();
                    self.fault(&unrun, &reason).await;
                    self.submit_done(&done).await;
                    return Ok(Served::Faulted { ids, reason });
                }
            }
        }
        let reward = self.submit_done(&done).await;
        Ok(Served::Done {
            ids: done.iter().map(|(job, _)| job.id.clone()).collect(),
            texts: done.into_iter().map(|(_, output)| output.text).collect(),
            reward,
        })
    }

    /// Submits finished jobs; the sum of their rewards, or `None` when one is still pending.
    async fn submit_done(&self, done: &[(&TextJob, TextOutput)]) -> Option<f64> {
        let mut total = Some(0.0);
        for (job, output) in done {
            let submit = TextSubmitRequest {
                id: job.id.clone(),
                generation: Some(output.text.clone()),
                state: SubmitState::Ok,
                seed: job.resolved.seed as i64,
                gen_metadata: vec![],
            };
            let reward = self.deliver(submit).await;
            total = total.zip(reward).map(|(a, b)| a + b);
        }
        if !done.is_empty() {
            self.summary.lock().expect("summary lock").jobs_done += done.len() as u64;
        }
        total
    }

    /// Serves until `shutdown` becomes true, then delivers what it owes.
    pub async fn run(self: &Arc<Self>, mut shutdown: watch::Receiver<bool>) -> TextRunSummary {
        let mut failures = 0u32;
        let mut faults = 0u32;
        while !*shutdown.borrow() {
            let delay = match self.serve_once().await {
                Ok(Served::Done { .. }) => {
                    (failures, faults) = (0, 0);
                    None
                }
                Ok(Served::Idle) => {
                    failures = 0;
                    Some(retry::idle_delay(self.config.poll_interval_secs))
                }
                Ok(Served::Faulted { .. }) => {
                    faults += 1;
                    Some(retry::backoff(faults - 1, BACKOFF_CAP))
                }
                Err(error) => {
                    let delay = retry::pop_failure_delay(&error, failures, BACKOFF_CAP, "text");
                    failures += 1;
                    Some(delay)
                }
            };
            if let Some(delay) = delay {
                retry::pause(delay, &mut shutdown).await;
            }
        }
        self.flush_pending().await;
        let summary = self.summary.lock().expect("summary lock").clone();
        tracing::info!(
            jobs = summary.jobs_done,
            faulted = summary.jobs_faulted,
            kudos = summary.kudos,
            "text worker stopped"
        );
        summary
    }

    /// Submits `ids` as faulted with `reason`.
    async fn fault(&self, ids: &[String], reason: &str) {
        tracing::warn!(job = %ids.first().map(String::as_str).unwrap_or("-"), %reason, "text job faulted");
        let reference: String = reason.chars().take(MAX_REASON_CHARS).collect();
        for id in ids {
            let submit = TextSubmitRequest {
                id: id.clone(),
                generation: None,
                state: SubmitState::Faulted,
                seed: 0,
                gen_metadata: vec![GenMetadata {
                    kind: "information".into(),
                    value: "see_ref".into(),
                    r#ref: Some(reference.clone()),
                }],
            };
            self.deliver(submit).await;
        }
        self.summary.lock().expect("summary lock").jobs_faulted += ids.len() as u64;
    }

    /// Submits with a few quick retries; the reward, or `None` when it failed (kept pending
    /// when the failure is transient, dropped with a warning when the horde refused it).
    async fn deliver(&self, submit: TextSubmitRequest) -> Option<f64> {
        let result = with_retries(SUBMIT_ATTEMPTS, BACKOFF_CAP, || {
            self.client.text_submit(&submit)
        })
        .await;
        match result {
            Ok(answer) => {
                self.summary.lock().expect("summary lock").kudos += answer.reward;
                Some(answer.reward)
            }
            Err(error) if retry::is_transient(&error) => {
                tracing::warn!(job = %submit.id, %error, "text submit failed; will retry");
                self.pending.lock().expect("pending lock").push(submit);
                None
            }
            Err(error) => {
                tracing::warn!(job = %submit.id, %error, "the horde refused this text result; dropping it");
                None
            }
        }
    }

    /// Tries once more to deliver every pending result.
    async fn flush_pending(&self) {
        let batch = std::mem::take(&mut *self.pending.lock().expect("pending lock"));
        for submit in batch {
            self.deliver(submit).await;
        }
    }

    /// Results not yet acknowledged by the horde.
    pub fn pending_count(&self) -> usize {
        self.pending.lock().expect("pending lock").len()
    }
}
