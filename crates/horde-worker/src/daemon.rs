//! The worker's loop: pop a job, run it on the backend, upload and submit the images; repeat.
//!
//! Network faults never lose work: pops are retried with backoff, and a finished image whose
//! submit failed stays in `pending` and is resubmitted before the next pop. A job the backend
//! cannot run, or whose source image cannot be fetched or read, is submitted as `faulted` with
//! the reason, never dropped. When `shutdown` turns
//! true the loop stops popping, finishes the job in hand and flushes what it owes.

use crate::backend::Backend;
use crate::censor::{self, Censored};
use crate::config::WorkerConfig;
use crate::job::{self, Job, Unrunnable};
use crate::retry::{self, with_retries};
use base64::Engine;
use horde_alchemy::safety::SafetyChecker;
use horde_api::image::{GenMetadata, PopRequest, SubmitRequest, SubmitState};
use horde_client::{Client, ClientError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// A result the horde has not acknowledged yet.
#[derive(Debug, Clone)]
struct PendingSubmit {
    submit: SubmitRequest,
    /// Where the image must be PUT first (R2 requests), with its bytes.
    upload: Option<(String, Vec<u8>)>,
}

/// What a run did, for the log and the tests.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RunSummary {
    /// Jobs run by the engine: one per pop, however many images it batched.
    pub jobs_done: u64,
    /// Images those jobs made.
    pub images_done: u64,
    pub jobs_faulted: u64,
    pub kudos: f64,
}

pub struct Worker {
    config: WorkerConfig,
    client: Client,
    backend: Arc<dyn Backend>,
    /// The safety checker that censors the images of jobs asking for it (`crate::censor`).
    censor: Option<Arc<SafetyChecker>>,
    pending: Mutex<Vec<PendingSubmit>>,
    summary: Mutex<RunSummary>,
}

const SUBMIT_ATTEMPTS: u32 = 5;
const BACKOFF_CAP: Duration = Duration::from_secs(30);

impl Worker {
    pub fn new(config: WorkerConfig, backend: Arc<dyn Backend>) -> Arc<Self> {
        Self::with_censor(config, backend, None)
    }

    /// A worker whose jobs asking for the censor (`use_nsfw_censor`) have each image checked by
    /// `censor`, a flagged one replaced and submitted as censored.
    pub fn with_censor(
        config: WorkerConfig,
        backend: Arc<dyn Backend>,
        censor: Option<Arc<SafetyChecker>>,
    ) -> Arc<Self> {
        let client = Client::new(&config.url, config.api_key.clone())
            .with_client_agent(config.effective_bridge_agent());
        Arc::new(Worker {
            config,
            client,
            backend,
            censor,
            pending: Mutex::new(Vec::new()),
            summary: Mutex::new(RunSummary::default()),
        })
    }

    /// The pop body advertising this worker's capabilities.
    pub fn pop_request(&self) -> PopRequest {
        let c = &self.config;
        let mut pop = PopRequest::new(&c.name);
        pop.models = self.backend.models();
        pop.max_pixels = c.effective_max_pixels();
        pop.amount = c.effective_amount();
        pop.threads = c.threads;
        pop.nsfw = c.nsfw;
        pop.blacklist = c.blacklist.clone();
        pop.priority_usernames = c.priority_usernames.clone();
        pop.require_upfront_kudos = c.require_upfront_kudos;
        // SFW requests asking for the censor come only when the safety checker is loaded.
        pop.nsfw_censor = Some(self.censor.is_some());
        // Source images are offered when the backend runs them and the owner allows them; such
        // a worker downloads them from the signed URLs (`r2_source`) rather than take them
        // inline in every pop answer.
        let sources = self.backend.runs_sources();
        pop.allow_img2img = c.allow_img2img && sources;
        pop.allow_painting = c.allow_painting && sources;
        pop.r2_source = pop.allow_img2img || pop.allow_painting;
        // Post-processing is offered when a post-processor is loaded, and only the loaded
        // ones are declared, so that no job needing another one comes here.
        let post_processors = self.backend.post_processors();
        pop.allow_post_processing = c.allow_post_processing && !post_processors.is_empty();
        pop.post_processors = Some(if pop.allow_post_processing {
            post_processors
        } else {
            vec![]
        });
        // LoRAs and textual inversions are offered when the owner's library opened.
        pop.allow_lora = c.allow_lora && self.backend.runs_loras();
        // ControlNet, for the types whose ControlNet is configured: from a picture where the
        // engine draws the map, from any given map (our extension, so that no other type is
        // sent here).
        let (drawn, from_maps) = self.backend.control_types();
        pop.allow_controlnet = c.allow_controlnet && !from_maps.is_empty();
        if pop.allow_controlnet {
            pop.control_types = Some(drawn);
            pop.control_map_types = Some(from_maps);
        }
        // The engine runs a prompt and seed per image: several members of a batch of prompts
        // may come in one pop (our coordinator's extension; other hordes ignore the field).
        pop.batch_prompts = true;
        pop.bridge_agent = c.effective_bridge_agent();
        // What it holds loaded (the coordinator routes a model's requests to a worker holding
        // it, and gives a job that needs a load more time) and what it runs on.
        pop.loaded_models = self.backend.loaded_models();
        pop.hardware = Some(crate::hardware::report(
            crate::hardware::measured(&c.device),
            &c.device,
            &c.dtype,
            self.backend.load_secs(),
        ));
        pop
    }

