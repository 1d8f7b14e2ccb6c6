//! CLIP against transformers: the tiny random `CLIPModel` of `tools/alchemy-fixtures/clip.py`
//! (ViT-L/14's layout and geometry, narrow and two layers deep), loaded from its transformers
//! `model.safetensors` and `config.json`, on two real photographs.
//!
//! Tolerances: the preprocessed 8-bit image must equal PIL's exactly (0 levels); the normalised
//! embeddings within 1e-5 of transformers' (float32 on both sides; measured max differences are
//! printed), `logits_per_image` within 1e-4 (times `logit_scale.exp()`), and every term of the
//! horde's lists must tokenize to OpenAI's tokenizer's ids. The mis-wired variants (CLIP's
//! normalisation replaced, a float bicubic instead of PIL's, the text read at the padding instead
//! of its end token) fail these numbers: `src/clip/tests.rs`.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use horde_alchemy::clip::{tokenize, Clip};
use horde_alchemy::interrogate::TermLists;

const EMBED_TOLERANCE: f32 = 1e-5;
const LOGIT_TOLERANCE: f32 = 1e-4;
const IMAGES: [&str; 2] = ["lake", "flower"];
const PROMPTS: [&str; 4] = [
    "a photograph of a lake at dawn",
    "A FLOWER, macro photo &amp; bokeh",
    "Vincent van Gogh",
    "",
];

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip")
}

fn expected() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join("expected.safetensors"), &Device::Cpu).unwrap()
}

fn prompts() -> Vec<String> {
    let mut prompts: Vec<String> = PROMPTS.iter().map(|p| p.to_string()).collect();
    prompts[3] = format!("{} long", vec!["very"; 90].join(" "));
    prompts
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(a.len(), b.len(), "shapes differ");
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn image(name: &str) -> image::RgbImage {
    image::open(fixtures().join(format!("{name}.png")))
        .unwrap()
        .to_rgb8()
}

#[test]
fn preprocessing_matches_pil_to_the_level() {
    let clip = Clip::load(&fixtures(), &Device::Cpu).unwrap();
    let expected = expected();
    for name in IMAGES {
        let cropped = clip.preprocess().crop_image(&image(name)).unwrap();
        let want = expected[&format!("{name}.pixel_bytes")]
            .flatten_all()
            .unwrap()
            .to_vec1::<u8>()
            .unwrap();
        let side = 224usize;
        let mut differing = 0;
        for (index, pixel) in cropped.pixels().enumerate() {
            for channel in 0..3 {
                if pixel[channel] != want[channel * side * side + index] {
                    differing += 1;
                }
            }
        }
        println!(
            "{name}: {differing} of {} levels differ from PIL",
            want.len()
        );
        assert_eq!(
            differing, 0,
            "{name}: the resize or crop differs from CLIPImageProcessorPil"
        );
    }
}

#[test]
fn image_embeds_match_transformers() {
    let clip = Clip::load(&fixtures(), &Device::Cpu).unwrap();
    let expected = expected();
    for name in IMAGES {
        let got = clip.image_embeds(&image(name)).unwrap();
        let diff = max_diff(&got, &expected[&format!("{name}.image_embeds")]);
        println!("{name}: image_embeds max |diff| {diff:e} (tolerance {EMBED_TOLERANCE:e})");
        assert!(
            diff < EMBED_TOLERANCE,
            "{name}: image_embeds differ by {diff}"
        );
    }
}

#[test]
fn text_embeds_and_logits_match_transformers() {
    let clip = Clip::load(&fixtures(), &Device::Cpu).unwrap();
    let expected = expected();
    let prompts = prompts();
    let texts: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let ids = expected["prompts.ids"].to_vec2::<i32>().unwrap();
    for (text, row) in texts.iter().zip(&ids) {
        let got = tokenize(text);
        let want: Vec<u32> = row[..got.len().min(77)].iter().map(|&t| t as u32).collect();
        assert_eq!(got, want, "tokens of {text:?}");
        assert!(
            row[got.len()..].iter().all(|&t| t == 0),
            "{text:?}: more tokens in the reference"
        );
    }
    let got = clip.text_embeds(&texts).unwrap();
    let diff = max_diff(&got, &expected["prompts.text_embeds"]);
    println!("text_embeds max |diff| {diff:e} (tolerance {EMBED_TOLERANCE:e})");
    assert!(diff < EMBED_TOLERANCE, "text_embeds differ by {diff}");
    for name in IMAGES {
        let logits = clip.logits_per_image(&image(name), &texts).unwrap();
        let diff = max_diff(&logits, &expected[&format!("{name}.logits_per_image")]);
        println!("{name}: logits_per_image max |diff| {diff:e} (tolerance {LOGIT_TOLERANCE:e})");
        assert!(diff < LOGIT_TOLERANCE, "{name}: logits differ by {diff}");
    }
}

#[test]
fn every_horde_term_tokenizes_as_openai_clip_does() {
    let expected = expected();
    let flat = expected["terms.tokens"].to_vec1::<i32>().unwrap();
    let lengths = expected["terms.lengths"].to_vec1::<i32>().unwrap();
    let lists = TermLists::horde();
    let terms: Vec<&String> = lists.lists().iter().flat_map(|(_, terms)| terms).collect();
    assert_eq!(
        terms.len(),
        lengths.len(),
        "term count differs from the fixture's"
    );
    let mut offset = 0usize;
    let mut mismatches = Vec::new();
    for (term, &length) in terms.iter().zip(&lengths) {
        let want: Vec<u32> = flat[offset..offset + length as usize]
            .iter()
            .map(|&t| t as u32)
            .collect();
        offset += length as usize;
        if tokenize(term) != want {
            mismatches.push(term.as_str());
        }
    }
    println!(
        "{} of {} terms tokenize differently: {:?}",
        mismatches.len(),
        terms.len(),
        mismatches
    );
    assert!(mismatches.is_empty());
    let clip = Clip::load(&fixtures(), &Device::Cpu).unwrap();
    let head: Vec<&str> = lists.lists()[0].1[..16]
        .iter()
        .map(String::as_str)
        .collect();
    let diff = max_diff(
        &clip.text_embeds(&head).unwrap(),
        &expected["terms.text_embeds_head"],
    );
    assert!(
        diff < EMBED_TOLERANCE,
        "the first tags' text_embeds differ by {diff}"
    );
}
