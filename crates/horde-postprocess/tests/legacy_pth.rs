//! Reading PyTorch's legacy (pre-zip) checkpoint format: small state dicts written by
//! `tools/postprocess-fixtures/legacy_pth.py` with `_use_new_zipfile_serialization=False`
//! against the same tensors in safetensors, corrupt and truncated files, and a tiny RetinaFace
//! re-saved in the legacy format against its zip original.

use candle_core::{DType, Device, Tensor};
use horde_postprocess::face::detect::{network_input, RetinaFace};
use horde_postprocess::tensors::read_checkpoint;
use horde_postprocess::Error;
use image::RgbImage;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn legacy(file: &str) -> PathBuf {
    fixtures().join("legacy_pth").join(file)
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("horde-legacy-pth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Same names, shapes, dtype (f32) and bit-identical values.
fn assert_same(ours: &HashMap<String, Tensor>, expected: &HashMap<String, Tensor>, what: &str) {
    let mut names: Vec<_> = ours.keys().collect();
    let mut wanted: Vec<_> = expected.keys().collect();
    names.sort();
    wanted.sort();
    assert_eq!(names, wanted, "{what}: tensor names");
    for (name, t) in expected {
        let got = &ours[name];
        assert_eq!(got.dtype(), DType::F32, "{what}: {name}");
        assert_eq!(got.dims(), t.dims(), "{what}: {name} shape");
        let (a, b) = (values(got), values(t));
        let same = a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "{what}: {name} values {a:?} != {b:?}");
    }
}

fn expected() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(legacy("tiny.expected.safetensors"), &Device::Cpu).unwrap()
}

