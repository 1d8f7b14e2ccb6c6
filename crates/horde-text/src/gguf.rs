//! Reading a GGUF file's header: its architecture and the tokenizer it carries
//! (`tokenizer.ggml.*`).
//!
//! A GGUF is self-contained: the model's hyper-parameters, its weights and its vocabulary are in
//! one file, so a worker needs nothing else to serve it. candle reads the header
//! (`gguf_file::Content`); this module turns the fields the engine needs into typed values, and
//! every error names the file and the field.

use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};

use crate::TextError;

/// The model families the engine runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// `llama`: Llama 1/2/3, Mistral and their fine-tunes (interleaved RoPE).
    Llama,
    /// `qwen2`: Qwen2 and Qwen2.5 (biases on q/k/v, NeoX RoPE).
    Qwen2,
}

/// The vocabulary a GGUF carries.
#[derive(Clone, Debug, PartialEq)]
pub struct Vocabulary {
    /// `tokenizer.ggml.model`: "llama" (SentencePiece) or "gpt2" (byte-level BPE).
    pub model: String,
    pub tokens: Vec<String>,
    /// SentencePiece merge priorities (higher merges first); empty for BPE.
    pub scores: Vec<f32>,
    /// BPE merges, `"left right"`, by rank (`tokenizer.ggml.merges`); empty for SentencePiece.
    pub merges: Vec<String>,
    /// BPE pre-tokenizer (`tokenizer.ggml.pre`: "llama-bpe", "qwen2", …).
    pub pre: Option<String>,
    /// llama.cpp's token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    pub types: Vec<i32>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
    /// Whether a prompt starts with the BOS token (`tokenizer.ggml.add_bos_token`; when absent,
    /// true for SentencePiece and false for BPE).
    pub add_bos: bool,
}

/// An open GGUF: its parsed header and the file, positioned anywhere (tensors are read by
/// offset).
pub struct GgufFile {
    pub path: PathBuf,
    pub content: Content,
    pub file: File,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self, TextError> {
        let mut file = File::open(path).map_err(|source| TextError::Io {
            path: path.into(),
            source,
        })?;
        let content = Content::read(&mut file).map_err(|source| TextError::Gguf {
            path: path.into(),
            source,
        })?;
        Ok(Self {
            path: path.into(),
            content,
            file,
        })
    }

    fn field(&self, key: &str) -> Result<&Value, TextError> {
        self.content
            .metadata
            .get(key)
            .ok_or_else(|| self.bad(key, "missing"))
    }

    pub(crate) fn bad(&self, field: &str, reason: impl Into<String>) -> TextError {
        TextError::Metadata {
            path: self.path.clone(),
            field: field.into(),
            reason: reason.into(),
        }
    }

    fn string(&self, key: &str) -> Result<&str, TextError> {
        self.field(key)?
            .to_string()
            .map(String::as_str)
            .map_err(|e| self.bad(key, e.to_string()))
    }

    fn optional_u32(&self, key: &str) -> Result<Option<u32>, TextError> {
        match self.content.metadata.get(key) {
            None => Ok(None),
            Some(v) => v
                .to_u32()
                .map(Some)
                .map_err(|e| self.bad(key, e.to_string())),
        }
    }

    /// The number under `key`, as whichever integer type the writer chose.
    pub fn usize(&self, key: &str) -> Result<usize, TextError> {
        let v = self.field(key)?;
        let n = v
            .to_u32()
            .map(u64::from)
            .or_else(|_| v.to_u64())
            .map_err(|e| self.bad(key, e.to_string()))?;
        Ok(n as usize)
    }

    /// The float under `key`.
    pub fn f32(&self, key: &str) -> Result<f32, TextError> {
        self.field(key)?
            .to_f32()
            .map_err(|e| self.bad(key, e.to_string()))
    }

    /// The float under `key`, if there is one.
    pub fn optional_f32(&self, key: &str) -> Result<Option<f32>, TextError> {
        match self.content.metadata.get(key) {
            None => Ok(None),
            Some(_) => self.f32(key).map(Some),
        }
    }

    pub fn architecture(&self) -> Result<Architecture, TextError> {
        match self.string("general.architecture")? {
            "llama" => Ok(Architecture::Llama),
            "qwen2" => Ok(Architecture::Qwen2),
            other => Err(self.bad(
                "general.architecture",
                format!("{other:?} is not supported (llama, qwen2)"),
            )),
        }
    }

    /// The model's trained context length (`<arch>.context_length`).
    pub fn context_length(&self) -> Result<usize, TextError> {
        let arch = self.string("general.architecture")?;
        self.usize(&format!("{arch}.context_length"))
    }

    pub fn vocabulary(&self) -> Result<Vocabulary, TextError> {
        let tokens = self.array("tokenizer.ggml.tokens", |v| v.to_string().cloned())?;
        let scores = self.optional_array("tokenizer.ggml.scores", Value::to_f32)?;
        let types = self.optional_array("tokenizer.ggml.token_type", Value::to_i32)?;
        let model = self.string("tokenizer.ggml.model")?.to_owned();
        let add_bos = match self.content.metadata.get("tokenizer.ggml.add_bos_token") {
            None => model == "llama",
            Some(v) => v
                .to_bool()
                .map_err(|e| self.bad("tokenizer.ggml.add_bos_token", e.to_string()))?,
        };
        Ok(Vocabulary {
            model,
            tokens,
            scores,
            merges: self.optional_array("tokenizer.ggml.merges", |v| v.to_string().cloned())?,
            pre: match self.content.metadata.get("tokenizer.ggml.pre") {
                None => None,
                Some(_) => Some(self.string("tokenizer.ggml.pre")?.to_owned()),
            },
            types,
            bos: self.optional_u32("tokenizer.ggml.bos_token_id")?,
            eos: self.optional_u32("tokenizer.ggml.eos_token_id")?,
            unk: self.optional_u32("tokenizer.ggml.unknown_token_id")?,
            add_bos,
        })
    }

    fn array<T>(
        &self,
        key: &str,
        item: impl Fn(&Value) -> candle_core::Result<T>,
    ) -> Result<Vec<T>, TextError> {
        let values = self
            .field(key)?
            .to_vec()
            .map_err(|e| self.bad(key, e.to_string()))?;
        values
            .iter()
            .map(|v| item(v).map_err(|e| self.bad(key, e.to_string())))
            .collect()
    }

    fn optional_array<T>(
        &self,
        key: &str,
        item: impl Fn(&Value) -> candle_core::Result<T>,
    ) -> Result<Vec<T>, TextError> {
        if self.content.metadata.contains_key(key) {
            self.array(key, item)
        } else {
            Ok(Vec::new())
        }
    }
}
