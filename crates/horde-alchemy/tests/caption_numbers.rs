//! BLIP captioning against transformers: a tiny random `BlipForConditionalGeneration` in
//! transformers' own layout with its tokenizer and processor configuration, and the reference's
//! numbers for two real images (`tools/alchemy-fixtures/blip.py`), loaded here through the
//! worker's `Captioner::load`. Each part is compared on its own (preprocessing, vision tower,
//! text decoder, tokenizer, the decoding loop) and a mis-wired variant of each must fail.

use candle_core::{Device, Tensor};
use horde_alchemy::caption::{
    caption_result, preprocess, CaptionSettings, Captioner, ImageProcessing, SeededDraws,
};
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;

/// |ours − transformers| bounds (float32 on both sides, different summation orders).
const PIXEL_TOLERANCE: f32 = 1e-5;
const EMBED_TOLERANCE: f32 = 1e-4;
const LOGIT_TOLERANCE: f32 = 2e-4;
const IMAGES: [&str; 2] = ["flower", "lake"];

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/blip")
}

fn manifest() -> Value {
    let text = std::fs::read_to_string(fixtures().join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join("reference.safetensors"), &Device::Cpu).unwrap()
}

fn captioner() -> Captioner {
    Captioner::load(&fixtures().join("model"), &Device::Cpu).unwrap()
}

fn image(name: &str) -> image::RgbImage {
    image::open(fixtures().join(format!("{name}.png")))
        .unwrap()
        .to_rgb8()
}

