//! Text jobs forwarded to an inference server the owner already runs, as the AI Horde text worker
//! does: an OpenAI-compatible completions server (`POST {url}/v1/completions`: llama.cpp's
//! server, vLLM, TabbyAPI, Aphrodite) or a KoboldCpp / KoboldAI server (`POST
//! {url}/api/v1/generate`).
//!
//! Each job is sent with its samplers completed by KoboldCpp's defaults (`params::resolve`), so
//! a server's own defaults never decide a horde job. Each flavour sends the fields its servers
//! document; a horde parameter that changes the text but has no field there is named in the log
//! (once per distinct set, `super::NotTaken`). The answer is read within a size limit and the
//! call within a timeout, so a stuck or runaway server faults the job instead of the worker.

use super::params::{trim_stop, Resolved};
use super::{TextJob, TextOutput};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The most bytes read from a server's answer: the longest text the horde takes
/// (`MAX_GENERATION_CHARS` characters, up to 4 bytes each, escaped) with room for the rest.
pub const MAX_RESPONSE_BYTES: usize = 4 * horde_api::text::MAX_GENERATION_CHARS + 64 * 1024;

/// Which API the server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BridgeApi {
    /// `POST {url}/v1/completions`.
    #[default]
    Openai,
    /// `POST {url}/api/v1/generate`.
    Kobold,
}

impl BridgeApi {
    /// The horde parameters this flavour's servers take (`params::Resolved::in_effect` names).
    ///
    /// OpenAI-compatible: the sampler fields of llama.cpp's server (`top_k`, `min_p`,
    /// `typical_p`, `repeat_penalty`, `repeat_last_n`, `dynatemp_range`, `stop`, `seed`,
    /// `ignore_eos`), with `tfs_z` (llama-cpp-python, older llama.cpp) and `repetition_penalty`
    /// (vLLM, TabbyAPI, Aphrodite); a server ignores the fields it does not know. None of them
    /// has Kobold's top-a, repetition slope, sampler order or smoothing. KoboldCpp takes every
    /// sampler the horde sends; KoboldAI's output formatting flags are applied by its client,
    /// by neither server.
    pub fn takes(self) -> &'static [&'static str] {
        match self {
            BridgeApi::Openai => &[
                "top_k",
                "top_p",
                "min_p",
                "typical",
                "tfs",
                "rep_pen",
                "rep_pen_range",
                "dynatemp_range",
                "stop_sequence",
                "use_default_badwordsids",
            ],
            BridgeApi::Kobold => &[
                "top_k",
                "top_a",
                "top_p",
                "min_p",
                "typical",
                "tfs",
                "rep_pen",
                "rep_pen_range",
                "rep_pen_slope",
                "sampler_order",
                "dynatemp_range",
                "smoothing_factor",
                "stop_sequence",
                "use_default_badwordsids",
            ],
        }
    }

    fn path(self) -> &'static str {
        match self {
            BridgeApi::Openai => "/v1/completions",
            BridgeApi::Kobold => "/api/v1/generate",
        }
    }

    /// The suffix of the worker's bridge agent name (`horde-worker~oai`, `horde-worker~kai`),
    /// after the public horde's `AI Horde Worker~aphrodite~oai` style.
    pub fn agent_suffix(self) -> &'static str {
        match self {
            BridgeApi::Openai => "oai",
            BridgeApi::Kobold => "kai",
        }
    }
}

fn default_timeout_secs() -> u64 {
    600
}

/// `[text_bridge]` in the worker's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextBridgeConfig {
    /// The server's root, e.g. `http://127.0.0.1:8080` (the API path is added).
    pub url: String,
    /// `openai` or `kobold`.
    #[serde(default)]
    pub api: BridgeApi,
    /// The AI Horde model name this worker offers for the server's model (the public horde
    /// names them like `koboldcpp/Mistral-7B-Instruct-v0.3`).
    pub name: String,
    /// The `model` field sent to an OpenAI-compatible server (vLLM and TabbyAPI need the name
    /// they serve; llama.cpp's server takes its one model without it). Not sent when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Seconds a job may take on the server before it is faulted.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
}

/// A connection to the owner's inference server.
#[derive(Debug, Clone)]
pub struct Bridge {
    config: TextBridgeConfig,
    http: reqwest::Client,
}

