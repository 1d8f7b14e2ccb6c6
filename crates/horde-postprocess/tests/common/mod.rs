//! What every family's tests share: where its fixtures are, its manifest, and the largest
//! difference between two tensors.
#![allow(dead_code)] // each test binary uses its own part

use candle_core::{DType, Tensor};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// `tests/fixtures/<family>`.
pub(crate) fn fixtures_of(family: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(family)
}

/// The family's `manifest.json`, written by its tool in `tools/postprocess-fixtures`.
pub(crate) fn manifest_of(family: &str) -> Value {
    let text = std::fs::read_to_string(fixtures_of(family).join("manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The manifest's `tolerance_abs`: how far from the reference a family's outputs may be.
pub(crate) fn tolerance_of(family: &str) -> f32 {
    manifest_of(family)["tolerance_abs"].as_f64().unwrap() as f32
}

/// The fixture file the manifest names under `key` (`checkpoint`, `expected`, …).
pub(crate) fn named_file_of(family: &str, key: &str) -> PathBuf {
    let name = manifest_of(family)[key].as_str().unwrap().to_string();
    fixtures_of(family).join(name)
}

/// `max |a − b|`, in f32 whatever the two tensors hold.
pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    let (a, b) = (
        a.to_dtype(DType::F32).unwrap(),
        b.to_dtype(DType::F32).unwrap(),
    );
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}
