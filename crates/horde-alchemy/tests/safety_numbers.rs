//! The safety checker against diffusers: the tiny random `StableDiffusionSafetyChecker` of
//! `tools/alchemy-fixtures/safety.py` (the CompVis checkpoint's layout, a narrow two-layer ViT-L/14
//! vision tower), loaded from its `model.safetensors`, on two real photographs.
//!
//! Its thresholds are random draws placed so that diffusers flags the flower and not the lake,
//! and the flower's one bad concept is over its threshold only by the 0.01 its special-care hit
//! adds: the verdicts here run the checker's real thresholds logic. Tolerances: the projected
//! embedding and the cosines within 1e-5 of diffusers'; the rounded scores, the hits and the
//! verdicts equal. Without the special-care adjustment (a mis-wired loop) the flower passes.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use horde_alchemy::safety::{verdict_with, SafetyChecker};

const TOLERANCE: f32 = 1e-5;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/safety")
}

fn image(name: &str) -> image::RgbImage {
    image::open(fixtures().join(format!("{name}.png")))
        .unwrap()
        .to_rgb8()
}

fn expected() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join("expected.safetensors"), &Device::Cpu).unwrap()
}

fn verdicts() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("verdicts.json")).unwrap())
        .unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn floats(value: &serde_json::Value) -> Vec<f32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect()
}

fn indices(value: &serde_json::Value) -> Vec<usize> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect()
}

#[test]
fn embeddings_and_cosines_match_diffusers() {
    let checker = SafetyChecker::load(&fixtures(), &Device::Cpu).unwrap();
    let expected = expected();
    for name in ["lake", "flower"] {
        let embeds = checker
            .image_embeds(&image(name))
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let want = expected[&format!("{name}.image_embeds")]
            .to_vec1::<f32>()
            .unwrap();
        let embed_diff = max_diff(&embeds, &want);
        let cosines = checker.cosines(&image(name)).unwrap();
        let special = max_diff(
            &cosines.special,
            &expected[&format!("{name}.special_cos")]
                .to_vec1::<f32>()
                .unwrap(),
        );
        let concept = max_diff(
            &cosines.concept,
            &expected[&format!("{name}.concept_cos")]
                .to_vec1::<f32>()
                .unwrap(),
        );
        println!("{name}: image_embeds {embed_diff:e}, special cosines {special:e}, concept cosines {concept:e} (tolerance {TOLERANCE:e})");
        assert!(embed_diff < TOLERANCE && special < TOLERANCE && concept < TOLERANCE);
    }
}

#[test]
fn verdicts_and_scores_equal_diffusers() {
    let checker = SafetyChecker::load(&fixtures(), &Device::Cpu).unwrap();
    let verdicts = verdicts();
    for name in ["lake", "flower"] {
        let got = checker.check(&image(name)).unwrap();
        let want = &verdicts[name];
        assert_eq!(
            got.nsfw,
            want["has_nsfw_concepts"].as_bool().unwrap(),
            "{name}: verdict"
        );
        assert_eq!(
            got.special_scores,
            floats(&want["special_scores"]),
            "{name}: special scores"
        );
        assert_eq!(
            got.concept_scores,
            floats(&want["concept_scores"]),
            "{name}: concept scores"
        );
        assert_eq!(
            got.bad_concepts,
            indices(&want["bad_concepts"]),
            "{name}: bad concepts"
        );
        println!(
            "{name}: nsfw {} special care {:?} bad concepts {:?}",
            got.nsfw, got.special_care, got.bad_concepts
        );
    }
}

#[test]
fn the_real_thresholds_flag_the_flower_and_pass_the_lake() {
    let checker = SafetyChecker::load(&fixtures(), &Device::Cpu).unwrap();
    let flower = checker.check(&image("flower")).unwrap();
    let lake = checker.check(&image("lake")).unwrap();
    assert!(
        flower.nsfw,
        "the flower is over a concept threshold: {flower:?}"
    );
    assert_eq!(
        flower.special_care,
        vec![0],
        "the flower's special-care hit"
    );
    assert!(!lake.nsfw, "the lake is under every threshold: {lake:?}");
    assert!(lake.special_care.is_empty() && lake.bad_concepts.is_empty());
}

#[test]
fn a_loop_without_the_special_care_adjustment_misses_the_flower() {
    let checker = SafetyChecker::load(&fixtures(), &Device::Cpu).unwrap();
    let cosines = checker.cosines(&image("flower")).unwrap();
    let (special, concept) = checker.thresholds();
    let miswired = verdict_with(&cosines, special, concept, 0.0);
    println!(
        "without the 0.01 adjustment: nsfw {} bad concepts {:?}",
        miswired.nsfw, miswired.bad_concepts
    );
    assert!(
        !miswired.nsfw,
        "the fixture's flagged concept must depend on the adjustment"
    );
    assert!(checker.verdict(&cosines).nsfw);
}
