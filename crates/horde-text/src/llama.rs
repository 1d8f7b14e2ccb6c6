//! A GGUF llama-family model on candle's quantized kernels, and the Kobold-style generation
//! loop over it: continue the prompt (no chat template), sample each token with the horde's
//! samplers, stop at the length, the end-of-sequence token or a stop sequence.
//!
//! The transformer itself is [`crate::transformer`]: candle's `QMatMul` kernels for every GGUF
//! quantisation, the hyper-parameters from the GGUF header, and logits that match llama.cpp's
//! (tests/llama_cpp_numbers.rs checks them on tiny random models).

use std::path::Path;
use std::time::Instant;

use candle_core::Device;
use candle_transformers::models::quantized_llama;

use crate::gguf::{Architecture, GgufFile};
use crate::sampling::{Sampler, SamplerParams};
use crate::tokenizer::Tokenizer;
use crate::transformer::Transformer;
use crate::TextError;

/// A loaded text model: weights, tokenizer and context length.
pub struct TextModel {
    transformer: Transformer,
    tokenizer: Tokenizer,
    context_length: usize,
}

/// Why a generation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    Length,
    EndOfSequence,
    /// The text reached this stop sequence (kept at its end, as KoboldCpp returns it).
    StopSequence(String),
}

/// A finished generation.
#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    pub text: String,
    pub tokens: Vec<u32>,
    pub prompt_tokens: usize,
    pub stop: StopReason,
    pub prompt_tokens_per_sec: f64,
    pub tokens_per_sec: f64,
}