impl Bridge {
    pub fn new(config: TextBridgeConfig) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(config.timeout_secs.max(1)))
            .build()
            .expect("a client with only timeouts set always builds");
        Bridge { config, http }
    }

    pub fn config(&self) -> &TextBridgeConfig {
        &self.config
    }

    /// The AI Horde model name served through the bridge.
    pub fn model(&self) -> &str {
        &self.config.name
    }

    /// The URL jobs are posted to.
    pub fn endpoint(&self) -> String {
        format!(
            "{}{}",
            self.config.url.trim_end_matches('/'),
            self.config.api.path()
        )
    }

    /// The body sent for `job`.
    pub fn body(&self, job: &TextJob) -> Value {
        match self.config.api {
            BridgeApi::Openai => {
                openai_body(&job.prompt, &job.resolved, self.config.model.as_deref())
            }
            BridgeApi::Kobold => kobold_body(&job.prompt, &job.resolved),
        }
    }

    /// Sends `job` and returns the text, cut at the first stop sequence.
    pub async fn run(&self, job: &TextJob) -> Result<TextOutput, String> {
        let endpoint = self.endpoint();
        let started = Instant::now();
        let answer = self
            .post(&endpoint, &self.body(job))
            .await
            .map_err(|e| format!("text backend {endpoint}: {e}"))?;
        let seconds = started.elapsed().as_secs_f64();
        let (text, tokens) = read_answer(self.config.api, &answer)
            .map_err(|e| format!("text backend {endpoint}: {e}"))?;
        let tokens_per_sec = tokens.map(|n| format!("{:.1}", n as f64 / seconds.max(1e-9)));
        tracing::info!(
            job = %job.id,
            model = %job.model,
            backend = %endpoint,
            tokens = ?tokens,
            tokens_per_sec = tokens_per_sec.as_deref().unwrap_or("unknown"),
            seconds = format!("{seconds:.1}"),
            "text job generated by the backend"
        );
        Ok(TextOutput {
            text: trim_stop(&text, &job.resolved.stop_sequence),
            tokens,
            seconds,
        })
    }

    /// POSTs `body` and reads a JSON answer of at most [`MAX_RESPONSE_BYTES`].
    async fn post(&self, endpoint: &str, body: &Value) -> Result<Value, String> {
        let mut response = self
            .http
            .post(endpoint)
            .json(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let too_large = || format!("the answer is larger than {MAX_RESPONSE_BYTES} bytes");
        if response
            .content_length()
            .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
        {
            return Err(too_large());
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
            if bytes.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        let shown = || String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
        if !status.is_success() {
            return Err(format!("{status}: {}", shown()));
        }
        serde_json::from_slice(&bytes).map_err(|e| format!("not JSON ({e}): {}", shown()))
    }
}

/// The OpenAI-compatible completions body: the prompt continued by `max_tokens`, every sampler
/// under the names llama.cpp's server documents, plus `tfs_z` and `repetition_penalty` for the
/// servers that name them so.
pub fn openai_body(prompt: &str, r: &Resolved, model: Option<&str>) -> Value {
    let mut body = json!({
        "prompt": prompt,
        "max_tokens": r.max_length,
        "temperature": r.temperature,
        "top_p": r.top_p,
        "top_k": r.top_k,
        "min_p": r.min_p,
        "typical_p": r.typical,
        "tfs_z": r.tfs,
        "repeat_penalty": r.rep_pen,
        "repetition_penalty": r.rep_pen,
        "repeat_last_n": r.rep_pen_range,
        "dynatemp_range": r.dynatemp_range,
        "dynatemp_exponent": r.dynatemp_exponent,
        "stop": r.stop_sequence,
        "seed": r.seed,
        "ignore_eos": r.ban_eos,
        "n": 1,
        "stream": false,
    });
    if let Some(model) = model {
        body["model"] = json!(model);
    }
    body
}

/// The KoboldCpp / KoboldAI `generate` body: Kobold's own field names, as the horde has them.
pub fn kobold_body(prompt: &str, r: &Resolved) -> Value {
    json!({
        "prompt": prompt,
        "max_length": r.max_length,
        "max_context_length": r.max_context_length,
        "temperature": r.temperature,
        "top_k": r.top_k,
        "top_a": r.top_a,
        "top_p": r.top_p,
        "min_p": r.min_p,
        "typical": r.typical,
        "tfs": r.tfs,
        "rep_pen": r.rep_pen,
        "rep_pen_range": r.rep_pen_range,
        "rep_pen_slope": r.rep_pen_slope,
        "sampler_order": r.sampler_order,
        "dynatemp_range": r.dynatemp_range,
        "dynatemp_exponent": r.dynatemp_exponent,
        "smoothing_factor": r.smoothing_factor,
        "stop_sequence": r.stop_sequence,
        "use_default_badwordsids": r.ban_eos,
        "sampler_seed": r.seed,
        "trim_stop": true,
        "quiet": true,
    })
}

/// The text (and, when the server says, the tokens generated) of an answer.
pub fn read_answer(api: BridgeApi, answer: &Value) -> Result<(String, Option<u64>), String> {
    let (list, field) = match api {
        BridgeApi::Openai => ("choices", "choices[0].text"),
        BridgeApi::Kobold => ("results", "results[0].text"),
    };
    let text = answer[list][0]["text"]
        .as_str()
        .ok_or_else(|| format!("the answer has no {field}"))?;
    let tokens = answer["usage"]["completion_tokens"].as_u64();
    Ok((text.to_string(), tokens))
}