/// A mis-wired processor: ImageNet's channel statistics instead of CLIP's.
fn imagenet() -> ImageProcessing {
    ImageProcessing {
        size: 64,
        rescale_factor: 1.0 / 255.0,
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap();
    d.max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn ids_of(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

/// The fixture's settings: the horde's sampling ones.
fn settings(manifest: &Value, sample: bool) -> CaptionSettings {
    let s = &manifest["settings"];
    let settings = CaptionSettings {
        prompt: manifest["prompt"].as_str().unwrap().into(),
        min_length: s["min_length"].as_u64().unwrap() as usize,
        max_length: s["max_length"].as_u64().unwrap() as usize,
        sample,
        top_k: s["top_k"].as_u64().unwrap() as usize,
        top_p: s["top_p"].as_f64().unwrap(),
        repetition_penalty: s["repetition_penalty"].as_f64().unwrap(),
        seed: 0,
    };
    assert_eq!(
        settings,
        CaptionSettings {
            sample,
            ..CaptionSettings::default()
        }
    );
    settings
}

#[test]
fn the_bicubic_resize_is_pils_to_the_byte() {
    for name in IMAGES {
        let expected = image::open(fixtures().join(format!("{name}.resized384.png")))
            .unwrap()
            .to_rgb8();
        let ours = preprocess::resize_bicubic(&image(name), 384, 384);
        let worst = ours
            .as_raw()
            .iter()
            .zip(expected.as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        println!("{name}: 384² resize, max |ours − PIL| = {worst}");
        assert_eq!(worst, 0, "{name}");
    }
}

#[test]
fn pixel_values_match_the_processor_and_imagenet_statistics_do_not() {
    let (captioner, reference) = (captioner(), reference());
    for name in IMAGES {
        let expected = &reference[&format!("{name}.pixel_values")];
        let diff = max_diff(&captioner.pixel_values(&image(name)).unwrap(), expected);
        println!("{name}: pixel_values max diff {diff:e}");
        assert!(diff < PIXEL_TOLERANCE, "{name}: {diff}");
        let wrong = preprocess::pixel_values(&image(name), &imagenet(), &Device::Cpu).unwrap();
        let wrong_diff = max_diff(&wrong, expected);
        println!("{name}: mis-wired (ImageNet mean/std) pixel_values max diff {wrong_diff:e}");
        assert!(wrong_diff > PIXEL_TOLERANCE * 1000.0);
    }
}

#[test]
fn vision_embeddings_match_and_mis_normalised_pixels_fail() {
    let (captioner, reference) = (captioner(), reference());
    for name in IMAGES {
        let expected = &reference[&format!("{name}.vision_embeds")];
        let pixels = captioner.pixel_values(&image(name)).unwrap();
        let diff = max_diff(&captioner.vision_embeds(&pixels).unwrap(), expected);
        println!("{name}: vision embeds max diff {diff:e} (tolerance {EMBED_TOLERANCE:e})");
        assert!(diff < EMBED_TOLERANCE, "{name}: {diff}");
        let wrong = preprocess::pixel_values(&image(name), &imagenet(), &Device::Cpu).unwrap();
        let wrong_diff = max_diff(&captioner.vision_embeds(&wrong).unwrap(), expected);
        println!(
            "{name}: mis-wired (ImageNet normalisation) vision embeds max diff {wrong_diff:e}"
        );
        assert!(wrong_diff > EMBED_TOLERANCE * 100.0);
    }
}

#[test]
fn decoder_logits_match_and_fail_without_this_images_cross_attention() {
    let (captioner, reference, manifest) = (captioner(), reference(), manifest());
    for (name, other) in [("flower", "lake"), ("lake", "flower")] {
        let entry = &manifest["images"][name];
        let prefix = ids_of(&entry["prefix_ids"]);
        assert_eq!(
            captioner.prompt_ids(manifest["prompt"].as_str().unwrap()),
            prefix
        );
        let expected = &reference[&format!("{name}.prefix_logits")];
        let embeds = &reference[&format!("{name}.vision_embeds")];
        let diff = max_diff(
            &captioner.decoder_logits(embeds, &prefix).unwrap(),
            expected,
        );
        println!("{name}: prefix logits max diff {diff:e} (tolerance {LOGIT_TOLERANCE:e})");
        assert!(diff < LOGIT_TOLERANCE, "{name}: {diff}");
        let mut cls_start = prefix.clone();
        cls_start[0] = captioner.tokenizer().id("[CLS]").unwrap();
        let cls_diff = max_diff(
            &captioner.decoder_logits(embeds, &cls_start).unwrap(),
            expected,
        );
        println!("{name}: mis-wired ([CLS] left as the start token) logits max diff {cls_diff:e}");
        assert!(cls_diff > LOGIT_TOLERANCE * 100.0);
        let wrong_embeds = &reference[&format!("{other}.vision_embeds")];
        let wrong = captioner.decoder_logits(wrong_embeds, &prefix).unwrap();
        let wrong_diff = max_diff(&wrong, expected);
        println!("{name}: mis-wired (cross-attending to {other}) logits max diff {wrong_diff:e}");
        assert!(wrong_diff > LOGIT_TOLERANCE * 100.0);
    }
}

#[test]
fn the_tokenizer_encodes_and_decodes_as_transformers() {
    let (captioner, manifest) = (captioner(), manifest());
    let cases = &manifest["tokenizer"];
    for case in cases["encode"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            captioner.tokenizer().encode(text),
            ids_of(&case["ids"]),
            "{text:?}"
        );
    }
    for case in cases["decode"].as_array().unwrap() {
        let ids = ids_of(&case["ids"]);
        assert_eq!(
            captioner.tokenizer().decode(&ids),
            case["text"].as_str().unwrap(),
            "{ids:?}"
        );
    }
}

#[test]
fn greedy_generation_matches_transformers_generate() {
    let (captioner, manifest) = (captioner(), manifest());
    let settings = settings(&manifest, false);
    for name in IMAGES {
        let entry = &manifest["images"][name];
        let pixels = captioner.pixel_values(&image(name)).unwrap();
        let embeds = captioner.vision_embeds(&pixels).unwrap();
        let mut unused = SeededDraws::new(0);
        let ids = captioner
            .generate_ids(&embeds, &settings, &mut unused)
            .unwrap();
        assert_eq!(ids, ids_of(&entry["greedy_ids"]), "{name}");
        let caption = captioner.text_of(&ids, &settings.prompt);
        assert_eq!(caption, entry["greedy_caption"].as_str().unwrap(), "{name}");
        println!("{name}: greedy {caption:?}");
    }
}

#[test]
fn sampled_generation_matches_the_reference_draw_for_draw() {
    let (captioner, manifest) = (captioner(), manifest());
    let settings = settings(&manifest, true);
    for name in IMAGES {
        let entry = &manifest["images"][name];
        let draws: Vec<f64> = entry["draws"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_f64().unwrap())
            .collect();
        let pixels = captioner.pixel_values(&image(name)).unwrap();
        let embeds = captioner.vision_embeds(&pixels).unwrap();
        let ids = captioner
            .generate_ids(&embeds, &settings, &mut draws.clone().into_iter())
            .unwrap();
        assert_eq!(ids, ids_of(&entry["sampled_ids"]), "{name}");
        let caption = captioner.text_of(&ids, &settings.prompt);
        assert_eq!(
            caption,
            entry["sampled_caption"].as_str().unwrap(),
            "{name}"
        );
        println!("{name}: sampled {caption:?}");
        let mis_wired = [
            (
                "top-p skipped",
                CaptionSettings {
                    top_p: 1.0,
                    ..settings.clone()
                },
            ),
            (
                "no repetition penalty",
                CaptionSettings {
                    repetition_penalty: 1.0,
                    ..settings.clone()
                },
            ),
        ];
        for (what, wrong_settings) in mis_wired {
            let wrong = captioner
                .generate_ids(&embeds, &wrong_settings, &mut draws.clone().into_iter())
                .unwrap();
            let first = wrong.iter().zip(&ids).position(|(a, b)| a != b);
            println!("{name}: mis-wired ({what}) first differs at id {first:?}");
            assert!(first.is_some(), "{name}: mis-wired ({what}) must differ");
        }
    }
}

#[test]
fn a_caption_from_a_seed_is_repeatable_and_in_the_forms_result_shape() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Captioner>();
    let captioner = captioner();
    let settings =
        CaptionSettings::horde(&serde_json::json!({"min_length": 5, "max_length": 12}), 7).unwrap();
    assert_eq!(
        (settings.min_length, settings.max_length, settings.top_p),
        (5, 12, 0.9)
    );
    let first = captioner.caption(&image("lake"), &settings).unwrap();
    assert_eq!(first, captioner.caption(&image("lake"), &settings).unwrap());
    assert!(!first.is_empty());
    assert_eq!(
        caption_result(&first),
        serde_json::json!({ "caption": first })
    );
    let too_long = CaptionSettings {
        max_length: 65,
        ..settings
    };
    let err = captioner
        .caption(&image("lake"), &too_long)
        .unwrap_err()
        .to_string();
    assert!(err.contains("max_length"), "{err}");
    let defaults = CaptionSettings::horde(&serde_json::json!({}), 0).unwrap();
    assert_eq!((defaults.min_length, defaults.max_length), (20, 50));
    let bad = CaptionSettings::horde(&serde_json::json!({"min_length": "x"}), 0).unwrap_err();
    assert!(bad.to_string().contains("min_length"), "{bad}");
}

#[test]
fn above_the_training_size_the_interpolated_positions_match_transformers() {
    let reference = reference();
    let path = fixtures().join("model");
    let captioner = Captioner::load_at(&path, &Device::Cpu, Some(96)).unwrap();
    for name in IMAGES {
        let pixels = captioner.pixel_values(&image(name)).unwrap();
        let expected_pixels = &reference[&format!("{name}.pixel_values_96")];
        assert!(
            max_diff(&pixels, expected_pixels) < PIXEL_TOLERANCE,
            "{name}"
        );
        let expected = &reference[&format!("{name}.vision_embeds_96")];
        let diff = max_diff(&captioner.vision_embeds(&pixels).unwrap(), expected);
        println!("{name}: 96² vision embeds max diff {diff:e} (tolerance {EMBED_TOLERANCE:e})");
        assert!(diff < EMBED_TOLERANCE, "{name}: {diff}");
    }
    let err = Captioner::load_at(&path, &Device::Cpu, Some(100))
        .err()
        .unwrap();
    assert!(err.to_string().contains("image_size"), "{err}");
}
