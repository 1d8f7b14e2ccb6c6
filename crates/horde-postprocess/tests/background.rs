//! `strip_background` against the PyTorch reference: tiny random U2NET, U2NETP and ISNetDIS
//! checkpoints written and run by `tools/postprocess-fixtures/background.py`, loaded here
//! through the production loader; and rembg's whole pipeline on a 400×300 image.

mod common;
use common::max_diff;

use candle_core::{Device, Tensor};
use horde_postprocess::background::{
    network::SalientNet, pipeline, resample::resize_lanczos, write_tiny_checkpoint,
    BackgroundRemover, Kind, Tensors,
};
use horde_postprocess::Error;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    common::fixtures_of("background")
}

fn manifest() -> Value {
    common::manifest_of("background")
}

fn tolerance() -> f32 {
    common::tolerance_of("background")
}

fn entry(name: &str) -> Value {
    manifest()["fixtures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap()
        .clone()
}

/// The fixture's input and the reference's outputs, stacked `[n, 1, H, W]`.
fn expected(entry: &Value) -> (Tensor, Tensor) {
    let path = fixtures().join(entry["expected"].as_str().unwrap());
    let mut tensors = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    (
        tensors.remove("input").unwrap(),
        tensors.remove("outputs").unwrap(),
    )
}

fn stacked(outputs: &[Tensor]) -> Tensor {
    Tensor::cat(outputs, 0).unwrap()
}

#[test]
fn every_layout_is_recognised_and_matches_the_reference() {
    let tolerance = tolerance();
    for (name, kind, outputs) in [
        ("u2net", Kind::U2Net, 7),
        ("u2netp", Kind::U2NetP, 7),
        ("isnet", Kind::IsNet, 6),
    ] {
        let entry = entry(name);
        let path = fixtures().join(entry["checkpoint"].as_str().unwrap());
        let remover = BackgroundRemover::load(&path, &Device::Cpu).unwrap();
        assert_eq!(
            remover.kind(),
            kind,
            "{name}: the kind read from the tensors"
        );
        let (input, reference) = expected(&entry);
        let ours = remover.forward(&input).unwrap();
        assert_eq!(ours.len(), outputs, "{name}: outputs");
        let ours = stacked(&ours);
        assert_eq!(ours.dims(), reference.dims(), "{name}");
        let diff = max_diff(&ours, &reference);
        println!("{name}: max |ours − reference| = {diff:e} over {outputs} outputs");
        assert!(
            diff < tolerance,
            "{name}: max |ours − reference| = {diff:e}"
        );
    }
}

#[test]
fn a_pth_state_dict_loads_to_the_same_network() {
    // u2netp.pth as published: a plain torch.save'd state dict (int64 num_batches_tracked
    // included).
    let entry = entry("u2netp");
    let remover = BackgroundRemover::load(&fixtures().join("u2netp.pth"), &Device::Cpu).unwrap();
    assert_eq!(remover.kind(), Kind::U2NetP);
    let (input, reference) = expected(&entry);
    let diff = max_diff(&stacked(&remover.forward(&input).unwrap()), &reference);
    assert!(diff < tolerance(), "{diff:e}");
}

/// The fixture's tensors with two of them swapped, built into a network.
fn swapped(name: &str, a: &str, b: &str) -> SalientNet {
    let path = fixtures().join(format!("{name}.safetensors"));
    let mut tensors = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    let ta = tensors.remove(a).unwrap();
    let tb = tensors.remove(b).unwrap();
    tensors.insert(a.into(), tb);
    tensors.insert(b.into(), ta);
    SalientNet::load(&Tensors::new(tensors)).unwrap()
}

#[test]
fn a_mis_wired_network_misses_the_reference() {
    // A decoder RSU4F's dilation-2 and dilation-4 convolutions swapped, and two side
    // convolutions swapped: the reference script's measures for these are in the manifest
    // (1.3e-1 and 9.9e-1 for u2netp, tolerance 3e-5).
    let tolerance = tolerance();
    let entry = entry("u2netp");
    let (input, reference) = expected(&entry);
    for (a, b) in [
        (
            "stage5d.rebnconv2d.conv_s1.weight",
            "stage5d.rebnconv3d.conv_s1.weight",
        ),
        ("side1.weight", "side2.weight"),
    ] {
        let measured = entry["miswired"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| {
                m["change"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("swap {a}"))
            })
            .unwrap()["max_abs_diff"]
            .as_f64()
            .unwrap() as f32;
        let net = swapped("u2netp", a, b);
        let diff = max_diff(&stacked(&net.forward(&input).unwrap()), &reference);
        println!("swap {a} ↔ {b}: max diff {diff:e} (the reference's: {measured:e})");
        assert!(
            diff > 100.0 * tolerance,
            "swapping {a} and {b} went unseen: {diff:e}"
        );
        // The port mis-wired the same way misses by what the reference measured.
        assert!(
            (diff - measured).abs() < tolerance,
            "{diff:e} vs {measured:e}"
        );
    }
}

fn load_png(name: &str) -> image::DynamicImage {
    image::open(fixtures().join(name)).unwrap()
}

/// Largest and mean absolute difference between two 8-bit buffers, and how many differ.
fn level_diff(a: &[u8], b: &[u8]) -> (u8, f64, usize) {
    assert_eq!(a.len(), b.len());
    let diffs: Vec<u8> = a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).collect();
    let mean = diffs.iter().map(|&d| f64::from(d)).sum::<f64>() / diffs.len() as f64;
    let differ = diffs.iter().filter(|&&d| d > 0).count();
    (*diffs.iter().max().unwrap(), mean, differ)
}