impl TextModel {
    /// Loads `path` with candle on `device`.
    pub fn load(path: &Path, device: &Device) -> Result<Self, TextError> {
        let mut gguf = GgufFile::open(path)?;
        let architecture = gguf.architecture()?;
        let tokenizer = Tokenizer::new(gguf.vocabulary()?).map_err(|e| TextError::Metadata {
            path: path.into(),
            field: "tokenizer.ggml".into(),
            reason: e.to_string(),
        })?;
        // Llama's context is capped where candle-transformers' llama capped it (RoPE tables and
        // the cache's room follow it; the horde's context limits are far below).
        let context_length = match architecture {
            Architecture::Llama => gguf.context_length()?.min(quantized_llama::MAX_SEQ_LEN),
            Architecture::Qwen2 => gguf.context_length()?,
        };
        let transformer = Transformer::load(&mut gguf, architecture, context_length, device)?;
        Ok(Self {
            transformer,
            tokenizer,
            context_length,
        })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// Runs `tokens` at positions `pos..` (the cache holds the positions before; `pos = 0`
    /// starts afresh) and returns the logits after the last one.
    pub fn forward(&mut self, tokens: &[u32], pos: usize) -> Result<Vec<f32>, TextError> {
        self.transformer.forward(tokens, pos)
    }

    /// Continues `prompt` by at most `max_length` tokens, calling `on_token` with each new piece
    /// of text, and logs the prompt's and the generation's tokens/s. A prompt too long for the
    /// context keeps its end (after BOS), as KoboldCpp does.
    pub fn generate(
        &mut self,
        prompt: &str,
        params: &SamplerParams,
        max_length: usize,
        stop_sequences: &[String],
        mut on_token: impl FnMut(&str),
    ) -> Result<Generation, TextError> {
        let mut history = self.prompt_tokens(prompt, max_length)?;
        let prompt_len = history.len();
        let mut sampler = Sampler::new(params.clone());
        let started = Instant::now();
        let mut logits = self.forward(&history, 0)?;
        let prompt_secs = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let mut out = Output::default();
        let mut stop = StopReason::Length;
        while out.tokens.len() < max_length {
            let token = sampler.sample(&logits, &history);
            history.push(token);
            if Some(token) == self.tokenizer.eos() {
                stop = StopReason::EndOfSequence;
                break;
            }
            let piece = out.push(token, self.tokenizer.piece(token));
            on_token(&piece);
            if let Some(s) = out.stop_at(stop_sequences) {
                stop = StopReason::StopSequence(s);
                break;
            }
            if out.tokens.len() < max_length {
                logits = self.forward(&[token], history.len() - 1)?;
            }
        }
        let rest = out.flush();
        if !rest.is_empty() {
            on_token(&rest);
        }
        let gen_secs = started.elapsed().as_secs_f64();
        let generation = Generation {
            text: out.text(),
            prompt_tokens: prompt_len,
            prompt_tokens_per_sec: prompt_len as f64 / prompt_secs.max(1e-9),
            tokens_per_sec: out.tokens.len() as f64 / gen_secs.max(1e-9),
            tokens: out.tokens,
            stop,
        };
        tracing::info!(
            prompt_tokens = prompt_len,
            generated = generation.tokens.len(),
            prompt_tokens_per_sec = format!("{:.1}", generation.prompt_tokens_per_sec),
            tokens_per_sec = format!("{:.1}", generation.tokens_per_sec),
            "text generation finished"
        );
        Ok(generation)
    }

    /// The prompt's tokens, cut from the front (BOS kept) to leave room for `max_length`.
    fn prompt_tokens(&self, prompt: &str, max_length: usize) -> Result<Vec<u32>, TextError> {
        if max_length >= self.context_length {
            return Err(TextError::TooLong {
                max_length,
                context_length: self.context_length,
            });
        }
        let mut tokens = self.tokenizer.encode(prompt);
        let room = self.context_length - max_length;
        if tokens.len() > room {
            let bos = self.tokenizer.bos().filter(|&b| tokens.first() == Some(&b));
            let keep_from = tokens.len() - (room - usize::from(bos.is_some()));
            tokens = bos
                .into_iter()
                .chain(tokens[keep_from..].iter().copied())
                .collect();
        }
        if tokens.is_empty() {
            return Err(TextError::EmptyPrompt);
        }
        Ok(tokens)
    }
}

/// The generated tokens and their bytes, with the part of the text already handed out.
#[derive(Default)]
struct Output {
    tokens: Vec<u32>,
    bytes: Vec<u8>,
    emitted: usize,
}

impl Output {
    /// Adds a token; returns the text that became complete with it: valid UTF-8, and each
    /// invalid sequence as one U+FFFD (as `String::from_utf8_lossy` shows the whole). An
    /// unfinished character at the end waits for the next token.
    fn push(&mut self, token: u32, piece: Vec<u8>) -> String {
        self.tokens.push(token);
        self.bytes.extend(piece);
        let mut new = String::new();
        loop {
            let rest = &self.bytes[self.emitted..];
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    new.push_str(s);
                    self.emitted = self.bytes.len();
                    return new;
                }
                Err(e) => {
                    new.push_str(&String::from_utf8_lossy(&rest[..e.valid_up_to()]));
                    self.emitted += e.valid_up_to();
                    let Some(invalid) = e.error_len() else {
                        return new;
                    };
                    new.push(char::REPLACEMENT_CHARACTER);
                    self.emitted += invalid;
                }
            }
        }
    }

    /// The rest at the end: an unfinished character, as U+FFFD.
    fn flush(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.bytes[self.emitted..]).into_owned();
        self.emitted = self.bytes.len();
        rest
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// The first stop sequence the text now contains; the text is cut right after it.
    fn stop_at(&mut self, stops: &[String]) -> Option<String> {
        let text = self.text();
        let (end, stop) = stops
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| text.find(s.as_str()).map(|at| (at + s.len(), s)))
            .min_by_key(|(end, _)| *end)?;
        let stop = stop.clone();
        self.bytes = text.as_bytes()[..end].to_vec();
        self.emitted = self.emitted.min(self.bytes.len());
        Some(stop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_hands_out_complete_utf8_and_cuts_at_the_first_stop() {
        let mut out = Output::default();
        assert_eq!(out.push(1, b"ab".to_vec()), "ab");
        assert_eq!(out.push(2, vec![0xC3]), "");
        assert_eq!(out.push(3, vec![0xA9]), "é");
        assert_eq!(out.push(4, b"\nUser: hi".to_vec()), "\nUser: hi");
        let stops = ["User:".to_string(), "\n".to_string()];
        assert_eq!(out.stop_at(&stops), Some("\n".into()));
        assert_eq!(out.text(), "abé\n");
        assert_eq!(out.stop_at(&["zz".to_string()]), None);
    }

    #[test]
    fn output_replaces_invalid_bytes_instead_of_stalling() {
        let mut out = Output::default();
        // 0xCD starts a two-byte character; 0x01 cannot continue it.
        assert_eq!(out.push(1, vec![0xCD]), "");
        assert_eq!(out.push(2, vec![0x01]), "\u{FFFD}\u{1}");
        assert_eq!(out.push(3, b"/".to_vec()), "/");
        assert_eq!(out.push(4, vec![0xC3]), "");
        assert_eq!(out.flush(), "\u{FFFD}");
        assert_eq!(out.text(), "\u{FFFD}\u{1}/\u{FFFD}");
    }
}
