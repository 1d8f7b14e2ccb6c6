//! Text jobs on the built-in engine (`horde-text`): GGUF models loaded once, by their AI Horde
//! name, and run on a blocking thread.
//!
//! A job is the Kobold API's plain continuation of the prompt (no chat template) by at most
//! `max_length` tokens, with the job's samplers (`params::Resolved`, KoboldCpp's defaults where
//! the request gave none). The engine stops at a stop sequence and keeps it; the worker cuts the
//! text where the stop began, as KoboldCpp's `trim_stop` does, so clients see the same text from
//! either. Nothing streams to the horde (it takes the whole text on submit); the tokens/s go to
//! the log.

use super::params::trim_stop;
use super::{TextJob, TextOutput};
use candle_core::Device;
use horde_text::tokenizer::Tokenizer;
use horde_text::TextModel;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The horde parameters the engine applies (`params::Resolved::in_effect` names); the others
/// (`smoothing_factor`, `use_default_badwordsids`, KoboldAI's formatting flags) are logged as
/// not taken.
pub const TAKES: &[&str] = &[
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
    "stop_sequence",
];

/// A text model that could not be loaded.
#[derive(Debug, Clone)]
pub struct LoadFailure {
    pub model: String,
    pub path: PathBuf,
    pub error: String,
}

/// The loaded GGUF models, by AI Horde name. A model runs one job at a time (its KV cache is
/// the job's).
#[derive(Clone, Default)]
pub struct TextEngine {
    models: BTreeMap<String, Arc<Mutex<TextModel>>>,
}

impl TextEngine {
    /// Loads each `name → .gguf` on `device`; a model that fails is returned with the reason and
    /// not served.
    pub fn load(models: &BTreeMap<String, PathBuf>, device: &Device) -> (Self, Vec<LoadFailure>) {
        let mut engine = TextEngine::default();
        let mut failures = Vec::new();
        for (name, path) in models {
            match TextModel::load(path, device) {
                Ok(model) => {
                    tracing::info!(model = %name, path = %path.display(), context = model.context_length(), "text model loaded");
                    engine
                        .models
                        .insert(name.clone(), Arc::new(Mutex::new(model)));
                }
                Err(e) => failures.push(LoadFailure {
                    model: name.clone(),
                    path: path.clone(),
                    error: e.to_string(),
                }),
            }
        }
        (engine, failures)
    }

    pub fn models(&self) -> Vec<String> {
        self.models.keys().cloned().collect()
    }

    pub fn serves(&self, model: &str) -> bool {
        self.models.contains_key(model)
    }

    /// The context length of a loaded model.
    pub fn context_length(&self, model: &str) -> Option<usize> {
        let model = self.models.get(model)?;
        Some(model.lock().ok()?.context_length())
    }

    /// Runs `job` on a blocking thread.
    pub async fn run(&self, job: &TextJob) -> Result<TextOutput, String> {
        let model = self
            .models
            .get(&job.model)
            .ok_or_else(|| format!("model {} is not loaded here", job.model))?
            .clone();
        let job = job.clone();
        tokio::task::spawn_blocking(move || {
            let mut model = model.lock().map_err(|_| "the model crashed earlier")?;
            run_on(&mut model, &job)
        })
        .await
        .map_err(|e| format!("the engine crashed: {e}"))?
    }
}

/// One job on a loaded model.
fn run_on(model: &mut TextModel, job: &TextJob) -> Result<TextOutput, String> {
    let r = &job.resolved;
    let sampler = r.sampler_params().map_err(|e| e.to_string())?;
    // The job's context, within the model's.
    let context = (r.max_context_length as usize).min(model.context_length());
    let max_length = max_length_within(r.max_length as usize, context);
    let prompt = fit_prompt(model.tokenizer(), &job.prompt, context - max_length);
    let started = Instant::now();
    let generation = model
        .generate(prompt, &sampler, max_length, &r.stop_sequence, |_| {})
        .map_err(|e| format!("model {}: {e}", job.model))?;
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        job = %job.id,
        model = %job.model,
        prompt_tokens = generation.prompt_tokens,
        tokens = generation.tokens.len(),
        tokens_per_sec = format!("{:.1}", generation.tokens_per_sec),
        prompt_tokens_per_sec = format!("{:.1}", generation.prompt_tokens_per_sec),
        stop = ?generation.stop,
        "text job generated"
    );
    Ok(TextOutput {
        text: trim_stop(&generation.text, &r.stop_sequence),
        tokens: Some(generation.tokens.len() as u64),
        seconds,
    })
}

/// The end of `prompt` that fits in `room` tokens (BOS included), cut at a character: a prompt
/// longer than the job's `max_context_length` keeps its end, as KoboldCpp keeps a long prompt's
/// last tokens. (The engine cuts at a token against the model's own context; the job's context
/// may be smaller, and the cut here is the shortest cut whose re-tokenised rest fits.)
pub fn fit_prompt<'a>(tokenizer: &Tokenizer, prompt: &'a str, room: usize) -> &'a str {
    let fits = |text: &str| tokenizer.encode(text).len() <= room;
    if fits(prompt) {
        return prompt;
    }
    let starts: Vec<usize> = prompt.char_indices().map(|(i, _)| i).collect();
    // The first start whose rest fits (token counts shrink as the start moves right).
    let (mut lo, mut hi) = (0, starts.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        if fits(&prompt[starts[mid]..]) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    &prompt[starts.get(lo).copied().unwrap_or(prompt.len())..]
}

/// KoboldCpp's cap on the generation: at least `min(context − 4, 16)` tokens of the context stay
/// for the prompt (`generate()` in koboldcpp.py).
pub fn max_length_within(max_length: usize, context_length: usize) -> usize {
    let min_remain = context_length.saturating_sub(4).min(16);
    max_length.min(context_length.saturating_sub(min_remain))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prompt_longer_than_the_jobs_context_keeps_its_end() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../horde-text/tests/fixtures/tiny-llama-q8_0.gguf");
        let model = TextModel::load(&path, &Device::Cpu).unwrap();
        let tokenizer = model.tokenizer();
        let prompt = "Hello world, the tiny llama. ".repeat(20);
        let whole = tokenizer.encode(&prompt).len();
        assert!(whole > 100, "{whole}");
        assert_eq!(fit_prompt(tokenizer, &prompt, whole), prompt);
        for room in [40, 17, 2] {
            let kept = fit_prompt(tokenizer, &prompt, room);
            assert!(prompt.ends_with(kept));
            assert!(tokenizer.encode(kept).len() <= room, "{room}: {kept:?}");
            // The shortest cut: one more character would not fit.
            let start = prompt.len() - kept.len();
            let longer = &prompt[prompt[..start].char_indices().last().unwrap().0..];
            assert!(tokenizer.encode(longer).len() > room, "{room}: {longer:?}");
        }
    }

    #[test]
    fn the_prompt_keeps_koboldcpps_share_of_the_context() {
        assert_eq!(max_length_within(80, 2048), 80);
        assert_eq!(max_length_within(4096, 2048), 2032);
        assert_eq!(max_length_within(200, 128), 112);
        assert_eq!(max_length_within(3, 12), 3);
        assert_eq!(
            max_length_within(10, 12),
            4,
            "min(12 − 4, 16) = 8 stay for the prompt"
        );
    }
}
