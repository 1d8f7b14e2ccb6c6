//! How an owner names what to serve: a table of name → file, or a list of names (each
//! optionally `name=file`). A name without a file is looked up in the model reference and
//! downloaded; in the settings it is kept as the name with an empty path.

use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// The most models of one kind a worker may name (the pop's bound on `models`).
pub const MAX_NAMED: usize = 300;

/// Whether a configured entry is to be found in the reference (no file given).
pub fn by_name(path: &Path) -> bool {
    path.as_os_str().is_empty()
}

/// One `NAME` or `NAME=PATH` entry.
pub fn parse_entry(entry: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = match entry.split_once('=') {
        Some((name, path)) => (name.trim(), PathBuf::from(path.trim())),
        None => (entry.trim(), PathBuf::new()),
    };
    if name.is_empty() {
        return Err(format!("{entry:?}: expected NAME or NAME=PATH"));
    }
    Ok((name.to_string(), path))
}

/// Deserializes `models`, `post_processors` and `text_models`: a map (name → path, an empty
/// path meaning "by name") or a list of `NAME` / `NAME=PATH` strings.
pub fn names_or_paths<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, PathBuf>, D::Error> {
    deserializer.deserialize_any(NamesOrPaths)
}

struct NamesOrPaths;

impl<'de> Visitor<'de> for NamesOrPaths {
    type Value = BTreeMap<String, PathBuf>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a table of model name = \"path\", or a list of model names")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut named = BTreeMap::new();
        while let Some(entry) = seq.next_element::<String>()? {
            let (name, path) = parse_entry(&entry).map_err(serde::de::Error::custom)?;
            named.insert(name, path);
            if named.len() > MAX_NAMED {
                return Err(serde::de::Error::custom(format!(
                    "more than {MAX_NAMED} models"
                )));
            }
        }
        Ok(named)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut named = BTreeMap::new();
        while let Some((name, path)) = map.next_entry::<String, PathBuf>()? {
            named.insert(name, path);
            if named.len() > MAX_NAMED {
                return Err(serde::de::Error::custom(format!(
                    "more than {MAX_NAMED} models"
                )));
            }
        }
        Ok(named)
    }
}

#[cfg(test)]
mod tests {
    use crate::WorkerConfig;

    #[test]
    fn models_are_named_by_table_or_by_list() {
        let table: WorkerConfig =
            toml::from_str("[models]\n\"Deliberate\" = \"\"\n\"Mine\" = \"/m/x.safetensors\"\n")
                .unwrap();
        let list: WorkerConfig =
            toml::from_str("models = [\"Deliberate\", \"Mine=/m/x.safetensors\"]\n").unwrap();
        assert_eq!(table.models, list.models);
        assert!(super::by_name(&list.models["Deliberate"]));
        assert_eq!(
            list.models["Mine"],
            std::path::Path::new("/m/x.safetensors")
        );
        let bad = toml::from_str::<WorkerConfig>("models = [\"=x\"]").unwrap_err();
        assert!(bad.to_string().contains("NAME or NAME=PATH"), "{bad}");
        let post: WorkerConfig = toml::from_str("post_processors = [\"GFPGAN\"]").unwrap();
        assert!(super::by_name(&post.post_processors["GFPGAN"]));
    }
}