fn manifest() -> serde_json::Value {
    let text = std::fs::read_to_string(legacy("manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn unreadable_reason(path: &Path) -> String {
    match read_checkpoint(path, &Device::Cpu) {
        Err(Error::Unreadable { path: p, reason }) => {
            assert_eq!(p, path.display().to_string());
            reason
        }
        Err(other) => panic!("expected Unreadable, got {other}"),
        Ok(t) => panic!("expected Unreadable, read {} tensors", t.len()),
    }
}

#[test]
fn legacy_state_dicts_read_as_their_safetensors_twin() {
    let expected = expected();
    assert!(expected.contains_key("bn.num_batches_tracked"));
    assert!(expected.contains_key("view.transposed") && expected.contains_key("half.weight"));
    for file in ["tiny.pth", "tiny_params_ema.pth", "tiny_params.pth"] {
        let ours = read_checkpoint(&legacy(file), &Device::Cpu).unwrap();
        assert_same(&ours, &expected, file);
    }
}

#[test]
fn a_tensor_on_an_old_storage_view_reads_its_slice() {
    let expected =
        candle_core::safetensors::load(legacy("old_view.expected.safetensors"), &Device::Cpu)
            .unwrap();
    let ours = read_checkpoint(&legacy("old_view.pth"), &Device::Cpu).unwrap();
    assert_same(&ours, &expected, "old_view.pth");
}

#[test]
fn the_strided_views_hold_their_own_elements() {
    // Independent of the fixture's expected file: the transpose of a [6, 8] storage and its
    // [1:4, 2:7] narrow share every value at the matching places.
    let ours = read_checkpoint(&legacy("tiny.pth"), &Device::Cpu).unwrap();
    let transposed = ours["view.transposed"].t().unwrap();
    let narrowed = &ours["view.narrowed"];
    assert_eq!(transposed.dims(), &[6, 8]);
    assert_eq!(narrowed.dims(), &[3, 5]);
    let inner = transposed.narrow(0, 1, 3).unwrap().narrow(1, 2, 5).unwrap();
    assert_eq!(values(&inner), values(narrowed));
    assert_eq!(
        ours["bn.num_batches_tracked"].to_scalar::<f32>().unwrap(),
        7.0
    );
}

#[test]
fn every_truncation_is_unreadable_not_a_panic() {
    let bytes = std::fs::read(legacy("tiny.pth")).unwrap();
    let path = scratch("truncated.pth");
    for len in 0..bytes.len() {
        std::fs::write(&path, &bytes[..len]).unwrap();
        let reason = unreadable_reason(&path);
        assert!(!reason.is_empty(), "length {len}");
    }
}

#[test]
fn a_corrupt_element_count_is_unreadable() {
    let entry = &manifest()["tiny.pth"];
    let offset = entry["first_count_offset"].as_u64().unwrap() as usize;
    let count = entry["first_count"].as_u64().unwrap();
    let bytes = std::fs::read(legacy("tiny.pth")).unwrap();
    let stored = u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap());
    assert_eq!(
        stored, count,
        "the manifest points at the first storage's count"
    );
    let path = scratch("corrupt_count.pth");
    for bad in [count + 1, count - 1, 1 << 40, u64::MAX] {
        let mut corrupt = bytes.clone();
        corrupt[offset..offset + 8].copy_from_slice(&bad.to_le_bytes());
        std::fs::write(&path, &corrupt).unwrap();
        let reason = unreadable_reason(&path);
        assert!(reason.contains("count"), "{bad}: {reason}");
    }
}

#[test]
fn any_flipped_byte_reads_or_fails_without_panicking() {
    let bytes = std::fs::read(legacy("tiny.pth")).unwrap();
    let path = scratch("flipped.pth");
    let mut failures = 0;
    for i in 0..bytes.len() {
        let mut corrupt = bytes.clone();
        corrupt[i] ^= 0xff;
        std::fs::write(&path, &corrupt).unwrap();
        failures += usize::from(read_checkpoint(&path, &Device::Cpu).is_err());
    }
    // Flips in the pickles' structure fail; flips in tensor data still read.
    assert!(failures > 0 && failures < bytes.len(), "{failures}");
}

#[test]
fn a_file_that_is_no_checkpoint_is_unreadable() {
    let path = scratch("text.pth");
    std::fs::write(&path, "not a checkpoint at all").unwrap();
    let reason = unreadable_reason(&path);
    assert!(reason.contains("neither a zip nor a legacy"), "{reason}");
}

#[test]
fn the_zip_format_still_reads() {
    let path = fixtures().join("upscalers/realesrgan_x2plus.pth");
    assert!(std::fs::read(&path).unwrap().starts_with(b"PK"));
    let tensors = read_checkpoint(&path, &Device::Cpu).unwrap();
    assert!(
        tensors.contains_key("body.0.rdb1.conv1.bias"),
        "params_ema unwrapped"
    );
    assert!(tensors.values().all(|t| t.dtype() == DType::F32));
}

#[test]
fn a_legacy_retinaface_reads_and_runs_as_its_zip_original() {
    let zip = fixtures().join("face_detection/retinaface_mnet_tiny_dp.pth");
    let old = legacy("retinaface_mnet_tiny_dp_legacy.pth");
    assert!(!std::fs::read(&old).unwrap().starts_with(b"PK"));
    let from_zip = read_checkpoint(&zip, &Device::Cpu).unwrap();
    let from_legacy = read_checkpoint(&old, &Device::Cpu).unwrap();
    assert_same(&from_legacy, &from_zip, "retinaface");

    let image = RgbImage::from_fn(40, 32, |x, y| {
        image::Rgb([(x * 6) as u8, (y * 7) as u8, ((x + y) * 3) as u8])
    });
    let input = network_input(&image, &Device::Cpu).unwrap();
    let a = RetinaFace::load(&zip, &Device::Cpu).unwrap();
    let b = RetinaFace::load(&old, &Device::Cpu).unwrap();
    let (a, b) = (a.forward(&input).unwrap(), b.forward(&input).unwrap());
    for (x, y) in [(a.loc, b.loc), (a.conf, b.conf), (a.landmarks, b.landmarks)] {
        assert_eq!(values(&x), values(&y));
    }
}