#[test]
fn the_whole_pipeline_matches_rembg_within_the_networks_float_noise() {
    let manifest = manifest();
    let tolerance = tolerance();
    let image = load_png(manifest["pipeline"]["image"].as_str().unwrap()).to_rgb8();
    for run in manifest["pipeline"]["runs"].as_array().unwrap() {
        let kind = run["kind"].as_str().unwrap();
        let path = fixtures().join(format!("{kind}.safetensors"));
        let remover = BackgroundRemover::load(&path, &Device::Cpu).unwrap();

        // The network on rembg's input: its prediction's range, then the 8-bit mask.
        let session = pipeline::Session::of(remover.kind());
        assert_eq!(
            session.size as u64,
            run["session"]["size"][0].as_u64().unwrap()
        );
        let x = pipeline::network_input(&image, &session, &Device::Cpu).unwrap();
        let prediction = remover.forward(&x).unwrap().remove(0);
        let flat = prediction.flatten_all().unwrap();
        let range = [flat.min(0).unwrap(), flat.max(0).unwrap()]
            .map(|t| f64::from(t.to_scalar::<f32>().unwrap()));
        for (ours, theirs) in range
            .iter()
            .zip(run["prediction_range"].as_array().unwrap())
        {
            let diff = (ours - theirs.as_f64().unwrap()).abs() as f32;
            assert!(
                diff < tolerance,
                "{kind}: prediction range {range:?} vs {theirs}"
            );
        }
        let small = pipeline::to_mask(&prediction, &session).unwrap();
        let theirs = load_png(run["network_mask"].as_str().unwrap()).to_luma8();
        let (worst, _, differ) = level_diff(small.as_raw(), theirs.as_raw());
        println!(
            "{kind}: 8-bit mask at {0}²: {differ} of {1} pixels one level off (float noise \
             before the truncation), worst {worst}",
            session.size,
            small.as_raw().len()
        );
        assert!(
            worst <= 1,
            "{kind}: the network's mask is {worst} levels off"
        );
        assert!(
            differ * 1000 <= small.as_raw().len(),
            "{kind}: {differ} pixels differ"
        );

        // The whole of remove(): the mask at the image's size and the cutout.
        let cutout = remover.remove(&image).unwrap();
        assert_eq!(cutout.dimensions(), image.dimensions());
        let their_mask = load_png(run["mask"].as_str().unwrap()).to_luma8();
        let their_cutout = load_png(run["cutout"].as_str().unwrap()).to_rgba8();
        let our_mask: Vec<u8> = cutout.pixels().map(|p| p.0[3]).collect();
        let (worst, mean, differ) = level_diff(&our_mask, their_mask.as_raw());
        println!(
            "{kind}: final mask differs from rembg's in {differ} of {} pixels, by at most \
             {worst} levels, {mean:.4} on average",
            our_mask.len()
        );
        let (cut_worst, cut_mean, _) = level_diff(cutout.as_raw(), their_cutout.as_raw());
        println!("{kind}: cutout at most {cut_worst} levels off, {cut_mean:.4} on average");
        assert!(worst <= MASK_LEVELS, "{kind}: mask {worst} levels off");
        assert!(
            mean <= MASK_MEAN_LEVELS,
            "{kind}: mask {mean} levels off on average"
        );
        assert!(
            cut_worst <= MASK_LEVELS,
            "{kind}: cutout {cut_worst} levels off"
        );
        // Given rembg's own mask, the cutout is PIL's composite exactly.
        let exact = pipeline::naive_cutout(&image, &their_mask);
        assert_eq!(
            exact.as_raw(),
            their_cutout.as_raw(),
            "{kind}: the composite"
        );
    }
}

