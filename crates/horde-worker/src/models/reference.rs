//! The model reference as a worker reads it: for each model name, the files the horde's
//! workers download for it (`config.files` with their SHA-256, `config.download` with their
//! URLs) and how much room it takes.
//!
//! The image reference comes from the worker's coordinator (`GET /api/v2/reference/image`,
//! the copy it judges requests by, so a private horde's operator decides what its workers
//! fetch) or from files the owner names; the post-processors' references (`esrgan.json`,
//! `gfpgan.json`, `codeformer.json` of the AI Horde image model reference) are built in. All
//! share one format, so one parser reads them; a later source's entry replaces an earlier one
//! of the same name. The text reference names models but lists no files: a text model by name
//! needs a reference file of this format that lists its GGUF.

use serde::Deserialize;
use std::collections::BTreeMap;

/// The post-processors' references, as the public horde's workers read them.
pub const BUILTIN_POST_PROCESSORS: [(&str, &str); 3] = [
    ("esrgan.json", include_str!("../../data/esrgan.json")),
    ("gfpgan.json", include_str!("../../data/gfpgan.json")),
    (
        "codeformer.json",
        include_str!("../../data/codeformer.json"),
    ),
];

/// The most entries one reference may hold: a bound on what a fetched file makes us keep.
pub const MAX_ENTRIES: usize = 20_000;

/// Extensions of the files a worker loads; the configuration files some entries list beside
/// them (`v1-inference.yaml`, unchecked) are not downloaded.
const WEIGHT_EXTENSIONS: [&str; 6] = ["safetensors", "ckpt", "pt", "pth", "bin", "gguf"];

/// One model of a reference.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceEntry {
    pub name: String,
    /// `ckpt`, `realesrgan`, `gfpgan`, … (the reference's `type`).
    pub kind: String,
    /// The family it was trained from (`stable diffusion 1`, `stable_diffusion_xl`, …).
    pub baseline: Option<String>,
    /// The weight files, in the reference's order.
    pub files: Vec<ReferenceFile>,
    /// The reference's `size_on_disk_bytes`.
    pub size_hint: Option<u64>,
    /// Which reference it came from (for messages).
    pub source: String,
}

/// One file of a model.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceFile {
    /// The path under the models directory (the reference's `file_path` and `file_name`).
    pub file_name: String,
    pub url: Option<String>,
    pub sha256: Option<String>,
}

#[derive(Deserialize)]
struct RawEntry {
    #[serde(default)]
    name: Option<String>,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    baseline: Option<String>,
    #[serde(default)]
    size_on_disk_bytes: Option<u64>,
    #[serde(default)]
    config: Option<RawConfig>,
}

#[derive(Deserialize, Default)]
struct RawConfig {
    #[serde(default)]
    files: Vec<RawFile>,
    #[serde(default)]
    download: Vec<RawDownload>,
}

#[derive(Deserialize)]
struct RawFile {
    path: String,
    #[serde(default)]
    sha256sum: Option<String>,
}

#[derive(Deserialize)]
struct RawDownload {
    file_name: String,
    #[serde(default)]
    file_path: String,
    file_url: String,
}

/// The references a worker consulted, merged.
#[derive(Debug, Clone, Default)]
pub struct Reference {
    entries: BTreeMap<String, ReferenceEntry>,
    /// The sources read, in order (for messages).
    pub sources: Vec<String>,
}

impl Reference {
    /// The built-in post-processor references.
    pub fn builtin() -> Reference {
        let mut reference = Reference::default();
        for (name, text) in BUILTIN_POST_PROCESSORS {
            reference
                .add(text, &format!("built-in {name}"))
                .expect("the built-in references parse");
        }
        reference
    }

    /// Adds the entries of one reference file (`source` names it in messages).
    pub fn add(&mut self, text: &str, source: &str) -> Result<usize, String> {
        let raw: BTreeMap<String, serde_json::Value> = serde_json::from_str(text)
            .map_err(|e| format!("{source} is not a model reference: {e}"))?;
        if raw.len() > MAX_ENTRIES {
            return Err(format!("{source} lists more than {MAX_ENTRIES} models"));
        }
        let mut added = 0;
        for (key, value) in raw {
            // Entries of other shapes (a text reference's, or notes) are skipped, not fatal.
            let Ok(entry) = serde_json::from_value::<RawEntry>(value) else {
                continue;
            };
            let name = entry.name.clone().unwrap_or(key);
            self.entries
                .insert(name.clone(), entry_of(name, entry, source));
            added += 1;
        }
        self.sources.push(source.to_string());
        Ok(added)
    }

