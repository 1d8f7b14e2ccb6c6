//! The upscalers against the PyTorch reference: tiny random checkpoints of every layout the
//! horde's upscalers come in, written and run by spandrel (`tools/postprocess-fixtures`), loaded
//! here through the same code a worker uses and run on the same input.

mod common;
use common::max_diff;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use horde_postprocess::upscale::{esrgan, Network, Upscaler};
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    common::fixtures_of("upscalers")
}

fn manifest() -> Value {
    common::manifest_of("upscalers")
}

/// The fixture's input and spandrel's output for it.
fn expected(entry: &Value) -> (Tensor, Tensor) {
    let path = fixtures().join(entry["expected"].as_str().unwrap());
    let mut tensors = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    (
        tensors.remove("input").unwrap(),
        tensors.remove("output").unwrap(),
    )
}

#[test]
fn every_layout_loads_with_its_scale_and_matches_spandrel() {
    let manifest = manifest();
    let tolerance = manifest["tolerance_abs"].as_f64().unwrap() as f32;
    let entries = manifest["fixtures"].as_array().unwrap();
    assert_eq!(
        entries.len(),
        5,
        "x4plus, x2plus, anime, old layout, compact"
    );
    for entry in entries {
        let name = entry["name"].as_str().unwrap();
        let path = fixtures().join(entry["checkpoint"].as_str().unwrap());
        let upscaler = Upscaler::load(&path, &Device::Cpu).unwrap();
        assert_eq!(
            upscaler.scale() as u64,
            entry["scale"].as_u64().unwrap(),
            "{name}: the scale read from the tensors"
        );
        let (input, output) = expected(entry);
        let ours = upscaler.forward(&input).unwrap();
        assert_eq!(ours.dims(), output.dims(), "{name}");
        let diff = max_diff(&ours, &output);
        assert!(diff < tolerance, "{name}: max |ours − spandrel| = {diff:e}");
    }
}

/// The tensors of a fixture's checkpoint, in the new layout.
fn tensors_of(checkpoint: &str) -> HashMap<String, Tensor> {
    let path = fixtures().join(checkpoint);
    let read = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    esrgan::to_new_layout(read)
}

#[test]
fn a_mis_wired_network_misses_the_reference() {
    // Two dense blocks' first convolutions swapped: the smallest change spandrel's check found
    // (the 0.2 residual scaling damps it), still far past the tolerance.
    let manifest = manifest();
    let tolerance = manifest["tolerance_abs"].as_f64().unwrap() as f32;
    let entry = &manifest["fixtures"][0];
    let mut tensors = tensors_of(entry["checkpoint"].as_str().unwrap());
    let a = tensors.remove("body.0.rdb1.conv1.weight").unwrap();
    let b = tensors.remove("body.0.rdb2.conv1.weight").unwrap();
    tensors.insert("body.0.rdb1.conv1.weight".into(), b);
    tensors.insert("body.0.rdb2.conv1.weight".into(), a);
    let shape = esrgan::shape_of(&tensors).unwrap();
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let net = esrgan::Rrdbnet::new(shape, vb).unwrap();
    let (input, output) = expected(entry);
    let diff = max_diff(&net.forward(&input).unwrap(), &output);
    assert!(diff > 10.0 * tolerance, "the swap went unseen: {diff:e}");
}

#[test]
fn the_old_layout_is_read_as_the_new_one() {
    let manifest = manifest();
    let old = manifest["fixtures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["key_layout"] == "old")
        .unwrap();
    let tensors = tensors_of(old["checkpoint"].as_str().unwrap());
    assert!(tensors.contains_key("conv_first.weight"));
    assert!(tensors.contains_key("body.1.rdb3.conv5.bias"));
    assert!(tensors.contains_key("conv_up2.weight") && tensors.contains_key("conv_last.bias"));
    let shape = esrgan::shape_of(&tensors).unwrap();
    assert_eq!((shape.blocks, shape.growth, shape.scale()), (2, 4, 4));
}

#[test]
fn a_large_image_is_upscaled_in_tiles_close_to_whole() {
    let entry = &manifest()["fixtures"][4]; // the compact network: small and fast
    let path = fixtures().join(entry["checkpoint"].as_str().unwrap());
    let mut upscaler = Upscaler::load(&path, &Device::Cpu).unwrap();
    assert!(matches!(upscaler.network, Network::Compact(_)));
    let image = image::RgbImage::from_fn(100, 75, |x, y| {
        image::Rgb([(x * 2) as u8, (y * 3) as u8, ((x + y) % 256) as u8])
    });
    let whole = upscaler.upscale(&image).unwrap();
    upscaler.tiling.tile = 40;
    upscaler.tiling.overlap = 16;
    let tiled = upscaler.upscale(&image).unwrap();
    assert_eq!(tiled.dimensions(), (400, 300));
    // The compact fixture has four 3×3 convolutions: it sees 4 pixels around each. The blend
    // trusts no tile within a quarter of the 16 shared pixels of its cut, so tiled and whole
    // agree to rounding.
    let worst = whole
        .as_raw()
        .iter()
        .zip(tiled.as_raw())
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    assert!(worst <= 1, "tiles differ from the whole by {worst}/255");
}

#[test]
fn a_pth_checkpoint_wrapped_as_real_esrgan_ships_it_gives_the_same_network() {
    // The x2plus fixture also saved by torch.save as {"params_ema": state_dict}, the wrapping
    // of Real-ESRGAN's released .pth files.
    let manifest = manifest();
    let entry = manifest["fixtures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "realesrgan_x2plus")
        .unwrap();
    let upscaler = Upscaler::load(&fixtures().join("realesrgan_x2plus.pth"), &Device::Cpu).unwrap();
    assert_eq!(upscaler.scale(), 2);
    let (input, output) = expected(entry);
    let diff = max_diff(&upscaler.forward(&input).unwrap(), &output);
    assert!(diff < 1e-4, "{diff:e}");
}

#[test]
fn a_file_that_is_no_upscaler_is_refused_with_its_name() {
    let dir = std::env::temp_dir().join(format!("horde-pp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("not-an-upscaler.safetensors");
    let t = Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap();
    candle_core::safetensors::save(&HashMap::from([("text.weight".to_string(), t)]), &path)
        .unwrap();
    let error = Upscaler::load(&path, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("not-an-upscaler.safetensors"), "{error}");
    assert!(error.contains("neither an ESRGAN"), "{error}");
    let missing = Upscaler::load(&dir.join("missing.pth"), &Device::Cpu)
        .err()
        .unwrap();
    assert!(missing.to_string().contains("no such file"), "{missing}");
}
