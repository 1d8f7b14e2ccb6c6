//! GFPGAN (GFPGANv1Clean, v1.3/v1.4) against the PyTorch reference: a tiny random network in
//! the published key layout, written and run by `tools/postprocess-fixtures/gfpgan.py` with the
//! stored noise (`randomize_noise=False`), loaded here through the production loader.

mod common;
use common::max_diff;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use horde_postprocess::face::gfpgan::{self, Gfpgan, Noise};
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    common::fixtures_of("gfpgan")
}

fn manifest() -> Value {
    common::manifest_of("gfpgan")
}

fn tolerance() -> f32 {
    common::tolerance_of("gfpgan")
}

fn expected() -> HashMap<String, Tensor> {
    let path = fixtures().join("gfpgan_tiny.expected.safetensors");
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn channels(detected: &Value) -> Vec<usize> {
    let map = detected.as_object().unwrap();
    let mut by_size: Vec<(usize, usize)> = map
        .iter()
        .map(|(k, v)| (k.parse().unwrap(), v.as_u64().unwrap() as usize))
        .collect();
    by_size.sort();
    by_size.into_iter().map(|(_, c)| c).collect()
}

fn fixture_tensors() -> HashMap<String, Tensor> {
    let path = fixtures().join("gfpgan_tiny.safetensors");
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn network_of(tensors: HashMap<String, Tensor>) -> Gfpgan {
    let shape = gfpgan::shape_of(&tensors).unwrap();
    Gfpgan::new(
        shape,
        VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu),
    )
    .unwrap()
}

#[test]
fn the_tiny_network_loads_with_the_hyper_parameters_pytorch_built() {
    let manifest = manifest();
    let detected = &manifest["detected"];
    let net = Gfpgan::load(&fixtures().join("gfpgan_tiny.safetensors"), &Device::Cpu).unwrap();
    let shape = &net.shape;
    assert_eq!(
        shape.out_size as u64,
        detected["out_size"].as_u64().unwrap()
    );
    assert_eq!(
        shape.num_style_feat as u64,
        detected["num_style_feat"].as_u64().unwrap()
    );
    assert_eq!(
        shape.num_latent() as u64,
        detected["num_latent"].as_u64().unwrap()
    );
    assert_eq!(
        shape.decoder_channels,
        channels(&detected["decoder_channels"])
    );
    assert_eq!(shape.unet_channels, channels(&detected["unet_channels"]));
    let hp = &manifest["hyperparameters"];
    assert_eq!(shape.sft_half, hp["sft_half"].as_bool().unwrap());
    assert_eq!(shape.different_w, hp["different_w"].as_bool().unwrap());
    assert_eq!(shape.num_mlp as u64, hp["num_mlp"].as_u64().unwrap());
    assert_eq!(shape.narrow(), hp["narrow"].as_f64().unwrap());
    assert_eq!(
        shape.channel_multiplier(),
        hp["channel_multiplier"].as_f64()
    );
}

#[test]
fn the_output_and_its_intermediates_match_pytorch() {
    let tolerance = tolerance();
    let expected = expected();
    let net = Gfpgan::load(&fixtures().join("gfpgan_tiny.safetensors"), &Device::Cpu).unwrap();
    let input = &expected["input"];
    let (latents, conditions) = net.encode(input).unwrap();
    let diff = max_diff(&latents, &expected["style_code"]);
    assert!(diff < tolerance, "style code: {diff:e}");
    let flat: Vec<&Tensor> = conditions
        .iter()
        .flat_map(|c| [&c.scale, &c.shift])
        .collect();
    assert_eq!(flat.len(), 8, "a scale and a shift at 8², 16², 32², 64²");
    for (i, ours) in flat.iter().enumerate() {
        let diff = max_diff(ours, &expected[&format!("conditions.{i}")]);
        assert!(diff < tolerance, "condition {i}: {diff:e}");
    }
    let diff = max_diff(&net.forward(input).unwrap(), &expected["output"]);
    eprintln!("max |ours − PyTorch|: output {diff:e}");
    assert!(diff < tolerance, "output: max |ours − PyTorch| = {diff:e}");
}

#[test]
fn one_latent_for_all_layers_and_sft_on_all_channels_are_read_and_match_too() {
    // Settings no published checkpoint uses (different_w=False, sft_half=False), at 32².
    let dir = fixtures();
    let net = Gfpgan::load(&dir.join("gfpgan_tiny_alternate.safetensors"), &Device::Cpu).unwrap();
    assert!(!net.shape.different_w && !net.shape.sft_half);
    assert_eq!(
        (net.shape.out_size, net.shape.channel_multiplier()),
        (32, None)
    );
    let path = dir.join("gfpgan_tiny_alternate.expected.safetensors");
    let expected = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    let (latents, _) = net.encode(&expected["input"]).unwrap();
    // PyTorch repeats the one latent for every layer inside the decoder.
    let first = latents.narrow(1, 0, 1).unwrap().squeeze(1).unwrap();
    assert!(max_diff(&first, &expected["style_code"]) < tolerance());
    let diff = max_diff(
        &net.forward(&expected["input"]).unwrap(),
        &expected["output"],
    );
    assert!(diff < tolerance(), "{diff:e}");
}

#[test]
fn a_pth_wrapped_in_params_ema_as_published_gives_the_same_network() {
    let expected = expected();
    let net = Gfpgan::load(&fixtures().join("gfpgan_tiny.pth"), &Device::Cpu).unwrap();
    let diff = max_diff(
        &net.forward(&expected["input"]).unwrap(),
        &expected["output"],
    );
    assert!(diff < tolerance(), "{diff:e}");
}

/// The fixture's tensors with each pair of names swapped.
fn swapped(pairs: &[(String, String)]) -> HashMap<String, Tensor> {
    let mut tensors = fixture_tensors();
    for (a, b) in pairs {
        let (ta, tb) = (tensors.remove(a).unwrap(), tensors.remove(b).unwrap());
        tensors.insert(a.clone(), tb);
        tensors.insert(b.clone(), ta);
    }
    tensors
}

#[test]
fn mis_wired_networks_miss_the_reference_by_far_more_than_the_tolerance() {
    let expected = expected();
    let margin = 100.0 * tolerance();
    let scale_shift: Vec<(String, String)> = fixture_tensors()
        .keys()
        .filter(|k| k.starts_with("condition_scale."))
        .map(|k| (k.clone(), k.replace("condition_scale", "condition_shift")))
        .collect();
    assert_eq!(scale_shift.len(), 16);
    let noise = |j: usize| format!("stylegan_decoder.noises.noise{j}");
    for (what, tensors) in [
        ("SFT scale ↔ shift", swapped(&scale_shift)),
        ("noise1 ↔ noise2", swapped(&[(noise(1), noise(2))])),
    ] {
        let out = network_of(tensors).forward(&expected["input"]).unwrap();
        let diff = max_diff(&out, &expected["output"]);
        eprintln!("mis-wired, {what}: max |diff| {diff:e}");
        assert!(diff > margin, "{what} went unseen: {diff:e}");
    }
}

#[test]
fn stored_noise_is_deterministic_and_fresh_noise_is_not() {
    let expected = expected();
    let mut net = network_of(fixture_tensors());
    let input = &expected["input"];
    let stored = net.forward(input).unwrap();
    assert_eq!(max_diff(&stored, &net.forward(input).unwrap()), 0.0);
    net.noise = Noise::Fresh;
    let fresh = net.forward(input).unwrap();
    assert!(max_diff(&fresh, &stored) > 100.0 * tolerance());
    assert!(max_diff(&fresh, &net.forward(input).unwrap()) > 0.0);
}

#[test]
fn a_batch_gives_each_face_what_it_gives_alone() {
    // Each sample gets its own modulated weights (PyTorch's grouped convolution).
    let expected = expected();
    let net = network_of(fixture_tensors());
    let one = &expected["input"];
    let other = one.flip(&[3]).unwrap().affine(0.5, 0.1).unwrap();
    let batch = Tensor::cat(&[one, &other], 0).unwrap();
    let together = net.forward(&batch).unwrap();
    let alone = [net.forward(one).unwrap(), net.forward(&other).unwrap()];
    for (i, alone) in alone.iter().enumerate() {
        // Within rounding, 1e-5 of the largest value: a batch and a face alone do not round
        // alike (4.8e-7 apart at values of 2.5 with F(2×2) on the 32×32 maps, 2.5e-6 since
        // those run by F(4×4)); one face's modulation applied to both would be 0.1 off.
        let largest = alone.abs().unwrap().max_all().unwrap();
        let bound = 1e-5 * largest.to_scalar::<f32>().unwrap();
        let diff = max_diff(&together.narrow(0, i, 1).unwrap(), alone);
        assert!(diff < bound, "sample {i}: {diff:e} against {bound:e}");
    }
    assert!(max_diff(&alone[0], &alone[1]) > 0.1, "the two faces differ");
}

#[test]
fn restore_follows_gfpganers_per_face_steps() {
    let path = fixtures().join("gfpgan_tiny.restore.safetensors");
    let tensors = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    let to_bytes = |t: &Tensor| -> Vec<u8> { t.flatten_all().unwrap().to_vec1().unwrap() };
    let (face, restored) = (&tensors["face"], &tensors["restored"]);
    let (h, w, _) = face.dims3().unwrap();
    let face = image::RgbImage::from_raw(w as u32, h as u32, to_bytes(face)).unwrap();
    let net = Gfpgan::load(&fixtures().join("gfpgan_tiny.safetensors"), &Device::Cpu).unwrap();
    let ours = net.restore(&face).unwrap();
    assert_eq!(ours.dimensions(), face.dimensions());
    let theirs = to_bytes(restored);
    let diffs: Vec<u8> = ours
        .as_raw()
        .iter()
        .zip(&theirs)
        .map(|(a, b)| a.abs_diff(*b))
        .collect();
    let off = diffs.iter().filter(|d| **d > 0).count();
    // Only a value within the tolerance of a rounding boundary may land one level apart.
    eprintln!("restore: {off} of {} values one level off", diffs.len());
    let worst = diffs.iter().max().unwrap();
    assert!(
        *worst <= 1,
        "a value is off by {worst} levels ({off} differ)"
    );
    assert!(
        off * 1000 <= diffs.len(),
        "{off} of {} values off by one",
        diffs.len()
    );
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let net = network_of(fixture_tensors());
    let small = image::RgbImage::new(32, 32);
    let error = net.restore(&small).err().unwrap().to_string();
    assert!(
        error.contains("64×64") && error.contains("32×32"),
        "{error}"
    );
    let wrong = Tensor::zeros((1, 3, 64, 48), DType::F32, &Device::Cpu).unwrap();
    let error = net.forward(&wrong).err().unwrap().to_string();
    assert!(error.contains("[batch, 3, 64, 64]"), "{error}");
}

#[test]
fn a_checkpoint_of_another_kind_is_refused_with_its_name() {
    let upscaler = fixtures().join("../upscalers/realesr_general_x4v3.safetensors");
    let error = Gfpgan::load(&upscaler, &Device::Cpu).err().unwrap();
    assert!(
        matches!(error, horde_postprocess::Error::Unsupported { .. }),
        "{error}"
    );
    let text = error.to_string();
    assert!(text.contains("realesr_general_x4v3.safetensors"), "{text}");
    assert!(text.contains("GFPGANv1Clean"), "{text}");

    // The original GFPGAN v1 (ConvLayer sequences) is named as such.
    let dir = std::env::temp_dir().join(format!("horde-gfpgan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("GFPGANv1.safetensors");
    let t = Tensor::ones((2, 3, 1, 1), DType::F32, &Device::Cpu).unwrap();
    let tensors = HashMap::from([
        ("conv_body_first.0.weight".to_string(), t.clone()),
        ("toRGB.0.weight".to_string(), t),
    ]);
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let text = Gfpgan::load(&path, &Device::Cpu).err().unwrap().to_string();
    assert!(
        text.contains("GFPGANv1.safetensors") && text.contains("original"),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_key_layout_written_by_rust_is_the_published_one() {
    let manifest = manifest();
    let keys = manifest["keys"].as_object().unwrap();
    let shape = gfpgan::shape_of(&fixture_tensors()).unwrap();
    assert_eq!(shape, gfpgan::tiny_shape());
    let ours = gfpgan::key_layout(&shape);
    let mut ours = ours;
    ours.sort();
    // serde_json's map is ordered by name.
    let theirs: Vec<(String, Vec<usize>)> = keys
        .iter()
        .map(|(k, v)| {
            let dims = v
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize);
            (k.clone(), dims.collect())
        })
        .collect();
    assert_eq!(ours, theirs);
}

#[test]
fn the_tiny_writer_round_trips_through_the_loader() {
    let dir = std::env::temp_dir().join(format!("horde-gfpgan-tiny-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tiny.safetensors");
    gfpgan::write_tiny_checkpoint(&path, 7).unwrap();
    let written = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    assert_eq!(
        written.len(),
        manifest()["num_tensors"].as_u64().unwrap() as usize
    );
    for (name, t) in &written {
        let values: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let random = values
            .iter()
            .all(|v| v.is_finite() && *v != 0.0 && *v != 1.0);
        assert!(random, "{name} is not random");
    }
    let net = Gfpgan::load(&path, &Device::Cpu).unwrap();
    assert_eq!(net.shape, gfpgan::tiny_shape());
    let face = image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([x as u8 * 4, y as u8 * 4, 128]));
    let restored = net.restore(&face).unwrap();
    assert_eq!(restored.dimensions(), (64, 64));
    let levels: std::collections::HashSet<u8> = restored.as_raw().iter().copied().collect();
    assert!(levels.len() > 16, "a flat image: {} levels", levels.len());
    let other = dir.join("other.safetensors");
    gfpgan::write_tiny_checkpoint(&other, 8).unwrap();
    let again = Gfpgan::load(&other, &Device::Cpu)
        .unwrap()
        .restore(&face)
        .unwrap();
    assert_ne!(again, restored, "the seed changes the weights");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The published hyper-parameters (512², 512-wide latents, channel multiplier 2) on a random
/// checkpoint written by `tools/postprocess-fixtures/gfpgan_bench.py` in the directory
/// `HORDE_GFPGAN_FULL` (348 MB, not committed): the loader reads them from the tensors, the
/// output matches PyTorch's, and the forward pass is timed. Run with `--release -- --ignored`.
#[test]
#[ignore = "needs HORDE_GFPGAN_FULL (tools/postprocess-fixtures/gfpgan_bench.py)"]
fn a_full_size_checkpoint_loads_matches_pytorch_and_is_timed() {
    let dir = PathBuf::from(std::env::var("HORDE_GFPGAN_FULL").expect("HORDE_GFPGAN_FULL"));
    let start = std::time::Instant::now();
    let net = Gfpgan::load(&dir.join("gfpgan_full.pth"), &Device::Cpu).unwrap();
    eprintln!("load {:.2} s", start.elapsed().as_secs_f64());
    let shape = &net.shape;
    assert_eq!(
        (shape.out_size, shape.num_style_feat, shape.num_mlp),
        (512, 512, 8)
    );
    assert_eq!(
        (shape.narrow(), shape.channel_multiplier()),
        (1.0, Some(2.0))
    );
    assert!(shape.sft_half && shape.different_w);
    assert_eq!(
        shape.decoder_channels,
        [512, 512, 512, 512, 512, 256, 128, 64]
    );
    assert_eq!(shape.unet_channels, [256, 256, 256, 256, 256, 128, 64, 32]);
    let path = dir.join("gfpgan_full.expected.safetensors");
    let expected = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    let runs: usize = std::env::var("HORDE_GFPGAN_RUNS").map_or(3, |r| r.parse().unwrap());
    let mut out = None;
    for _ in 0..runs {
        let start = std::time::Instant::now();
        net.encode(&expected["input"]).unwrap();
        let encoded = start.elapsed().as_secs_f64();
        let start = std::time::Instant::now();
        out = Some(net.forward(&expected["input"]).unwrap());
        let total = start.elapsed().as_secs_f64();
        eprintln!("forward {total:.3} s (the encoder alone {encoded:.3} s)");
    }
    let out = out.unwrap();
    let reference = &expected["output"];
    let scale = reference
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap();
    let scale = scale.to_scalar::<f32>().unwrap();
    let diff = max_diff(&out, reference);
    eprintln!("max |ours − PyTorch| {diff:e} (max |PyTorch| {scale})");
    assert!(diff < tolerance() * scale.max(1.0), "{diff:e}");
}
