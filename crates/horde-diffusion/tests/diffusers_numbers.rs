//! The engine's networks pinned to diffusers and transformers: on the tiny random checkpoint of
//! each family (SD 1.x, SD 2.x, SDXL; `horde_diffusion::tiny`, seed [`CHECKPOINT_SEED`]), the
//! UNet (with SDXL's size conditioning), the VAE (decode; encode: the latent distribution's
//! mean, a sample with recorded noise, the family's scaled latents, and an 8-bit image through
//! `encode_images`, whole and in bands) and the text encoders (the hidden state each family
//! conditions on, SDXL's pooled projection) give diffusers' numbers within the manifest's
//! tolerance. The fixtures are written by `tools/sd-fixtures/generate.sh`
//! (which runs the ignored test below to write the checkpoints, then diffusers on them).
//!
//! A deliberately mis-wired checkpoint (OpenCLIP's q and k blocks swapped, `text_projection`
//! transposed, position embeddings shifted, norms swapped) misses the fixtures by more than 100×
//! the tolerance; on the old writer's checkpoint, where those tensors were constants, the same
//! mis-wirings change nothing at all.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{max_abs_diff, tool_dir, Fixtures, Tensors, CHECKPOINT_SEED, FAMILIES};
use horde_diffusion::parts::{
    encode_images, sdxl_vector, Conditioning, LatentDistribution, TextConditioner, UNet, Vae,
    UNET_PREFIX, VAE_PREFIX,
};
use horde_diffusion::tiny::{random_tensors, tiny_config, write_tiny_checkpoint};
use horde_diffusion::{LatentDraw, ModelConfig};
use std::path::Path;

const FIXTURES: Fixtures = Fixtures {
    folder: "sd_numbers",
    tool: "tools/sd-fixtures",
};
/// How far beyond the tolerance a mis-wired checkpoint must land.
const MISWIRED_FACTOR: f64 = 100.0;

fn fixture(family: &str) -> Tensors {
    FIXTURES.tensors(&format!("{family}.safetensors"))
}

/// Writes the three checkpoints the fixture tool feeds to diffusers, into
/// `$HORDE_SD_FIXTURES_CHECKPOINTS` (`tools/sd-fixtures/generate.sh` runs it).
#[test]
#[ignore = "writes the checkpoints for tools/sd-fixtures; run by its generate.sh"]
fn write_checkpoints_for_the_fixture_tool() {
    let dir = tool_dir("HORDE_SD_FIXTURES_CHECKPOINTS");
    for (arch, family) in FAMILIES {
        let path = dir.join(format!("{family}.safetensors"));
        write_tiny_checkpoint(arch, &path, CHECKPOINT_SEED).unwrap();
        println!("wrote {}", path.display());
    }
}

/// The three networks of a checkpoint, loaded by the production loader.
struct Engine {
    config: ModelConfig,
    unet: UNet,
    vae: Vae,
    text: TextConditioner,
}

fn load(path: &Path) -> Engine {
    let (config, vb) = common::open(path);
    Engine {
        unet: common::unet(&config, &vb),
        vae: Vae::new(&config.vae, vb.pp(VAE_PREFIX.trim_end_matches('.'))).unwrap(),
        text: common::text_conditioner(&config, &vb),
        config,
    }
}

fn load_tensors(tensors: &Tensors) -> Engine {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    candle_core::safetensors::save(tensors, &path).unwrap();
    load(&path)
}

/// The engine's outputs on the fixture's inputs, under the fixture's names.
fn run(engine: &Engine, inputs: &Tensors) -> Tensors {
    let input = |name: &str| inputs[name].clone();
    let mut out = Tensors::new();
    let vector = engine.config.unet.adm_in_channels.map(|_| {
        sdxl_vector(
            &input("unet.text_embeds"),
            &input("unet.time_ids"),
            engine.config.unet.adm_in_channels.unwrap(),
        )
        .unwrap()
    });
    let context = input("unet.context");
    let cond = Conditioning {
        context: &context,
        vector: vector.as_ref(),
    };
    out.insert(
        "unet.out".into(),
        engine
            .unet
            .forward(&input("unet.sample"), &input("unet.timesteps"), &cond)
            .unwrap(),
    );
    if let Some(vector) = vector {
        out.insert("unet.vector".into(), vector);
    }
    let posterior = engine
        .vae
        .encoder
        .distribution(&input("vae.image"))
        .unwrap();
    let sample = posterior.sample_with(&input("vae.noise")).unwrap();
    let scale = engine.config.family.latent_scale();
    out.insert("vae.encoded_mean".into(), posterior.mean);
    out.insert("vae.encoded_latents".into(), (&sample * scale).unwrap());
    out.insert("vae.encoded_sample".into(), sample);
    out.insert(
        "vae.rgb_latents".into(),
        rgb_latents(engine, &input("vae.rgb")),
    );
    out.insert(
        "vae.decoded".into(),
        engine.vae.decoder.decode(&input("vae.latents")).unwrap(),
    );
    let tokens = common::tokens(&input("text.tokens"));
    let encoded = engine
        .text
        .encode(&tokens, 1, 1, DType::F32, &Device::Cpu)
        .unwrap();
    out.insert("text.context".into(), encoded.context);
    if let Some(pooled) = encoded.pooled {
        out.insert("text.pooled".into(), pooled);
    }
    if inputs.contains_key("text.context_clip_skip_2") {
        let skipped = engine
            .text
            .encode(&tokens, 1, 2, DType::F32, &Device::Cpu)
            .unwrap();
        out.insert("text.context_clip_skip_2".into(), skipped.context);
    }
    out
}