    /// Serves until `shutdown` becomes true; runs `threads` job loops side by side.
    pub async fn run(self: &Arc<Self>, shutdown: watch::Receiver<bool>) -> RunSummary {
        let loops: Vec<_> = (0..self.config.threads.max(1))
            .map(|_| {
                let worker = self.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(async move { worker.job_loop(shutdown).await })
            })
            .collect();
        for handle in loops {
            if let Err(e) = handle.await {
                tracing::error!(error = %e, "a job loop panicked");
            }
        }
        self.flush_pending().await;
        let summary = self.summary.lock().expect("summary lock").clone();
        tracing::info!(
            jobs = summary.jobs_done,
            images = summary.images_done,
            faulted = summary.jobs_faulted,
            kudos = summary.kudos,
            "worker stopped"
        );
        summary
    }

    async fn job_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut failures = 0u32;
        while !*shutdown.borrow() {
            self.flush_pending().await;
            let idle = match self.client.pop(&self.pop_request()).await {
                Ok(pop) => {
                    failures = 0;
                    match job::from_pop(&pop) {
                        Some(Ok(job)) => {
                            self.run_job(job).await;
                            None
                        }
                        Some(Err((ids, reason))) => {
                            self.fault(&ids, &reason).await;
                            None
                        }
                        None => Some(retry::idle_delay(self.config.poll_interval_secs)),
                    }
                }
                Err(error) => {
                    let delay = retry::pop_failure_delay(&error, failures, BACKOFF_CAP, "image");
                    failures += 1;
                    Some(delay)
                }
            };
            if let Some(delay) = idle {
                retry::pause(delay, &mut shutdown).await;
            }
        }
    }

    async fn run_job(&self, job: Job) {
        let started = Instant::now();
        let fetched = match &job.source {
            Some(order) => match order.fetch(&self.client).await {
                Ok(bytes) => Some(bytes),
                Err(reason) => {
                    self.fault(&job.ids, &reason).await;
                    self.flush_pending().await;
                    return;
                }
            },
            None => None,
        };
        let backend = self.backend.clone();
        let checker = self.censor.clone().filter(|_| job.use_nsfw_censor);
        let running = job.clone();
        let id = job.ids[0].clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let source = match (&fetched, &running.source) {
                (Some(bytes), Some(order)) => Some(bytes.decode(order)?),
                _ => None,
            };
            let images = backend.run(
                &running,
                source.as_ref(),
                &mut |done, total| tracing::debug!(job = %running.ids[0], done, total, "step"),
            )?;
            images
                .into_iter()
                .map(|webp| match &checker {
                    Some(checker) => censor::censor_webp(checker, webp),
                    None => Ok(Censored::Clean(webp)),
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .unwrap_or_else(|e| Err(Unrunnable(format!("the engine crashed: {e}"))));
        let g = &job.generation;
        match outcome {
            Ok(images) => {
                tracing::info!(
                    job = %id, model = %job.model, size = %format!("{}x{}", g.width, g.height), steps = g.steps, n = images.len(),
                    seconds = format!("{:.1}", started.elapsed().as_secs_f64()), "job done"
                );
                for (i, (job_id, checked)) in job.ids.iter().zip(images).enumerate() {
                    let (webp, state, mut notes) = match checked {
                        Censored::Clean(webp) => (webp, SubmitState::Ok, vec![]),
                        Censored::Replaced(webp) => {
                            tracing::info!(job = %job_id, "image censored (the safety checker flagged it)");
                            (webp, SubmitState::Censored, vec![censor::censorship_note()])
                        }
                    };
                    notes.extend(job.notes.iter().cloned());
                    let upload = job.uploads.get(i).map(|url| (url.clone(), webp.clone()));
                    let generation = if upload.is_some() {
                        "R2".to_string()
                    } else {
                        base64::engine::general_purpose::STANDARD.encode(&webp)
                    };
                    let submit = SubmitRequest {
                        id: job_id.clone(),
                        generation: Some(generation),
                        state,
                        seed: g.seeds.get(i).copied(),
                        censored: state == SubmitState::Censored,
                        gen_metadata: notes,
                    };
                    self.pending
                        .lock()
                        .expect("pending lock")
                        .push(PendingSubmit { submit, upload });
                }
                let mut summary = self.summary.lock().expect("summary lock");
                summary.jobs_done += 1;
                summary.images_done += job.ids.len() as u64;
            }
            Err(reason) => self.fault(&job.ids, &reason).await,
        }
        self.flush_pending().await;
    }

    /// Reports jobs that cannot run as faulted, with the reason.
    async fn fault(&self, ids: &[String], reason: &Unrunnable) {
        tracing::warn!(job = %ids[0], %reason, "job faulted");
        for id in ids {
            let submit = SubmitRequest {
                id: id.clone(),
                generation: None,
                state: SubmitState::Faulted,
                seed: None,
                censored: false,
                gen_metadata: vec![GenMetadata {
                    kind: "information".into(),
                    value: "see_ref".into(),
                    r#ref: Some(reason.0.clone()),
                }],
            };
            self.pending
                .lock()
                .expect("pending lock")
                .push(PendingSubmit {
                    submit,
                    upload: None,
                });
        }
        self.summary.lock().expect("summary lock").jobs_faulted += 1;
    }

    /// Tries to deliver every pending result once (each with a few quick retries); what still
    /// fails for a transient reason stays pending.
    async fn flush_pending(&self) {
        let batch = std::mem::take(&mut *self.pending.lock().expect("pending lock"));
        for pending in batch {
            match self.deliver(&pending).await {
                Ok(reward) => self.summary.lock().expect("summary lock").kudos += reward,
                Err(error) if retry::is_transient(&error) => {
                    tracing::warn!(job = %pending.submit.id, %error, "submit failed; will retry");
                    self.pending.lock().expect("pending lock").push(pending);
                }
                Err(error) => {
                    tracing::warn!(job = %pending.submit.id, %error, "the horde refused this result; dropping it")
                }
            }
        }
    }

    async fn deliver(&self, pending: &PendingSubmit) -> Result<f64, ClientError> {
        if let Some((url, bytes)) = &pending.upload {
            let result = with_retries(SUBMIT_ATTEMPTS, BACKOFF_CAP, || {
                self.client.upload(url, bytes.clone())
            })
            .await;
            // An upload URL is single-use: "already used" means an earlier attempt got through.
            if let Err(e) = result {
                if e.rc() != Some("UploadAlreadyUsed") {
                    return Err(e);
                }
            }
        }
        with_retries(SUBMIT_ATTEMPTS, BACKOFF_CAP, || {
            self.client.submit(&pending.submit)
        })
        .await
        .map(|r| r.reward)
    }

    /// Results not yet acknowledged by the horde.
    pub fn pending_count(&self) -> usize {
        self.pending.lock().expect("pending lock").len()
    }
}
