//! LoRAs pinned to diffusers and PEFT: on the tiny random checkpoint of each family (seed 22,
//! the checkpoints of `tools/sd-fixtures`), LoRA files in the kohya/LoCon, diffusers/PEFT and
//! LyCORIS LoHa formats (written by `tools/lora-fixtures/generate.sh`, random, alpha ≠ rank)
//! applied with `Model::set_loras` give diffusers' UNet outputs at two model strengths and with
//! two LoRAs together, and diffusers' text conditioning at a clip strength, within the
//! manifest's tolerance (relative to the output's largest magnitude). Removing the LoRAs gives
//! the base model's outputs bit for bit. A LoRA read at the wrong scale (alpha or PEFT's
//! `lora_alpha` ignored, or the strength applied to the wrong network) misses by far.

mod common;

use candle_core::{Device, Tensor};
use common::{tiny_model, Fixtures, Tensors, FAMILIES};
use horde_diffusion::parts::{encode_text_now, sdxl_vector, unet_forward_now, Conditioning};
use horde_diffusion::{Error, LoraApplication, LoraFile, Model};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const FIXTURES: Fixtures = Fixtures {
    folder: "lora",
    tool: "tools/lora-fixtures",
};
/// How far beyond the tolerance a mis-wired LoRA must land.
const MISWIRED_FACTOR: f64 = 100.0;
const FORMATS: [&str; 3] = ["kohya", "peft", "loha"];

fn fixture(family: &str) -> Tensors {
    FIXTURES.tensors(&format!("{family}.safetensors"))
}

fn lora_path(family: &str, format: &str) -> PathBuf {
    FIXTURES
        .dir()
        .join(format!("{family}_{format}.safetensors"))
}

fn lora(family: &str, format: &str) -> Arc<LoraFile> {
    Arc::new(LoraFile::open(&lora_path(family, format)).unwrap())
}

/// The first family's model and fixture, for the tests one family shows.
fn first_family() -> (&'static str, Model, Tensors) {
    let (arch, family) = FAMILIES[0];
    (family, tiny_model(arch), fixture(family))
}

fn at(file: &Arc<LoraFile>, model_strength: f64, clip_strength: f64) -> LoraApplication {
    LoraApplication {
        file: file.clone(),
        model_strength,
        clip_strength,
    }
}

/// The UNet on the fixture's inputs, as the model runs it now.
fn unet(model: &Model, x: &Tensors) -> Tensor {
    let vector = model
        .config()
        .unet
        .adm_in_channels
        .map(|adm| sdxl_vector(&x["unet.text_embeds"], &x["unet.time_ids"], adm).unwrap());
    let cond = Conditioning {
        context: &x["unet.context"],
        vector: vector.as_ref(),
    };
    unet_forward_now(model, &x["unet.sample"], &x["unet.timesteps"], &cond).unwrap()
}

/// The text conditioning (clip skip 1) of the fixture's tokens, and SDXL's pooled embedding.
fn text(model: &Model, x: &Tensors) -> (Tensor, Option<Tensor>) {
    let tokens = common::tokens(&x["text.tokens"]);
    encode_text_now(model, &tokens, 1).unwrap()
}