/// The production path of image-to-image's first step: an 8-bit RGB image (`[H, W, 3]`) to
/// the scaled mean latents (`encode_images`).
fn rgb_latents(engine: &Engine, rgb: &Tensor) -> Tensor {
    encode_images(
        &engine.vae.encoder,
        engine.config.family,
        &[common::rgb_image(rgb)],
        &LatentDraw::Mean,
        &Device::Cpu,
        DType::F32,
    )
    .unwrap()
}

/// The largest difference of each output from the fixture's.
fn diffs(outputs: &Tensors, fixture: &Tensors) -> Vec<(String, f64)> {
    let mut names: Vec<&String> = outputs.keys().collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let expected = fixture
                .get(name)
                .unwrap_or_else(|| panic!("the fixture has no `{name}`"));
            (name.clone(), max_abs_diff(&outputs[name], expected))
        })
        .collect()
}

fn worst(diffs: &[(String, f64)]) -> f64 {
    diffs.iter().map(|(_, d)| *d).fold(0.0, f64::max)
}

#[test]
fn the_regenerated_checkpoints_are_the_ones_the_fixtures_were_made_from() {
    let manifest = FIXTURES.manifest();
    assert_eq!(manifest["checkpoint_seed"].as_u64(), Some(CHECKPOINT_SEED));
    for (arch, family) in FAMILIES {
        let tensors = random_tensors(&tiny_config(arch), CHECKPOINT_SEED).unwrap();
        let expected = &manifest["families"][family]["checkpoint"];
        FIXTURES.check_fingerprint(family, &tensors, expected, 1e-6);
    }
}

#[test]
fn unet_vae_and_text_encoders_match_diffusers_for_every_family() {
    let tolerance = FIXTURES.tolerance();
    let dir = tempfile::tempdir().unwrap();
    for (arch, family) in FAMILIES {
        let path = dir.path().join(format!("{family}.safetensors"));
        write_tiny_checkpoint(arch, &path, CHECKPOINT_SEED).unwrap();
        let engine = load(&path);
        assert_eq!(engine.config, tiny_config(arch), "{family}");
        let fixture = fixture(family);
        let diffs = diffs(&run(&engine, &fixture), &fixture);
        let expected_outputs = FIXTURES.manifest()["families"][family]["outputs"]
            .as_object()
            .unwrap()
            .len();
        assert_eq!(
            diffs.len(),
            expected_outputs,
            "{family}: every output checked"
        );
        for (name, diff) in &diffs {
            println!("{family} {name}: max |engine − diffusers| = {diff:.2e}");
            assert!(
                *diff <= tolerance,
                "{family} {name}: {diff} over the tolerance {tolerance}"
            );
        }
        // The encoder in bands of two rows (large images' path) gives the same numbers.
        let moments = engine
            .vae
            .encoder
            .moments_in_bands(&fixture["vae.image"], 1)
            .unwrap();
        let banded = LatentDistribution::from_moments(&moments).unwrap();
        let diff = max_abs_diff(&banded.mean, &fixture["vae.encoded_mean"]);
        println!("{family} vae.encoded_mean in bands: max |engine − diffusers| = {diff:.2e}");
        assert!(diff <= tolerance, "{family} banded encode: {diff}");
    }
}

// ---- Mis-wired variants: what a loader bug would do (the same as generate.py's) ----------------

fn swap_q_k(tensors: &mut Tensors) {
    for (name, t) in tensors.iter_mut() {
        if name.ends_with("attn.in_proj_weight") || name.ends_with("attn.in_proj_bias") {
            let third = t.dim(0).unwrap() / 3;
            let part = |i: usize| t.narrow(0, i * third, third).unwrap();
            *t = Tensor::cat(&[part(1), part(0), part(2)], 0).unwrap();
        }
    }
}

fn transpose_text_projection(tensors: &mut Tensors) {
    for (name, t) in tensors.iter_mut() {
        if name.ends_with("text_projection") {
            *t = t.t().unwrap().contiguous().unwrap();
        }
    }
}