    pub fn get(&self, name: &str) -> Option<&ReferenceEntry> {
        self.entries.get(name)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Names close to `name` (the same but for case, spaces and punctuation, or containing
    /// it): what a message about an unknown name suggests.
    pub fn suggestions(&self, name: &str) -> Vec<&str> {
        let wanted = squashed(name);
        if wanted.is_empty() {
            return vec![];
        }
        let mut close: Vec<&str> = self
            .entries
            .keys()
            .filter(|known| {
                let known = squashed(known);
                known == wanted || (wanted.len() >= 4 && known.contains(&wanted))
            })
            .map(String::as_str)
            .collect();
        close.truncate(5);
        close
    }

    /// The message for a name no reference lists.
    pub fn unknown(&self, kind: &str, name: &str) -> String {
        let suggestions = self.suggestions(name);
        let hint = match suggestions.as_slice() {
            [] => String::new(),
            names => format!(" (did you mean {}?)", quoted(names)),
        };
        format!(
            "{kind} {name:?} is not in the model reference ({}){hint}; give its file as \"{name}=path\" to serve it anyway",
            self.sources.join(", ")
        )
    }
}

fn entry_of(name: String, raw: RawEntry, source: &str) -> ReferenceEntry {
    let config = raw.config.unwrap_or_default();
    let sha_of = |file_name: &str| {
        config
            .files
            .iter()
            .find(|f| f.path == file_name || f.path.ends_with(&format!("/{file_name}")))
            .and_then(|f| f.sha256sum.clone())
            .map(|sum| sum.trim().to_ascii_lowercase())
            .filter(|sum| !sum.is_empty())
    };
    let mut files: Vec<ReferenceFile> = config
        .download
        .iter()
        .filter(|d| is_weight(&d.file_name))
        .map(|d| ReferenceFile {
            file_name: joined(&d.file_path, &d.file_name),
            url: Some(d.file_url.clone()),
            sha256: sha_of(&d.file_name),
        })
        .collect();
    // Files the reference checks but gives no URL for are listed too: the worker can still
    // use them when the owner put them in the models directory.
    for file in &config.files {
        let listed = files
            .iter()
            .any(|f| f.file_name.ends_with(file.path.as_str()));
        if is_weight(&file.path) && !listed {
            files.push(ReferenceFile {
                file_name: file.path.clone(),
                url: None,
                sha256: sha_of(&file.path),
            });
        }
    }
    ReferenceEntry {
        name,
        kind: raw.kind.unwrap_or_default(),
        baseline: raw.baseline,
        files,
        size_hint: raw.size_on_disk_bytes,
        source: source.to_string(),
    }
}

fn joined(folder: &str, file: &str) -> String {
    let folder = folder.trim_matches('/');
    if folder.is_empty() {
        file.to_string()
    } else {
        format!("{folder}/{file}")
    }
}

fn is_weight(file_name: &str) -> bool {
    let lower = file_name.to_ascii_lowercase();
    WEIGHT_EXTENSIONS
        .iter()
        .any(|ext| lower.ends_with(&format!(".{ext}")))
}

fn squashed(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

fn quoted(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn real_image_reference() -> Reference {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/reference/image/stable_diffusion.json"
        ))
        .expect("../shared/reference beside the project");
        let mut reference = Reference::builtin();
        reference.add(&text, "stable_diffusion.json").unwrap();
        reference
    }

    #[test]
    fn the_real_reference_gives_each_model_its_weights_url_and_checksum() {
        let reference = real_image_reference();
        let deliberate = reference.get("Deliberate").unwrap();
        assert_eq!(deliberate.baseline.as_deref(), Some("stable diffusion 1"));
        assert_eq!(deliberate.files.len(), 1, "the yaml is left out");
        let file = &deliberate.files[0];
        assert_eq!(file.file_name, "Deliberate.ckpt");
        assert!(file
            .url
            .as_deref()
            .unwrap()
            .starts_with("https://huggingface.co/"));
        assert_eq!(
            file.sha256.as_deref(),
            Some("b4391b7978d973427a4a2a3ed0e67b18ebe34e213904575043d6c9faec75c22d")
        );
        assert_eq!(deliberate.size_hint, Some(2_132_780_730));
        let gfpgan = reference.get("GFPGAN").unwrap();
        assert_eq!(gfpgan.files[0].file_name, "GFPGANv1.4.pth");
        assert!(gfpgan
            .files
            .iter()
            .any(|f| f.file_name == "detection_Resnet50_Final.pth" && f.sha256.is_some()));
        assert!(reference.get("RealESRGAN_x4plus").is_some());
        // Every file of every model with a URL has a checksum in the real reference.
        let unchecked: Vec<&str> = reference
            .entries
            .values()
            .flat_map(|e| &e.files)
            .filter(|f| f.url.is_some() && f.sha256.is_none())
            .map(|f| f.file_name.as_str())
            .collect();
        assert!(unchecked.is_empty(), "{unchecked:?}");
    }

    #[test]
    fn an_unknown_name_gets_a_message_with_close_names() {
        let reference = real_image_reference();
        let message = reference.unknown("model", "deliberate");
        assert!(message.contains("\"Deliberate\""), "{message}");
        assert!(message.contains("not in the model reference"), "{message}");
        assert!(reference.suggestions("zzzz-nothing").is_empty());
    }

    #[test]
    fn a_later_source_replaces_an_entry_and_bad_text_is_refused() {
        let mut reference = Reference::builtin();
        let ours = r#"{"RealESRGAN_x4plus": {"name": "RealESRGAN_x4plus", "type": "realesrgan",
            "config": {"files": [{"path": "x4.pth", "sha256sum": "AB"}],
                       "download": [{"file_name": "x4.pth", "file_path": "up", "file_url": "http://127.0.0.1:1/x4.pth"}]}}}"#;
        assert_eq!(reference.add(ours, "ours.json").unwrap(), 1);
        let entry = reference.get("RealESRGAN_x4plus").unwrap();
        assert_eq!(entry.files[0].file_name, "up/x4.pth");
        assert_eq!(entry.files[0].sha256.as_deref(), Some("ab"));
        assert_eq!(entry.source, "ours.json");
        let error = reference.add("[1, 2]", "bad.json").unwrap_err();
        assert!(error.contains("bad.json"), "{error}");
    }

    #[test]
    fn text_reference_entries_list_no_files() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/reference/text/db.json"
        ))
        .unwrap();
        let mut reference = Reference::default();
        assert!(reference.add(&text, "db.json").unwrap() > 1000);
        let entry = reference
            .get("koboldcpp/LLaMA2-13B-Tiefighter")
            .or_else(|| reference.entries.values().next());
        assert!(entry.unwrap().files.is_empty());
    }
}
