//! Serving alchemy (`/interrogate/pop` and `/submit`): the worker as an alchemist, running the
//! forms it has networks for ([`forms`]) on a requester's image.
//!
//! An alchemist is a worker of its own kind on the horde (names are unique across kinds), so it
//! pops as `alchemy_name`, by default the worker's name with `-alchemy` appended. Each popped
//! form's source is fetched as a job's source is (`crate::source`: bounded download, size read
//! from the header before a pixel is decoded), the form runs on a blocking thread, and its result
//! is submitted; a post-processor's image is encoded as WebP and PUT to the form's upload URL
//! first, then `{"<form>": "R2"}` is submitted. It keeps the other loops' habits: a form that
//! cannot run is submitted as faulted with the reason, submits are retried with backoff and a
//! result the horde has not acknowledged is delivered again before the next pop.

pub mod forms;

pub use forms::{AlchemyForms, FormFailure, FormOutput};
/// The networks behind the forms, for callers that load or check them directly.
pub use horde_alchemy;

use crate::backend::encode_webp;
use crate::config::WorkerConfig;
use crate::job::Unrunnable;
use crate::retry::{self, with_retries};
use crate::source;
use horde_api::image::{GenMetadata, SubmitState};
use horde_api::interrogation::{
    InterrogationPopForm, InterrogationPopRequest, InterrogationSubmitRequest,
};
use horde_client::{Client, ClientError};
use rand::Rng;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

const SUBMIT_ATTEMPTS: u32 = 5;
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// The horde keeps at most this many characters of a `gen_metadata` reference.
const MAX_REASON_CHARS: usize = 255;

/// One form's outcome in a [`Served::Forms`].
#[derive(Debug, Clone, PartialEq)]
pub struct FormDone {
    pub id: String,
    pub form: String,
    /// The submitted result, or the reason it faulted.
    pub result: Result<Value, String>,
    /// The horde's reward; `None` while the submit is pending.
    pub reward: Option<f64>,
}

/// What one [`Alchemist::serve_once`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Served {
    /// The horde had no form for this alchemist.
    Idle,
    /// Forms run (or faulted) and submitted.
    Forms(Vec<FormDone>),
}

/// What an alchemist's run did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct AlchemyRunSummary {
    pub forms_done: u64,
    pub forms_faulted: u64,
    pub kudos: f64,
}

/// A submit the horde has not acknowledged, with the image to upload first.
#[derive(Debug, Clone)]
struct Pending {
    submit: InterrogationSubmitRequest,
    upload: Option<(String, Vec<u8>)>,
}

/// The alchemist: pops forms, runs them on its [`AlchemyForms`] and submits the results.
pub struct Alchemist {
    config: WorkerConfig,
    client: Client,
    forms: Arc<AlchemyForms>,
    pending: Mutex<Vec<Pending>>,
    summary: Mutex<AlchemyRunSummary>,
}

impl Alchemist {
    pub fn new(config: WorkerConfig, forms: Arc<AlchemyForms>) -> Arc<Self> {
        let client = Client::new(&config.url, config.api_key.clone())
            .with_client_agent(config.alchemy_bridge_agent());
        Arc::new(Alchemist {
            config,
            client,
            forms,
            pending: Mutex::new(Vec::new()),
            summary: Mutex::new(AlchemyRunSummary::default()),
        })
    }

    /// The pop body: the forms loaded, one at a time, the configured `max_tiles`.
    pub fn pop_request(&self) -> InterrogationPopRequest {
        let c = &self.config;
        let mut pop = InterrogationPopRequest::new(c.effective_alchemy_name());
        pop.forms = self.forms.names();
        pop.amount = 1;
        pop.threads = 1;
        pop.max_tiles = c.max_tiles;
        pop.priority_usernames = c.priority_usernames.clone();
        pop.bridge_agent = c.alchemy_bridge_agent();
        pop.hardware = Some(crate::hardware::report(
            crate::hardware::measured(&c.device),
            &c.device,
            &c.dtype,
            0,
        ));
        pop
    }

    /// One cycle: delivers what is pending, pops once, runs and submits each form popped. A pop
    /// that fails is the error; everything after it is in the answer.
    pub async fn serve_once(&self) -> Result<Served, ClientError> {
        self.flush_pending().await;
        let popped = self.client.interrogate_pop(&self.pop_request()).await?;
        if popped.forms.is_empty() {
            return Ok(Served::Idle);
        }
        let mut done = Vec::with_capacity(popped.forms.len());
        for form in &popped.forms {
            done.push(self.serve_form(form).await);
        }
        Ok(Served::Forms(done))
    }

    /// Fetches the form's source, runs it and submits the result or the fault.
    async fn serve_form(&self, form: &InterrogationPopForm) -> FormDone {
        let outcome = match self.run_form(form).await {
            Ok((result, upload)) => {
                let submit = submission(&form.id, result.clone(), SubmitState::Ok, vec![]);
                let reward = self.deliver(Pending { submit, upload }).await;
                self.summary.lock().expect("summary lock").forms_done += 1;
                (Ok(result), reward)
            }
            Err(reason) => (Err(reason.0.clone()), self.fault(form, &reason).await),
        };
        FormDone {
            id: form.id.clone(),
            form: form.form.clone(),
            result: outcome.0,
            reward: outcome.1,
        }
    }

