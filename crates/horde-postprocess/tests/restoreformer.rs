//! RestoreFormer against spandrel's (`tools/postprocess-fixtures/restoreformer.py`): a tiny
//! random checkpoint in the published layout, loaded through the production loader, run on the
//! fixture's input, and one face restored as GFPGAN's inference restores it.

mod common;
use common::max_diff;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use horde_postprocess::face::restoreformer::{self, RestoreFormer};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn manifest() -> Value {
    common::manifest_of("restoreformer")
}

fn tolerance() -> f32 {
    common::tolerance_of("restoreformer")
}

fn expected() -> HashMap<String, Tensor> {
    let path = common::named_file_of("restoreformer", "expected");
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn checkpoint() -> PathBuf {
    common::named_file_of("restoreformer", "checkpoint")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("horde-restoreformer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn the_tiny_restoreformer_matches_the_reference_with_the_same_codes() {
    let net = RestoreFormer::load(&checkpoint(), &Device::Cpu).unwrap();
    let hp = &manifest()["hyperparameters"];
    assert_eq!(
        net.shape.codebook_size as u64,
        hp["n_embed"].as_u64().unwrap()
    );
    assert_eq!(
        net.shape.codebook_width as u64,
        hp["embed_dim"].as_u64().unwrap()
    );
    assert_eq!(
        net.shape.res_blocks as u64,
        hp["num_res_blocks"].as_u64().unwrap()
    );
    assert_eq!(net.shape.encoder_attention, vec![false, true]);
    assert_eq!(
        net.shape,
        restoreformer::tiny_shape(),
        "the writer's shape is the fixture's"
    );
    let tensors = expected();
    let (out, codes) = net.forward_with_codes(&tensors["input"]).unwrap();
    assert_eq!(
        codes
            .to_dtype(DType::I64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<i64>()
            .unwrap(),
        tensors["codes"]
            .flatten_all()
            .unwrap()
            .to_vec1::<i64>()
            .unwrap(),
        "the chosen codes"
    );
    let diff = max_diff(&out, &tensors["output"]);
    eprintln!("max |ours − reference| = {diff:e}");
    assert!(diff < tolerance(), "max |ours − reference| = {diff:e}");
}

#[test]
fn a_restoreformer_with_the_decoder_attention_q_and_k_swapped_misses_the_reference() {
    // The queries must come from the encoder's map and the keys from the decoder's: swapping
    // the two projections of the decoder's attention blocks swaps the roles.
    let mut tensors = candle_core::safetensors::load(checkpoint(), &Device::Cpu).unwrap();
    let names: Vec<String> = tensors
        .keys()
        .filter(|k| {
            k.starts_with("decoder.") && (k.ends_with(".q.weight") || k.ends_with(".q.bias"))
        })
        .cloned()
        .collect();
    assert!(names.len() >= 4, "{names:?}");
    for q in names {
        let k = q.replace(".q.", ".k.");
        let (tq, tk) = (tensors.remove(&q).unwrap(), tensors.remove(&k).unwrap());
        tensors.insert(q, tk);
        tensors.insert(k, tq);
    }
    let shape = restoreformer::shape_of(&tensors).unwrap();
    let net = RestoreFormer::new(
        shape,
        VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let expected = expected();
    let diff = max_diff(
        &net.forward(&expected["input"]).unwrap(),
        &expected["output"],
    );
    eprintln!("decoder q/k swapped: {diff:e}");
    assert!(diff > 100.0 * tolerance(), "the swap went unseen: {diff:e}");
}

#[test]
fn a_face_is_restored_as_gfpgan_restores_it() {
    let net = RestoreFormer::load(&checkpoint(), &Device::Cpu).unwrap();
    let tensors = expected();
    let pixels = |name: &str| -> Vec<u8> {
        tensors[name]
            .flatten_all()
            .unwrap()
            .to_vec1::<u8>()
            .unwrap()
    };
    let face = image::RgbImage::from_raw(32, 32, pixels("face")).unwrap();
    let restored = net.restore(&face).unwrap();
    let reference = pixels("restored");
    let worst = restored
        .as_raw()
        .iter()
        .zip(&reference)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    eprintln!("restored face: worst {worst}/255");
    // Rounding of values within the tolerance of a .5 may differ by one level.
    assert!(worst <= 1, "restored face differs by {worst}/255");
    let unclamped = reference.iter().filter(|&&v| v > 0 && v < 255).count();
    assert!(
        unclamped > reference.len() / 4,
        "the fixture's face is mostly clamped"
    );
}

#[test]
fn a_face_whose_sides_the_network_cannot_halve_is_an_error() {
    let net = RestoreFormer::load(&checkpoint(), &Device::Cpu).unwrap();
    let error = net
        .restore(&image::RgbImage::new(33, 32))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("33×32") && error.contains("multiples of 2"),
        "{error}"
    );
    // Any multiple runs, and keeps its size.
    let face = image::RgbImage::from_pixel(48, 16, image::Rgb([120, 90, 80]));
    assert_eq!(net.restore(&face).unwrap().dimensions(), (48, 16));
}

#[test]
fn a_checkpoint_of_another_kind_is_refused_with_its_name() {
    let codeformer = scratch("a-codeformer.safetensors");
    horde_postprocess::face::codeformer::write_tiny_checkpoint(&codeformer, 1).unwrap();
    let error = RestoreFormer::load(&codeformer, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("a-codeformer.safetensors"), "{error}");
    assert!(error.contains("not a RestoreFormer"), "{error}");
    let missing = RestoreFormer::load(&scratch("missing.pth"), &Device::Cpu)
        .err()
        .unwrap();
    assert!(missing.to_string().contains("no such file"), "{missing}");
}

#[test]
fn the_tiny_writer_gives_a_checkpoint_the_loader_runs() {
    let path = scratch("tiny.safetensors");
    restoreformer::write_tiny_checkpoint(&path, 7).unwrap();
    let net = RestoreFormer::load(&path, &Device::Cpu).unwrap();
    assert_eq!(net.shape, restoreformer::tiny_shape());
    let written = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let fixture = candle_core::safetensors::load(checkpoint(), &Device::Cpu).unwrap();
    let (mut names, mut expected): (Vec<_>, Vec<_>) =
        (written.keys().collect(), fixture.keys().collect());
    names.sort();
    expected.sort();
    assert_eq!(
        names, expected,
        "the writer's key layout is the reference's"
    );
    for (name, t) in &written {
        let values = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(values.iter().any(|&v| v != values[0]), "{name} is constant");
        assert_eq!(t.dims(), fixture[name].dims(), "{name}");
    }
    let face = image::RgbImage::from_fn(32, 32, |x, y| {
        image::Rgb([(x * 8) as u8, (y * 8) as u8, 128])
    });
    let restored = net.restore(&face).unwrap();
    assert_ne!(restored, face);
    let other = scratch("tiny-8.safetensors");
    restoreformer::write_tiny_checkpoint(&other, 8).unwrap();
    let other = RestoreFormer::load(&other, &Device::Cpu).unwrap();
    assert_ne!(
        other.restore(&face).unwrap(),
        restored,
        "the seed changes the weights"
    );
}

/// The published size, timed: `HORDE_RESTOREFORMER_BENCH=/tmp/restoreformer.safetensors` (a
/// random full-size checkpoint, with `<path>.io.safetensors` holding PyTorch's `x` and `y`);
/// run with `--release --ignored --nocapture`.
#[test]
#[ignore = "needs a full-size checkpoint; a benchmark"]
fn the_published_size_runs_and_is_timed() {
    let Ok(path) = std::env::var("HORDE_RESTOREFORMER_BENCH") else {
        panic!("set HORDE_RESTOREFORMER_BENCH");
    };
    let net = RestoreFormer::load(Path::new(&path), &Device::Cpu).unwrap();
    let io =
        candle_core::safetensors::load(format!("{path}.io.safetensors"), &Device::Cpu).unwrap();
    let mut times = Vec::new();
    let mut out = None;
    for _ in 0..3 {
        let start = std::time::Instant::now();
        out = Some(net.forward(&io["x"]).unwrap());
        times.push(start.elapsed().as_secs_f64());
    }
    let diff = max_diff(&out.unwrap(), &io["y"]);
    eprintln!("restoreformer 512²: {times:?} s; max |ours − PyTorch| = {diff:e}");
}

#[test]
fn a_malformed_restoreformer_is_refused_not_panicked_on() {
    let mut tensors = candle_core::safetensors::load(checkpoint(), &Device::Cpu).unwrap();
    let flat = tensors["quant_conv.weight"].flatten_all().unwrap();
    tensors.insert("quant_conv.weight".into(), flat);
    let path = scratch("bent.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let error = RestoreFormer::load(&path, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("bent.safetensors"), "{error}");
    assert!(
        error.contains("quant_conv.weight") && error.contains("no dimension 1"),
        "{error}"
    );
}