/// The pipeline's tolerance on the final mask, in 8-bit levels (README-background.md): the
/// resizes are PIL's to the bit, so what is left is the network's float noise (~1e-6)
/// flipping a truncation to 8 bits at the network's size (measured: no pixel of u2netp's 320²
/// mask, 30 of isnet's 1024² one), which the Lanczos resize back spreads to its neighbours
/// (measured on the final mask: u2netp identical, isnet 4 pixels one level off).
const MASK_LEVELS: u8 = 2;
const MASK_MEAN_LEVELS: f64 = 0.05;

#[test]
fn pil_lanczos_is_reproduced_to_the_bit() {
    // PIL's resize of the pipeline's image (RGB) and of the u2netp mask (L), both ways.
    let manifest = manifest();
    let image = load_png(manifest["pipeline"]["image"].as_str().unwrap()).to_rgb8();
    let mask = load_png("pipeline.u2netp.mask.png").to_luma8();
    let resized = manifest["pipeline"]["pil_lanczos"].as_object().unwrap();
    assert_eq!(resized.len(), 6);
    for (size, entry) in resized {
        let theirs = load_png(entry["file"].as_str().unwrap());
        let (w, h) = (theirs.width(), theirs.height());
        let (ours, theirs) = if size.starts_with("mask") {
            (
                resize_lanczos(&mask, w, h).into_raw(),
                theirs.to_luma8().into_raw(),
            )
        } else {
            (
                resize_lanczos(&image, w, h).into_raw(),
                theirs.to_rgb8().into_raw(),
            )
        };
        let (worst, _, differ) = level_diff(&ours, &theirs);
        assert_eq!(
            (worst, differ),
            (0, 0),
            "{size}: {differ} values differ, by up to {worst}"
        );
    }
}

#[test]
fn a_checkpoint_of_another_kind_is_refused_as_unsupported() {
    let upscaler = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/upscalers/realesr_general_x4v3.safetensors");
    let error = BackgroundRemover::load(&upscaler, &Device::Cpu)
        .err()
        .unwrap();
    assert!(matches!(error, Error::Unsupported { .. }), "{error}");
    let message = error.to_string();
    assert!(
        message.contains("realesr_general_x4v3.safetensors"),
        "{message}"
    );
    assert!(
        message.contains("not a U²-Net-family background remover"),
        "{message}"
    );
}