    /// The form's result and, for a post-processor, the upload it needs first.
    async fn run_form(
        &self,
        form: &InterrogationPopForm,
    ) -> Result<(Value, Option<(String, Vec<u8>)>), Unrunnable> {
        let bytes = source::fetch_one(&self.client, "source image", &form.source_image).await?;
        let forms = self.forms.clone();
        let (name, payload) = (form.form.clone(), form.payload.clone());
        let seed = rand::rng().random::<u64>();
        let output = tokio::task::spawn_blocking(move || {
            let image = source::decode("source image", &bytes)?.to_rgb8();
            match forms.run(&name, payload.as_ref(), &image, seed)? {
                FormOutput::Result(value) => Ok((value, None)),
                FormOutput::Image(image) => {
                    encode_webp(&image).map(|webp| (Value::Null, Some(webp)))
                }
            }
        })
        .await
        .unwrap_or_else(|e| Err(Unrunnable(format!("the form crashed: {e}"))))?;
        match output {
            (value, None) => Ok((value, None)),
            (_, Some(webp)) => {
                let url = form.r2_upload.clone().ok_or_else(|| {
                    Unrunnable(format!("the horde gave no upload URL for {}", form.form))
                })?;
                Ok((json!({ form.form.as_str(): "R2" }), Some((url, webp))))
            }
        }
    }

    /// Submits `form` as faulted with `reason`; the reward (none is expected).
    async fn fault(&self, form: &InterrogationPopForm, reason: &Unrunnable) -> Option<f64> {
        tracing::warn!(form = %form.form, id = %form.id, %reason, "alchemy form faulted");
        let note = GenMetadata {
            kind: "information".into(),
            value: "see_ref".into(),
            r#ref: Some(reason.0.chars().take(MAX_REASON_CHARS).collect()),
        };
        let submit = submission(&form.id, json!({}), SubmitState::Faulted, vec![note]);
        self.summary.lock().expect("summary lock").forms_faulted += 1;
        self.deliver(Pending {
            submit,
            upload: None,
        })
        .await
    }

    /// Serves until `shutdown` becomes true, then delivers what it owes.
    pub async fn run(self: &Arc<Self>, mut shutdown: watch::Receiver<bool>) -> AlchemyRunSummary {
        let mut failures = 0u32;
        while !*shutdown.borrow() {
            let delay = match self.serve_once().await {
                Ok(Served::Forms(_)) => {
                    failures = 0;
                    None
                }
                Ok(Served::Idle) => {
                    failures = 0;
                    Some(retry::idle_delay(self.config.poll_interval_secs))
                }
                Err(error) => {
                    let delay = retry::pop_failure_delay(&error, failures, BACKOFF_CAP, "alchemy");
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
            forms = summary.forms_done,
            faulted = summary.forms_faulted,
            kudos = summary.kudos,
            "alchemist stopped"
        );
        summary
    }

    /// Uploads (when there is an image) and submits with a few quick retries; the reward, or
    /// `None` when it failed (kept pending when the failure is transient).
    async fn deliver(&self, pending: Pending) -> Option<f64> {
        match self.try_deliver(&pending).await {
            Ok(reward) => {
                self.summary.lock().expect("summary lock").kudos += reward;
                Some(reward)
            }
            Err(error) if retry::is_transient(&error) => {
                tracing::warn!(id = %pending.submit.id, %error, "alchemy submit failed; will retry");
                self.pending.lock().expect("pending lock").push(pending);
                None
            }
            Err(error) => {
                tracing::warn!(id = %pending.submit.id, %error, "the horde refused this alchemy result; dropping it");
                None
            }
        }
    }

    async fn try_deliver(&self, pending: &Pending) -> Result<f64, ClientError> {
        if let Some((url, bytes)) = &pending.upload {
            let uploaded = with_retries(SUBMIT_ATTEMPTS, BACKOFF_CAP, || {
                self.client.upload(url, bytes.clone())
            })
            .await;
            // An upload URL is single-use: "already used" means an earlier attempt got through.
            if let Err(e) = uploaded {
                if e.rc() != Some("UploadAlreadyUsed") {
                    return Err(e);
                }
            }
        }
        with_retries(SUBMIT_ATTEMPTS, BACKOFF_CAP, || {
            self.client.interrogate_submit(&pending.submit)
        })
        .await
        .map(|answer| answer.reward)
    }

    /// Tries once more to deliver every pending result.
    async fn flush_pending(&self) {
        let batch = std::mem::take(&mut *self.pending.lock().expect("pending lock"));
        for pending in batch {
            self.deliver(pending).await;
        }
    }

    /// Results not yet acknowledged by the horde.
    pub fn pending_count(&self) -> usize {
        self.pending.lock().expect("pending lock").len()
    }
}

fn submission(
    id: &str,
    result: Value,
    state: SubmitState,
    gen_metadata: Vec<GenMetadata>,
) -> InterrogationSubmitRequest {
    InterrogationSubmitRequest {
        id: id.to_string(),
        result,
        state,
        gen_metadata,
    }
}
