//! Diffusers folders: the tensor names real diffusers (0.42.1) gives a tiny SD 1.x UNet and VAE
//! (`tests/fixtures/diffusers_tiny_sd15_names.json`, written by `tools/diffusers-names/dump.py`)
//! are renamed to exactly the single-file names the networks read.

use candle_core::{DType, Device, Tensor};
use horde_diffusion::config::SD1_CLIP_PREFIX;
use horde_diffusion::tiny::{random_tensors, tiny_config, TinyArch};
use horde_diffusion::{Generation, LoadOptions, Model, SamplerKind};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

fn write_part(
    dir: &Path,
    part: &str,
    file: &str,
    shapes: &serde_json::Map<String, serde_json::Value>,
) {
    let tensors: HashMap<String, Tensor> = shapes
        .iter()
        .map(|(name, shape)| {
            let dims: Vec<usize> = shape
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            let count: usize = dims.iter().product();
            let values: Vec<f32> = (0..count)
                .map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 0.1)
                .collect();
            (
                name.clone(),
                Tensor::from_vec(values, dims, &Device::Cpu).unwrap(),
            )
        })
        .collect();
    std::fs::create_dir_all(dir.join(part)).unwrap();
    candle_core::safetensors::save(&tensors, dir.join(part).join(file)).unwrap();
}

#[test]
fn a_diffusers_folder_loads_with_single_file_names() {
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/diffusers_tiny_sd15_names.json")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("tiny-diffusers");
    write_part(
        &folder,
        "unet",
        "diffusion_pytorch_model.safetensors",
        fixture["unet"].as_object().unwrap(),
    );
    write_part(
        &folder,
        "vae",
        "diffusion_pytorch_model.safetensors",
        fixture["vae"].as_object().unwrap(),
    );
    // The text encoder of a diffusers SD 1.x folder is a Hugging Face CLIPTextModel: the same
    // names as the single-file one without its prefix.
    let ldm = random_tensors(&tiny_config(TinyArch::Sd15), 1).unwrap();
    let text: HashMap<String, Tensor> = ldm
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix(SD1_CLIP_PREFIX)
                .map(|k| (k.to_string(), v.clone()))
        })
        .collect();
    std::fs::create_dir_all(folder.join("text_encoder")).unwrap();
    candle_core::safetensors::save(&text, folder.join("text_encoder/model.safetensors")).unwrap();
    std::fs::write(
        folder.join("text_encoder/config.json"),
        r#"{"hidden_act": "quick_gelu"}"#,
    )
    .unwrap();
    std::fs::write(
        folder.join("model_index.json"),
        r#"{"_class_name": "StableDiffusionPipeline"}"#,
    )
    .unwrap();

    let index = horde_diffusion::checkpoint::open(&folder).unwrap();
    let renamed: BTreeSet<&str> = index.names().collect();
    let expected: BTreeSet<&str> = ldm.keys().map(String::as_str).collect();
    let missing: Vec<_> = expected.difference(&renamed).collect();
    let extra: Vec<_> = renamed.difference(&expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}\nunexpected {extra:?}"
    );

    let model = Model::load(
        &folder,
        &LoadOptions {
            dtype: DType::F32,
            ..Default::default()
        },
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(model.config(), &tiny_config(TinyArch::Sd15));
    let job = Generation {
        prompt: "a cat".into(),
        negative_prompt: String::new(),
        width: 64,
        height: 64,
        steps: 2,
        cfg_scale: 5.0,
        sampler: SamplerKind::Euler,
        karras: false,
        clip_skip: 1,
        tiling: false,
        seeds: vec![1],
    };
    assert_eq!(
        model.generate(&job, &mut |_, _| {}).unwrap()[0].dimensions(),
        (64, 64)
    );
}

#[test]
fn folders_that_are_not_diffusers_models_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let err = Model::load(dir.path(), &LoadOptions::default(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("model_index.json"), "{err}");
}
