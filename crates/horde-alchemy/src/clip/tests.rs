//! Mis-wired variants of the CLIP path, each of which must fail the numbers that
//! `tests/clip_numbers.rs` holds the real one to (1e-5 on normalised embeddings, PIL's pixels to
//! the level): they show those tests can tell.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, IndexOp, Module, Tensor};

use super::preprocess::{center_crop, shortest_edge_size, Preprocess};
use super::{l2_normalise, tokenize, Clip};

const EMBED_TOLERANCE: f32 = 1e-5;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip")
}

fn expected() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join("expected.safetensors"), &Device::Cpu).unwrap()
}

fn flower() -> image::RgbImage {
    image::open(fixtures().join("flower.png"))
        .unwrap()
        .to_rgb8()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn imagenet_normalisation_instead_of_clips_fails() {
    let clip = Clip::load(&fixtures(), &Device::Cpu).unwrap();
    let imagenet = Preprocess {
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
        ..Preprocess::clip()
    };
    let pixels = imagenet.pixel_values(&flower(), &Device::Cpu).unwrap();
    let embeds = clip
        .image_embeds_from_pixels(&pixels)
        .unwrap()
        .i(0)
        .unwrap();
    let diff = max_diff(&embeds, &expected()["flower.image_embeds"]);
    println!("ImageNet mean/std: image_embeds max |diff| {diff:e} (tolerance {EMBED_TOLERANCE:e})");
    assert!(diff > 100.0 * EMBED_TOLERANCE);
}

#[test]
fn a_float_bicubic_instead_of_pils_fails() {
    let image = flower();
    let (width, height) = shortest_edge_size(image.width(), image.height(), 224);
    let resized = image::imageops::resize(
        &image,
        width,
        height,
        image::imageops::FilterType::CatmullRom,
    );
    let cropped = center_crop(&resized, 224);
    let want = expected()["flower.pixel_bytes"]
        .flatten_all()
        .unwrap()
        .to_vec1::<u8>()
        .unwrap();
    let side = 224 * 224;
    let (mut differing, mut worst) = (0, 0u8);
    for (index, pixel) in cropped.pixels().enumerate() {
        for channel in 0..3 {
            let d = pixel[channel].abs_diff(want[channel * side + index]);
            differing += usize::from(d > 0);
            worst = worst.max(d);
        }
    }
    println!(
        "image's CatmullRom: {differing} of {} levels differ from PIL, by up to {worst}",
        want.len()
    );
    assert!(differing > 0);
}

#[test]
fn text_read_at_the_padding_instead_of_its_end_token_fails() {
    let clip = Clip::load(&fixtures(), &Device::Cpu).unwrap();
    let tokens = tokenize("a photograph of a lake at dawn");
    let mut ids = tokens.clone();
    ids.resize(77, 0);
    let ids = Tensor::from_vec(ids, (1, 77), &Device::Cpu).unwrap();
    let pooled = clip.pooled_text(&ids, &[76]).unwrap();
    let embeds = l2_normalise(&clip.text_projection.forward(&pooled).unwrap()).unwrap();
    let want = expected()["prompts.text_embeds"].i(0).unwrap();
    let diff = max_diff(&embeds, &want);
    println!(
        "pooled at position 76: text_embeds max |diff| {diff:e} (tolerance {EMBED_TOLERANCE:e})"
    );
    assert!(diff > 100.0 * EMBED_TOLERANCE);
    let right = clip.pooled_text(&ids, &[tokens.len() - 1]).unwrap();
    let right = l2_normalise(&clip.text_projection.forward(&right).unwrap()).unwrap();
    assert!(
        max_diff(&right, &want) < EMBED_TOLERANCE,
        "the end token, padded to 77, is the reference"
    );
}

#[test]
fn text_is_cleaned_as_openais_basic_and_whitespace_clean() {
    use super::clean_text;
    assert_eq!(clean_text("  a\t\nlake &amp; a  tree "), "a lake & a tree");
    // unescaped twice, as `html.unescape(html.unescape(text))`
    assert_eq!(clean_text("fish &amp;amp; chips"), "fish & chips");
    assert_eq!(
        clean_text("&#233;t&#xE9; &lt;3 &bogus; & x"),
        "été <3 &bogus; & x"
    );
}

#[test]
fn a_config_the_towers_cannot_run_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(
        &path,
        r#"{"projection_dim": 12, "vision_config": {"hidden_act": "gelu"}}"#,
    )
    .unwrap();
    let error = super::ClipFileConfig::read(&path).unwrap_err().to_string();
    assert!(
        error.contains("config.json") && error.contains("vision_config.hidden_act"),
        "{error}"
    );
    std::fs::write(
        &path,
        r#"{"text_config": {"hidden_size": 10, "num_attention_heads": 4}}"#,
    )
    .unwrap();
    let error = super::ClipFileConfig::read(&path).unwrap_err().to_string();
    assert!(error.contains("text_config.num_attention_heads"), "{error}");
    let missing = Clip::load(dir.path(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(missing.contains("config.json"), "{missing}");
}

#[test]
fn batches_sorted_by_length_keep_the_texts_order() {
    let clip = Clip::load(&fixtures(), &Device::Cpu).unwrap();
    let texts = ["a much longer text about a lake at dawn", "tree", "a lake"];
    let together = clip.text_embeds(&texts).unwrap();
    for (row, text) in texts.iter().enumerate() {
        let alone = clip.text_embeds(&[text]).unwrap().i(0).unwrap();
        assert!(
            max_diff(&together.i(row).unwrap(), &alone) < 1e-6,
            "row {row} moved"
        );
    }
}
