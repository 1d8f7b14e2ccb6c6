//! The converter of pickled checkpoints (`horde_diffusion::pickled`) against torch itself: every
//! fixture in `tests/fixtures/pickled/` was written by `torch.save` (tools/ckpt-fixtures), and
//! beside each the `.safetensors` that `safetensors.torch.save_file` writes of the same tensors
//! made contiguous. A conversion must give the same names, dtypes, shapes and bytes (read both
//! with candle, compared exactly): the fixtures hold transposed, strided and channels-last views,
//! tensors sharing one storage, and every dtype torch saves that the engine may meet. The tiny
//! SD 1.5 checkpoint, pickled with all its matrices column-major and its vectors in one shared
//! storage, must convert to a checkpoint that generates the very same image.

mod common;

use candle_core::safetensors::SliceSafetensors;
use common::{Fixtures, CHECKPOINT_SEED};
use horde_diffusion::pickled::{convert_to_safetensors, ConvertSummary};
use horde_diffusion::tiny::{write_tiny_checkpoint, TinyArch};
use horde_diffusion::{Generation, LoadOptions, Model, SamplerKind};
use std::path::{Path, PathBuf};

const FIXTURES: Fixtures = Fixtures {
    folder: "pickled",
    tool: "tools/ckpt-fixtures/generate.sh",
};
/// The file `runs_code.ckpt`'s pickle would create if Python unpickled it (make_ckpt.py).
const MARKER: &str = "horde-pickle-ran-code";

fn fixture(name: &str) -> PathBuf {
    FIXTURES.dir().join(name)
}

/// Converts fixture `name` into a temporary folder.
fn convert(name: &str) -> (tempfile::TempDir, PathBuf, ConvertSummary) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("converted.safetensors");
    let summary = convert_to_safetensors(&fixture(name), &out)
        .unwrap_or_else(|e| panic!("converting {name}: {e}"));
    assert!(!out.with_extension("safetensors.part").exists());
    assert_eq!(summary.bytes, std::fs::metadata(&out).unwrap().len());
    (dir, out, summary)
}

/// Asserts that the safetensors files hold the same tensors, byte for byte; returns how many.
fn assert_same_tensors(converted: &Path, expected: &Path) -> usize {
    let (converted_bytes, expected_bytes) = (
        std::fs::read(converted).unwrap(),
        std::fs::read(expected).unwrap(),
    );
    let header = u64::from_le_bytes(converted_bytes[..8].try_into().unwrap());
    assert_eq!(header % 8, 0, "the header is padded to 8 bytes");
    let converted = SliceSafetensors::new(&converted_bytes).unwrap();
    let expected = SliceSafetensors::new(&expected_bytes).unwrap();
    let mut names: Vec<String> = converted.tensors().into_iter().map(|(n, _)| n).collect();
    let mut expected_names: Vec<String> = expected.tensors().into_iter().map(|(n, _)| n).collect();
    names.sort();
    expected_names.sort();
    assert_eq!(names, expected_names);
    for name in &names {
        let (a, b) = (converted.get(name).unwrap(), expected.get(name).unwrap());
        assert_eq!(
            (a.dtype(), a.shape()),
            (b.dtype(), b.shape()),
            "{name}: dtype and shape"
        );
        assert!(a.data() == b.data(), "{name}: bytes differ");
        // candle reads it as a tensor too.
        converted.load(name, &candle_core::Device::Cpu).unwrap();
    }
    names.len()
}

#[test]
fn an_sd_layout_checkpoint_converts_to_the_tensors_torch_saved() {
    let (_dir, out, summary) = convert("sd_layout.ckpt");
    let count = assert_same_tensors(&out, &fixture("sd_layout.safetensors"));
    assert_eq!((summary.tensors, count), (15, 15));
    assert_eq!(
        summary.skipped,
        [
            "epoch (beside state_dict: an int)",
            "global_step (beside state_dict: an int)",
            "model_ema.* (3 EMA tensors: the engine reads the model's own weights)",
        ],
    );
}

#[test]
fn tensors_at_the_top_level_or_under_module_convert() {
    let (_dir, out, summary) = convert("top_level.ckpt");
    assert_eq!(
        assert_same_tensors(&out, &fixture("top_level.safetensors")),
        3
    );
    assert_eq!(summary.skipped, ["step (not a tensor: an int)"]);

    let (_dir, out, summary) = convert("wrapped.ckpt");
    assert_eq!(
        assert_same_tensors(&out, &fixture("top_level.safetensors")),
        3
    );
    assert_eq!(summary.skipped, ["epoch (beside module: an int)"]);
}