fn shift_positions(tensors: &mut Tensors) {
    for (name, t) in tensors.iter_mut() {
        if name.ends_with("positional_embedding") || name.ends_with("position_embedding.weight") {
            let n = t.dim(0).unwrap();
            *t = Tensor::cat(
                &[
                    t.narrow(0, n - 1, 1).unwrap(),
                    t.narrow(0, 0, n - 1).unwrap(),
                ],
                0,
            )
            .unwrap();
        }
    }
}

/// Swaps every tensor under `prefix` whose name has `first` with its `second` twin.
fn swap_pair(tensors: &mut Tensors, prefix: &str, first: &str, second: &str) {
    let names: Vec<String> = tensors
        .keys()
        .filter(|n| n.starts_with(prefix) && n.contains(first))
        .cloned()
        .collect();
    for name in names {
        let other = name.replace(first, second);
        let a = tensors.remove(&name).unwrap();
        let b = tensors.insert(other, a).unwrap();
        tensors.insert(name, b);
    }
}

type Miswiring = fn(&mut Tensors);

fn miswirings(family: &str) -> Vec<(&'static str, Miswiring)> {
    let mut all: Vec<(&'static str, Miswiring)> = vec![
        ("position_embeddings_shifted", shift_positions),
        ("unet_transformer_norm2_norm3_swapped", |t| {
            swap_pair(t, UNET_PREFIX, ".norm2.", ".norm3.")
        }),
        ("vae_resnet_norm1_norm2_swapped", |t| {
            swap_pair(t, VAE_PREFIX, ".norm1.", ".norm2.")
        }),
    ];
    if family != "sd15" {
        all.push(("openclip_in_proj_q_k_swapped", swap_q_k));
    }
    if family == "sdxl" {
        all.push(("text_projection_transposed", transpose_text_projection));
    }
    all
}

/// Weights and biases of group and layer norms, by their LDM names.
fn is_norm(name: &str) -> bool {
    const NORMS: [&str; 11] = [
        "norm",
        "norm1",
        "norm2",
        "norm3",
        "norm_out",
        "layer_norm1",
        "layer_norm2",
        "final_layer_norm",
        "ln_1",
        "ln_2",
        "ln_final",
    ];
    let parts: Vec<&str> = name.split('.').collect();
    parts.iter().any(|p| NORMS.contains(p))
        || parts
            .windows(2)
            .any(|w| (w[0] == "in_layers" || w[0] == "out_layers") && w[1] == "0")
        || name.starts_with(&format!("{UNET_PREFIX}out.0."))
}

/// The checkpoint as the old writer had it: norms 1 and 0; OpenCLIP's `in_proj`,
/// `text_projection` and the position embeddings 0 (the tensors it wrote from a constant init).
fn old_constants(tensors: &Tensors) -> Tensors {
    let zero_init = [
        "in_proj_weight",
        "in_proj_bias",
        "text_projection",
        "positional_embedding",
        "position_embedding.weight",
    ];
    tensors
        .iter()
        .map(|(name, t)| {
            let t = if is_norm(name) && name.ends_with("weight") {
                t.ones_like().unwrap()
            } else if is_norm(name) || zero_init.iter().any(|z| name.ends_with(z)) {
                t.zeros_like().unwrap()
            } else {
                t.clone()
            };
            (name.clone(), t)
        })
        .collect()
}

#[test]
fn miswired_checkpoints_miss_the_fixtures_and_the_old_constant_checkpoint_could_not_see_it() {
    let tolerance = FIXTURES.tolerance();
    let manifest = FIXTURES.manifest();
    for (arch, family) in FAMILIES {
        let fixture = fixture(family);
        let tensors = random_tensors(&tiny_config(arch), CHECKPOINT_SEED).unwrap();
        let old = old_constants(&tensors);
        let old_outputs = run(&load_tensors(&old), &fixture);
        let recorded = manifest["families"][family]["miswired"]
            .as_object()
            .unwrap();
        let variants = miswirings(family);
        assert_eq!(
            variants.len(),
            recorded.len(),
            "{family}: the same variants as the manifest"
        );
        for (name, miswire) in variants {
            assert!(
                recorded.contains_key(name),
                "{family}: {name} in the manifest"
            );
            let mut bad = tensors.clone();
            miswire(&mut bad);
            let miss = worst(&diffs(&run(&load_tensors(&bad), &fixture), &fixture));
            let mut old_bad = old.clone();
            miswire(&mut old_bad);
            let old_miss = worst(&diffs(
                &run(&load_tensors(&old_bad), &fixture),
                &old_outputs,
            ));
            println!("{family} {name}: misses by {miss:.3e}; on the old constant checkpoint by {old_miss:.1e}");
            assert!(
                miss > MISWIRED_FACTOR * tolerance,
                "{family} {name}: the mis-wired engine misses by only {miss}"
            );
            assert_eq!(
                old_miss, 0.0,
                "{family} {name}: the old checkpoint was blind to it"
            );
        }
    }
}
