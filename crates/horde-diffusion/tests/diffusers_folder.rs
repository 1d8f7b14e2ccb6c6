//! Diffusers folders: the tensor names real diffusers 0.42.1 and transformers 5.24 give tiny
//! SD 1.x, SD 2.x and SDXL pipelines (`tests/fixtures/diffusers_tiny_*_names.json`, written by
//! `tools/diffusers-names/dump.py`) are renamed to exactly the single-file names the networks
//! read, and the folder generates.

use candle_core::{Device, Tensor};
use horde_diffusion::parts::SD2_CLIP_PREFIX;
use horde_diffusion::tiny::{random_tensors, tiny_config, TinyArch};
use horde_diffusion::{Generation, LoadOptions, Model, SamplerKind};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

fn fixture(arch: TinyArch) -> serde_json::Value {
    let text = match arch {
        TinyArch::Sd15 => include_str!("fixtures/diffusers_tiny_sd15_names.json"),
        TinyArch::Sd2 => include_str!("fixtures/diffusers_tiny_sd2_names.json"),
        TinyArch::Sdxl => include_str!("fixtures/diffusers_tiny_sdxl_names.json"),
    };
    serde_json::from_str(text).unwrap()
}

/// Writes one part with deterministic values of the fixture's names and shapes.
fn write_part(dir: &Path, part: &str, shapes: &serde_json::Map<String, serde_json::Value>) {
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
    let file = if part.starts_with("text_encoder") {
        "model.safetensors"
    } else {
        "diffusion_pytorch_model.safetensors"
    };
    std::fs::create_dir_all(dir.join(part)).unwrap();
    candle_core::safetensors::save(&tensors, dir.join(part).join(file)).unwrap();
}

fn write_folder(arch: TinyArch, dir: &Path) -> std::path::PathBuf {
    let folder = dir.join(format!("{arch:?}"));
    let names = fixture(arch);
    for (part, shapes) in names.as_object().unwrap() {
        if let Some(shapes) = shapes.as_object() {
            write_part(&folder, part, shapes);
        }
    }
    let act = if arch == TinyArch::Sd2 {
        "gelu"
    } else {
        "quick_gelu"
    };
    std::fs::write(
        folder.join("text_encoder/config.json"),
        format!(r#"{{"hidden_act": "{act}"}}"#),
    )
    .unwrap();
    std::fs::write(
        folder.join("model_index.json"),
        r#"{"_class_name": "StableDiffusionPipeline"}"#,
    )
    .unwrap();
    folder
}

#[test]
fn diffusers_folders_of_every_family_load_with_single_file_names() {
    let dir = tempfile::tempdir().unwrap();
    for arch in [TinyArch::Sd15, TinyArch::Sd2, TinyArch::Sdxl] {
        let folder = write_folder(arch, dir.path());
        let index = horde_diffusion::parts::open_checkpoint(&folder).unwrap();
        let renamed: BTreeSet<String> = index.names().map(String::from).collect();
        let mut config = tiny_config(arch);
        let mut expected: BTreeSet<String> =
            random_tensors(&config, 1).unwrap().into_keys().collect();
        if arch == TinyArch::Sd2 {
            // Diffusers' SD 2.x encoder lacks OpenCLIP's last layer and the unused projection.
            let last = format!("{SD2_CLIP_PREFIX}transformer.resblocks.2.");
            expected.retain(|n| !n.starts_with(&last) && !n.ends_with("text_projection"));
            let text = &mut config.text_encoders[0];
            (text.layers, text.layers_removed, text.projection_dim) = (2, 1, None);
        }
        let missing: Vec<_> = expected.difference(&renamed).collect();
        let extra: Vec<_> = renamed.difference(&expected).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{arch:?}: missing {missing:?}\nunexpected {extra:?}"
        );

        let model = Model::load(&folder, &LoadOptions::default(), &mut |_| {}).unwrap();
        assert_eq!(model.config(), &config, "{arch:?}");
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
            prompts: vec![],
            embeddings: Vec::new(),
        };
        assert_eq!(
            model.generate(&job, &mut |_, _| {}).unwrap()[0].dimensions(),
            (64, 64),
            "{arch:?}"
        );
    }
}

#[test]
fn folders_that_are_not_diffusers_models_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let err = Model::load(dir.path(), &LoadOptions::default(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("model_index.json"), "{err}");
}