#[test]
fn a_pickle_that_would_run_code_converts_without_running_it() {
    let marker = Path::new(MARKER);
    assert!(!marker.exists(), "{MARKER} is left over from another run");
    let (_dir, out, summary) = convert("runs_code.ckpt");
    assert!(!marker.exists(), "the pickle's os.system call ran");
    assert_eq!(
        assert_same_tensors(&out, &fixture("runs_code.safetensors")),
        1
    );
    assert_eq!(
        summary.skipped,
        ["payload (not a tensor: a posix.system object, never run)"]
    );
}

/// Converts `src`, which must fail; returns the message, after checking nothing was left.
fn refused(src: &Path) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let err = convert_to_safetensors(src, &out).expect_err("must be refused");
    assert!(!out.exists() && !out.with_extension("safetensors.part").exists());
    let message = err.to_string();
    assert!(
        message.starts_with(&src.display().to_string()),
        "names the file: {message}"
    );
    message
}

#[test]
fn a_legacy_missing_or_truncated_file_is_refused_naming_it() {
    let message = refused(&fixture("legacy.ckpt"));
    assert!(
        message.ends_with(
            "is a legacy (pre-1.6) PyTorch file; re-save it with torch.save or convert it to \
             .safetensors"
        ),
        "{message}"
    );
    let message = refused(&fixture("no_such.ckpt"));
    assert!(message.ends_with("no such file"), "{message}");

    let dir = tempfile::tempdir().unwrap();
    let whole = std::fs::read(fixture("sd_layout.ckpt")).unwrap();
    let truncated = dir.path().join("truncated.ckpt");
    std::fs::write(&truncated, &whole[..whole.len() / 2]).unwrap();
    let message = refused(&truncated);
    assert!(message.contains("truncated"), "{message}");

    let message = refused(&fixture("sd_layout.safetensors"));
    assert!(message.ends_with("is a safetensors file already: load it as it is"));
}

#[test]
fn the_engine_refuses_a_pickle_saying_how_to_convert_it() {
    let path = fixture("sd_layout.ckpt");
    let err = Model::load(&path, &LoadOptions::default(), &mut |_| {}).expect_err("a pickle");
    let message = err.to_string();
    assert!(
        message.starts_with(&path.display().to_string())
            && message.contains("is a pickled checkpoint: convert it with `horde model convert`"),
        "{message}"
    );
}

fn image_of(path: &Path) -> Vec<u8> {
    let model = Model::load(path, &LoadOptions::default(), &mut |_| {}).unwrap();
    let job = Generation {
        prompt: "a lighthouse on a hill".into(),
        negative_prompt: "blurry".into(),
        width: 64,
        height: 48,
        steps: 2,
        cfg_scale: 7.0,
        sampler: SamplerKind::Euler,
        karras: false,
        clip_skip: 1,
        tiling: false,
        seeds: vec![30],
        prompts: vec![],
        embeddings: Vec::new(),
    };
    let images = model.generate(&job, &mut |_, _| {}).unwrap();
    images[0].as_raw().clone()
}

/// Rebuilds at `out` the archive torch wrote of the tiny SD 1.5 checkpoint `original` (12 MB,
/// too big to commit): its `data.pkl` as torch pickled it (committed), then each storage from
/// `original`'s tensors, stored as the manifest says torch stored it (checked by make_ckpt.py
/// against torch's archive): a 2-D weight column-major, any other tensor as it is. The records
/// are stored uncompressed, as torch writes them; their CRCs are left 0 (nothing reads them).
fn rebuild_tiny_sd15_pickle(original: &Path, out: &Path, zip64: bool) {
    let text = std::fs::read_to_string(fixture("tiny_sd15.storages.json")).unwrap();
    let manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
    let prefix = manifest["prefix"].as_str().unwrap();
    let tensors = candle_core::safetensors::load(original, &candle_core::Device::Cpu).unwrap();
    let pickle = std::fs::read(fixture("tiny_sd15.data.pkl")).unwrap();
    let mut records = vec![(format!("{prefix}/data.pkl"), pickle)];
    for (key, entry) in manifest["storages"].as_array().unwrap().iter().enumerate() {
        let tensor = &tensors[entry[0].as_str().unwrap()];
        let stored = match entry[1].as_str().unwrap() {
            "transposed" => tensor.t().unwrap().contiguous().unwrap(),
            _ => tensor.clone(),
        };
        let values = stored.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        records.push((format!("{prefix}/data/{key}"), bytes));
    }
    std::fs::write(out, stored_zip(&records, zip64)).unwrap();
}