/// The largest difference relative to the reference's largest magnitude.
fn relative_difference(ours: &Tensor, reference: &Tensor) -> f64 {
    assert_eq!(ours.dims(), reference.dims());
    let largest = |t: &Tensor| {
        t.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    f64::from(largest(&(ours - reference).unwrap()) / largest(reference))
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

/// Every output of a family against the fixture: (name, relative difference).
fn differences(model: &Model, family: &str, x: &Tensors) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    let mut check = |name: String, ours: &Tensor| {
        out.push((name.clone(), relative_difference(ours, &x[&name])));
    };
    model.set_loras(&[]).unwrap();
    check("base.unet".into(), &unet(model, x));
    for format in FORMATS {
        let file = lora(family, format);
        for strength in [1.0, 0.6] {
            model.set_loras(&[at(&file, strength, 0.0)]).unwrap();
            check(format!("{format}.unet.{strength:?}"), &unet(model, x));
        }
        model.set_loras(&[at(&file, 0.0, 0.7)]).unwrap();
        let (context, pooled) = text(model, x);
        check(format!("{format}.text.context"), &context);
        if let Some(pooled) = pooled {
            check(format!("{format}.text.pooled"), &pooled);
        }
    }
    let (kohya, peft) = (lora(family, "kohya"), lora(family, "peft"));
    model
        .set_loras(&[at(&kohya, 0.8, 0.4), at(&peft, -0.5, 0.9)])
        .unwrap();
    check("pair.unet".into(), &unet(model, x));
    let (context, pooled) = text(model, x);
    check("pair.text.context".into(), &context);
    if let Some(pooled) = pooled {
        check("pair.text.pooled".into(), &pooled);
    }
    out
}

#[test]
fn every_format_matches_diffusers_and_peft_in_every_family() {
    let tolerance = FIXTURES.tolerance();
    for (arch, family) in FAMILIES {
        let model = tiny_model(arch);
        let x = fixture(family);
        for (name, difference) in differences(&model, family, &x) {
            println!("{family} {name}: {difference:.2e}");
            assert!(
                difference <= tolerance,
                "{family} {name}: {difference:e} > {tolerance:e}"
            );
        }
    }
}

/// The empty set runs the base networks again: bit for bit what the model gave before any
/// LoRA, after sets of every format and both networks.
#[test]
fn removing_the_loras_restores_the_base_model_bit_for_bit() {
    for (arch, family) in FAMILIES {
        let model = tiny_model(arch);
        let x = fixture(family);
        let (base_unet, (base_context, _)) = (unet(&model, &x), text(&model, &x));
        let files: Vec<_> = FORMATS.iter().map(|f| lora(family, f)).collect();
        model
            .set_loras(&[at(&files[0], 0.8, 0.4), at(&files[1], -0.5, 0.9)])
            .unwrap();
        model.set_loras(&[at(&files[2], 1.0, 1.0)]).unwrap();
        assert_ne!(
            bits(&unet(&model, &x)),
            bits(&base_unet),
            "{family}: applied"
        );
        model.set_loras(&[]).unwrap();
        assert_eq!(bits(&unet(&model, &x)), bits(&base_unet), "{family}: UNet");
        assert_eq!(
            bits(&text(&model, &x).0),
            bits(&base_context),
            "{family}: text"
        );
    }
}

/// `path` rewritten by `change` (a loader bug made into a file: the engine reads it as a
/// mis-wired loader would read the original).
fn rewritten(path: &Path, dir: &Path, change: impl Fn(&mut Tensors)) -> PathBuf {
    let mut tensors = common::load_tensors(path);
    change(&mut tensors);
    let out = dir.join(path.file_name().unwrap());
    candle_core::safetensors::save(&tensors, &out).unwrap();
    out
}

/// A LoRA at the wrong scale misses diffusers by far: kohya's and LoHa's `alpha` ignored (the
/// product taken at scale 1 rather than alpha / rank), PEFT's `lora_alpha` ignored (the file
/// without its metadata: scale 1 rather than 1.5), the clip strength given to the UNet.
#[test]
fn a_lora_at_the_wrong_scale_misses_diffusers_by_far() {
    let tolerance = FIXTURES.tolerance();
    let dir = tempfile::tempdir().unwrap();
    let (family, model, x) = first_family();
    let no_alpha = |t: &mut Tensors| t.retain(|k, _| !k.ends_with(".alpha"));
    for format in ["kohya", "loha", "peft"] {
        let path = lora_path(family, format);
        // Saving drops the header's metadata (PEFT's lora_alpha); kohya and LoHa lose alpha.
        let wrong = Arc::new(LoraFile::open(&rewritten(&path, dir.path(), no_alpha)).unwrap());
        model.set_loras(&[at(&wrong, 1.0, 0.0)]).unwrap();
        let miss = relative_difference(&unet(&model, &x), &x[&format!("{format}.unet.1.0")]);
        println!("{format} without its alpha: miss {miss:.3}");
        assert!(miss > MISWIRED_FACTOR * tolerance, "{format}: {miss}");
    }
    let kohya = lora(family, "kohya");
    model.set_loras(&[at(&kohya, 0.7, 0.6)]).unwrap();
    let miss = relative_difference(&unet(&model, &x), &x["kohya.unet.0.6"]);
    println!("model strength 0.7 for 0.6: miss {miss:.3}");
    assert!(miss > MISWIRED_FACTOR * tolerance, "{miss}");
}

/// A LoRA of another family is refused, naming the file and why; the model runs without LoRAs.
/// (The tiny SD 1.x and 2.x models have the same widths, so their LoRAs fit each other; the
/// unit tests of `lora` refuse a real SD 2.x shape on SD 1.x.)
#[test]
fn a_lora_of_another_family_is_refused_with_the_reason() {
    for ((arch, family), other) in [(FAMILIES[0], "sdxl"), (FAMILIES[2], "sd15")] {
        let model = tiny_model(arch);
        let x = fixture(family);
        let before = unet(&model, &x);
        let file = lora(other, "kohya");
        let err = model.set_loras(&[at(&file, 1.0, 1.0)]).unwrap_err();
        assert!(matches!(err, Error::Lora { .. }), "{err}");
        let message = err.to_string();
        println!("{other} LoRA on {family}: {message}");
        assert!(
            message.contains(&format!("{other}_kohya.safetensors")),
            "{message}"
        );
        assert!(message.contains("another model family"), "{message}");
        assert_eq!(
            bits(&unet(&model, &x)),
            bits(&before),
            "{family}: without LoRAs"
        );
    }
}

/// diffusers' older key forms name the same modules: the PEFT file rewritten with attention
/// processors' names (`….attn1.processor.to_q_lora.down.weight`, no `unet.` prefix,
/// `to_out_lora` for `to_out.0`), `….lora.down.weight` for the UNet's other layers and
/// `….lora_linear_layer.down.weight` for the text encoder gives the same outputs, bit for bit,
/// as the PEFT file (both without PEFT's metadata, which the older forms did not have).
#[test]
fn older_diffusers_key_forms_name_the_same_modules() {
    let dir = tempfile::tempdir().unwrap();
    let (family, model, x) = first_family();
    let peft = lora_path(family, "peft");
    let plain = rewritten(&peft, dir.path(), |_| {});
    let older_dir = dir.path().join("older");
    std::fs::create_dir(&older_dir).unwrap();
    let older = rewritten(&peft, &older_dir, |tensors| {
        *tensors = std::mem::take(tensors)
            .into_iter()
            .map(|(key, t)| (older_key(&key), t))
            .collect();
    });
    let names = common::load_tensors(&older);
    for form in [
        ".processor.to_q_lora.down.weight",
        "_lora.up.weight",
        ".lora.down.weight",
    ] {
        assert!(names.keys().any(|k| k.ends_with(form)), "{form}");
    }
    assert!(names.keys().any(|k| k.contains(".lora_linear_layer.up.")));
    let mut outputs = Vec::new();
    for path in [plain, older] {
        let file = Arc::new(LoraFile::open(&path).unwrap());
        model.set_loras(&[at(&file, 0.9, 0.8)]).unwrap();
        outputs.push((bits(&unet(&model, &x)), bits(&text(&model, &x).0)));
    }
    assert!(
        outputs[0] == outputs[1],
        "the older names apply the same changes"
    );
}

/// A PEFT key in diffusers' older spelling.
fn older_key(key: &str) -> String {
    let (stem, part) = match key.strip_suffix(".lora_A.weight") {
        Some(stem) => (stem, "down"),
        None => (key.strip_suffix(".lora_B.weight").unwrap(), "up"),
    };
    if let Some(module) = stem.strip_prefix("text_encoder.") {
        return format!("text_encoder.{module}.lora_linear_layer.{part}.weight");
    }
    let module = stem.strip_prefix("unet.").unwrap();
    for projection in ["to_q", "to_k", "to_v", "to_out.0"] {
        if let Some(attention) = module.strip_suffix(&format!(".{projection}")) {
            let name = projection.trim_end_matches(".0");
            return format!("{attention}.processor.{name}_lora.{part}.weight");
        }
    }
    format!("unet.{module}.lora.{part}.weight")
}

/// Keys of no known format: a few among many modules are ignored (the LoRA applies as without
/// them), more than 5 % refuse the file, naming them.
#[test]
fn a_few_unknown_keys_are_ignored_and_many_refuse_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (family, model, x) = first_family();
    let kohya = lora_path(family, "kohya");
    let with_junk = |count: usize, into: &str| {
        let folder = dir.path().join(into);
        std::fs::create_dir(&folder).unwrap();
        let path = rewritten(&kohya, &folder, |tensors| {
            for i in 0..count {
                let junk = Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap();
                tensors.insert(format!("training_metadata_{i}"), junk);
            }
        });
        Arc::new(LoraFile::open(&path).unwrap())
    };
    let few = with_junk(2, "few");
    model.set_loras(&[at(&few, 1.0, 0.0)]).unwrap();
    let difference = relative_difference(&unet(&model, &x), &x["kohya.unet.1.0"]);
    assert!(difference <= FIXTURES.tolerance(), "{difference}");
    let many = with_junk(10, "many");
    let message = model
        .set_loras(&[at(&many, 1.0, 0.0)])
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("10 of its 127") && message.contains("`training_metadata_0`"),
        "{message}"
    );
}