#[test]
fn a_broken_family_checkpoint_is_refused_with_the_reason() {
    let dir = std::env::temp_dir().join(format!("horde-bg-broken-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fixture = fixtures().join("u2netp.safetensors");
    let read = || candle_core::safetensors::load(&fixture, &Device::Cpu).unwrap();
    let refused = |name: &str, tensors: std::collections::HashMap<String, Tensor>| {
        let path = dir.join(name);
        candle_core::safetensors::save(&tensors, &path).unwrap();
        let error = BackgroundRemover::load(&path, &Device::Cpu).err().unwrap();
        assert!(matches!(error, Error::Unsupported { .. }), "{error}");
        let message = error.to_string();
        assert!(message.contains(name), "{message}");
        message
    };
    let mut missing = read();
    missing
        .remove("stage3d.rebnconv2.bn_s1.running_var")
        .unwrap();
    let message = refused("missing.safetensors", missing);
    assert!(
        message.contains("no tensor `stage3d.rebnconv2.bn_s1.running_var`"),
        "{message}"
    );
    // u2netp's stage 3 made to take 7 channels where stage 2 gives 5.
    let mut miswired = read();
    let wide = Tensor::ones((5, 7, 3, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
    miswired.insert("stage3.rebnconvin.conv_s1.weight".into(), wide);
    let message = refused("wiring.safetensors", miswired);
    assert!(
        message.contains("`stage3` has 7 channels where the network's wiring gives it 5"),
        "{message}"
    );
    let mut both = read();
    let stem = Tensor::zeros((4, 3, 3, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
    both.insert("conv_in.weight".into(), stem);
    let message = refused("both.safetensors", both);
    assert!(message.contains("neither U²-Net"), "{message}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn an_empty_image_is_an_error_not_a_panic() {
    let remover =
        BackgroundRemover::load(&fixtures().join("u2netp.safetensors"), &Device::Cpu).unwrap();
    let error = remover.remove(&image::RgbImage::new(0, 10)).err().unwrap();
    assert!(error.to_string().contains("empty image"), "{error}");
}

#[test]
fn the_tiny_writer_loads_as_u2netp_and_runs() {
    let dir = std::env::temp_dir().join(format!("horde-bg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tiny-u2netp.safetensors");
    write_tiny_checkpoint(&path, 7).unwrap();
    let remover = BackgroundRemover::load(&path, &Device::Cpu).unwrap();
    assert_eq!(remover.kind(), Kind::U2NetP);
    let image = image::RgbImage::from_fn(48, 40, |x, y| {
        image::Rgb([(x * 5) as u8, (y * 6) as u8, ((x * y) % 256) as u8])
    });
    let cutout = remover.remove(&image).unwrap();
    assert_eq!(cutout.dimensions(), (48, 40));
    let alphas: Vec<u8> = cutout.pixels().map(|p| p.0[3]).collect();
    let (lo, hi) = (alphas.iter().min().unwrap(), alphas.iter().max().unwrap());
    assert!(
        hi > lo,
        "a random network still gives a varied mask ({lo}..{hi})"
    );
    // Every tensor random: none constant.
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    for (name, t) in &tensors {
        let t = t
            .to_dtype(candle_core::DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap();
        if t.elem_count() > 1 {
            let spread = t.max(0).unwrap().to_scalar::<f32>().unwrap()
                - t.min(0).unwrap().to_scalar::<f32>().unwrap();
            assert!(spread > 0.0, "{name} is constant");
        }
    }
    // A second seed gives other weights.
    let other = dir.join("tiny-other.safetensors");
    write_tiny_checkpoint(&other, 8).unwrap();
    let a = &tensors["stage1.rebnconvin.conv_s1.weight"];
    let b = &candle_core::safetensors::load(&other, &Device::Cpu).unwrap()
        ["stage1.rebnconvin.conv_s1.weight"];
    assert!(max_diff(a, b) > 0.0);
    std::fs::remove_dir_all(&dir).ok();
}

/// Timing of the network at its session's size on a full-width checkpoint (for the benchmark
/// against PyTorch; README-background.md): `HORDE_BG_BENCH=path/to/u2net.safetensors cargo
/// test --release -p horde-postprocess --test background -- --ignored --nocapture`.
#[test]
#[ignore = "needs HORDE_BG_BENCH, a full-size checkpoint; a benchmark"]
fn time_a_full_size_network() {
    let path = std::env::var("HORDE_BG_BENCH")
        .expect("set HORDE_BG_BENCH to a full-size checkpoint (see tools/postprocess-fixtures)");
    let remover = BackgroundRemover::load(Path::new(&path), &Device::Cpu).unwrap();
    let side = pipeline::Session::of(remover.kind()).size as usize;
    let x = Tensor::rand(0f32, 1f32, (1, 3, side, side), &Device::Cpu).unwrap();
    for _ in 0..3 {
        let start = std::time::Instant::now();
        let out = remover.forward(&x).unwrap();
        assert_eq!(out[0].dims(), &[1, 1, side, side]);
        println!(
            "{:?} forward at {side}²: {:.3} s",
            remover.kind(),
            start.elapsed().as_secs_f64()
        );
    }
    let image = image::RgbImage::from_fn(1024, 768, |x, y| image::Rgb([x as u8, y as u8, 7]));
    let start = std::time::Instant::now();
    remover.remove(&image).unwrap();
    println!(
        "remove() on 1024×768: {:.3} s",
        start.elapsed().as_secs_f64()
    );
}