/// A zip archive of uncompressed records; with `zip64`, in the form torch writes files over
/// 4 GB in: sizes and offsets in zip64 extra fields, and a zip64 end record.
fn stored_zip(records: &[(String, Vec<u8>)], zip64: bool) -> Vec<u8> {
    let (mut out, mut central) = (Vec::new(), Vec::new());
    let u16le = |v: usize| (v as u16).to_le_bytes().to_vec();
    let u32le = |v: usize| (v as u32).to_le_bytes().to_vec();
    let u64le = |v: usize| (v as u64).to_le_bytes().to_vec();
    let big = |v: usize| if zip64 { u32le(0xffff_ffff) } else { u32le(v) };
    for (name, data) in records {
        let (offset, len) = (out.len(), data.len());
        let local_extra = if zip64 {
            [u16le(1), u16le(16), u64le(len), u64le(len)].concat()
        } else {
            vec![]
        };
        // signature, version 2.0, flags, method 0 (stored), time, date, CRC (left 0)
        out.extend_from_slice(&[0x50, 0x4b, 3, 4, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        out.extend(
            [
                big(len),
                big(len),
                u16le(name.len()),
                u16le(local_extra.len()),
            ]
            .concat(),
        );
        out.extend([name.as_bytes(), &local_extra, data].concat());
        let extra = if zip64 {
            [u16le(1), u16le(24), u64le(len), u64le(len), u64le(offset)].concat()
        } else {
            vec![]
        };
        // signature, made by / needs 2.0, flags, method, time, date, CRC
        central.extend_from_slice(&[0x50, 0x4b, 1, 2, 20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        central.extend(
            [
                u32le(0),
                big(len),
                big(len),
                u16le(name.len()),
                u16le(extra.len()),
            ]
            .concat(),
        );
        // comment length, disk, attributes, local header offset
        central.extend([u16le(0), u16le(0), u16le(0), u32le(0), big(offset)].concat());
        central.extend([name.as_bytes(), &extra].concat());
    }
    let (directory, count) = (out.len(), records.len());
    out.extend_from_slice(&central);
    if zip64 {
        let end64 = out.len();
        out.extend(
            [
                u32le(0x0606_4b50),
                u64le(44),
                u16le(45),
                u16le(45),
                u32le(0),
                u32le(0),
            ]
            .concat(),
        );
        out.extend(
            [
                u64le(count),
                u64le(count),
                u64le(central.len()),
                u64le(directory),
            ]
            .concat(),
        );
        out.extend([u32le(0x0706_4b50), u32le(0), u64le(end64), u32le(1)].concat());
    }
    let count = if zip64 { u16le(0xffff) } else { u16le(count) };
    out.extend([u32le(0x0605_4b50), u16le(0), u16le(0), count.clone(), count].concat());
    out.extend([big(central.len()), big(directory), u16le(0)].concat());
    out
}

#[test]
fn a_pickled_tiny_sd15_converts_to_a_model_that_makes_the_same_image() {
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("original.safetensors");
    write_tiny_checkpoint(TinyArch::Sd15, &original, CHECKPOINT_SEED).unwrap();
    let pickled = dir.path().join("tiny_sd15.ckpt");
    rebuild_tiny_sd15_pickle(&original, &pickled, false);
    let converted = dir.path().join("converted.safetensors");
    let summary = convert_to_safetensors(&pickled, &converted).unwrap();
    // The same archive in zip64 form (torch's, over 4 GB) converts to the same file.
    let zip64 = dir.path().join("tiny_sd15_zip64.ckpt");
    rebuild_tiny_sd15_pickle(&original, &zip64, true);
    let from_zip64 = dir.path().join("from_zip64.safetensors");
    assert_eq!(
        convert_to_safetensors(&zip64, &from_zip64).unwrap(),
        summary
    );
    assert!(std::fs::read(&converted).unwrap() == std::fs::read(&from_zip64).unwrap());
    assert_eq!(summary.skipped, ["global_step (beside state_dict: an int)"]);
    // Also the check that the fixture was pickled from this seed's checkpoint: else the tiny
    // writer changed, and tools/ckpt-fixtures/generate.sh must run again.
    let count = assert_same_tensors(&converted, &original);
    assert_eq!((summary.tensors, count), (498, 498));
    let (expected, got) = (image_of(&original), image_of(&converted));
    assert!(
        expected.iter().any(|&p| p != expected[0]),
        "not a flat image"
    );
    assert!(expected == got, "the converted model's image differs");
}

/// Writes the tiny SD 1.5 checkpoint the fixture tool pickles into
/// `$HORDE_CKPT_FIXTURES_CHECKPOINTS` (`tools/ckpt-fixtures/generate.sh` runs it).
#[test]
#[ignore = "writes the checkpoint for tools/ckpt-fixtures; run by its generate.sh"]
fn write_tiny_sd15_for_the_fixture_tool() {
    let dir = common::tool_dir("HORDE_CKPT_FIXTURES_CHECKPOINTS");
    let path = dir.join("tiny_sd15.safetensors");
    write_tiny_checkpoint(TinyArch::Sd15, &path, CHECKPOINT_SEED).unwrap();
    println!("wrote {}", path.display());
}
