//! The BERT WordPiece tokenizer of a BLIP checkpoint, read from its `tokenizer.json`.
//!
//! BLIP needs little of a tokenizer: encoding the decoder's prompt (`"a picture of "`) and
//! decoding the generated ids. Both are written here as the `tokenizers` library runs a BERT
//! `tokenizer.json` (BertNormalizer lowercasing, BertPreTokenizer splitting on whitespace and
//! punctuation, greedy longest-match WordPiece, the `[CLS] … [SEP]` template; decoding skips
//! the special added tokens, glues `##` pieces and applies the WordPiece decoder's per-token
//! cleanup), and checked against transformers' results in `tests/caption_numbers.rs`. Accent
//! stripping (NFD) is not done: the prompts are ASCII.

use super::CaptionError;
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::path::Path;

#[derive(Deserialize)]
struct AddedToken {
    id: u32,
    content: String,
    #[serde(default)]
    special: bool,
}

#[derive(Deserialize)]
struct Model {
    vocab: HashMap<String, u32>,
    #[serde(default = "unk")]
    unk_token: String,
    #[serde(default = "prefix")]
    continuing_subword_prefix: String,
    #[serde(default = "max_chars")]
    max_input_chars_per_word: usize,
}

fn unk() -> String {
    "[UNK]".into()
}
fn prefix() -> String {
    "##".into()
}
fn max_chars() -> usize {
    100
}

#[derive(Deserialize)]
struct File {
    model: Model,
    #[serde(default)]
    added_tokens: Vec<AddedToken>,
}

/// A WordPiece vocabulary with BERT's normalisation and special tokens.
#[derive(Debug, Clone)]
pub struct WordPiece {
    ids: HashMap<String, u32>,
    tokens: HashMap<u32, String>,
    special: HashSet<u32>,
    unk: u32,
    cls: u32,
    sep: u32,
    prefix: String,
    max_chars: usize,
}

impl WordPiece {
    /// Reads a `tokenizer.json` with a WordPiece model.
    pub fn read(path: &Path) -> Result<Self, CaptionError> {
        let text = std::fs::read_to_string(path).map_err(|source| CaptionError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let bad = |message: String| CaptionError::Format {
            path: path.to_path_buf(),
            message,
        };
        let file: File = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let mut ids = file.model.vocab;
        for added in &file.added_tokens {
            ids.insert(added.content.clone(), added.id);
        }
        let id_of = |token: &str| {
            ids.get(token)
                .copied()
                .ok_or_else(|| bad(format!("the vocabulary has no {token}")))
        };
        let (unk, cls, sep) = (
            id_of(&file.model.unk_token)?,
            id_of("[CLS]")?,
            id_of("[SEP]")?,
        );
        let tokens = ids.iter().map(|(t, &i)| (i, t.clone())).collect();
        let special = file
            .added_tokens
            .iter()
            .filter(|a| a.special)
            .map(|a| a.id)
            .collect();
        Ok(Self {
            tokens,
            special,
            unk,
            cls,
            sep,
            prefix: file.model.continuing_subword_prefix,
            max_chars: file.model.max_input_chars_per_word,
            ids,
        })
    }

    /// The id of a token, if the vocabulary has it.
    pub fn id(&self, token: &str) -> Option<u32> {
        self.ids.get(token).copied()
    }

    /// `[CLS]`, the WordPiece ids of the text, `[SEP]`.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = vec![self.cls];
        for word in pre_tokenize(&text.to_lowercase()) {
            self.word_pieces(&word, &mut ids);
        }
        ids.push(self.sep);
        ids
    }

    /// Greedy longest-match pieces of one word, or `[UNK]` for the whole word.
    fn word_pieces(&self, word: &str, ids: &mut Vec<u32>) {
        let chars: Vec<char> = word.chars().collect();
        if chars.len() > self.max_chars {
            ids.push(self.unk);
            return;
        }
        let mut pieces = Vec::new();
        let mut start = 0;
        while start < chars.len() {
            let found = (start + 1..=chars.len()).rev().find_map(|end| {
                let piece: String = chars[start..end].iter().collect();
                let piece = if start > 0 {
                    format!("{}{piece}", self.prefix)
                } else {
                    piece
                };
                self.ids.get(&piece).map(|&id| (id, end))
            });
            let Some((id, end)) = found else {
                ids.push(self.unk);
                return;
            };
            pieces.push(id);
            start = end;
        }
        ids.extend(pieces);
    }

    /// The text of ids with the special tokens skipped, as transformers' `decode(ids,
    /// skip_special_tokens=True)` gives it for a BERT `tokenizer.json`.
    pub fn decode(&self, ids: &[u32]) -> String {
        let kept = ids
            .iter()
            .filter(|id| !self.special.contains(id))
            .filter_map(|id| self.tokens.get(id));
        let mut text = String::new();
        for (i, token) in kept.enumerate() {
            let piece = match token.strip_prefix(self.prefix.as_str()) {
                Some(rest) if i > 0 => rest.to_string(),
                _ if i > 0 => format!(" {token}"),
                _ => token.clone(),
            };
            text.push_str(&cleanup(&piece));
        }
        text
    }
}

/// BertPreTokenizer: words split on whitespace, each punctuation character a word of its own.
fn pre_tokenize(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    for c in text.chars() {
        if c.is_whitespace() || c.is_control() || is_punctuation(c) {
            if !current.is_empty() {
                words.push(std::mem::take(&mut current));
            }
            if is_punctuation(c) {
                words.push(c.to_string());
            }
        } else {
            current.push(c);
        }
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

/// BERT's punctuation: every ASCII non-alphanumeric printable character, and the Unicode
/// punctuation the standard library knows of.
fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation() || (!c.is_ascii() && !c.is_alphanumeric() && !c.is_whitespace())
}

/// The WordPiece decoder's cleanup of one decoded piece (`tokenizers`' `cleanup`).
fn cleanup(piece: &str) -> String {
    piece
        .replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" do not", " don't")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}
