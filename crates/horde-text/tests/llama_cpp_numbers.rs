//! The engine against llama.cpp on tiny random GGUFs — llama (F16 and Q8_0; and, 256 wide,
//! Q4_K_M and Q5_K_M as llama.cpp's own quantiser writes them) and qwen2 (F16; q/k/v biases, NeoX
//! RoPE) — written and run through llama.cpp by tools/text-fixtures (README.md there): the
//! prompt's tokens, the logits after the prompt and after each greedy token, and the greedy
//! tokens themselves.
//!
//! The models have grouped-query attention (4 heads with 2 KV heads; 8 with 4 for the K-quants),
//! every tensor random, and tiny embeddings so that the RMS norm's epsilon matters. Two
//! mis-wired engines must fail the same comparison: decoding each new token one position too far
//! (RoPE off by one against the cache), and a norm epsilon of 1e-6 instead of the file's 1e-5.

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::Device;
use horde_text::sampling::SamplerParams;
use horde_text::TextModel;
use serde::Deserialize;

/// Largest allowed |logit − llama.cpp's logit| (the logits reach ±8). llama.cpp rounds the
/// activations that meet F16 weights to F16 and keeps its KV cache in F16, where candle
/// multiplies in F32 (measured: 9.2e-3 llama, 4.4e-3 qwen2). With quantised weights both engines
/// round the activations to 8 bits (Q8_0 blocks of 32, Q8_K of 256), and the two still differ
/// (measured: Q8_0 0.134, Q4_K_M 0.230, Q5_K_M 0.258; without candle's activation rounding,
/// `CANDLE_DEQUANTIZE_ALL=1`, the Q8_0 difference doubles). The fixture tool picks models whose
/// greedy steps all have their top two logits well apart (≥ 0.5 for the llama pair, twice its
/// Q8_0 tolerance; ≥ 0.1 for qwen2; ≥ 0.397 for the K-quants, above their measured differences
/// but not twice them), so the greedy comparison does not hinge on rounding.
const TOLERANCE_F16: f32 = 2e-2;
const TOLERANCE_Q8_0: f32 = 0.25;
const TOLERANCE_K_QUANTS: f32 = 0.3;

#[derive(Deserialize)]
struct Reference {
    prompt: String,
    prompt_tokens: Vec<u32>,
    greedy_tokens: Vec<u32>,
    greedy_text: String,
    /// `logits[0]` after the prompt, `logits[i]` after greedy token `i`.
    logits: Vec<Vec<f32>>,
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn reference(kind: &str) -> Reference {
    let path = fixtures().join(format!("tiny-{kind}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn argmax(v: &[f32]) -> u32 {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0 as u32
}

/// Runs the prompt and then llama.cpp's greedy tokens; returns the largest logit difference and
/// our own greedy choices. `step_offset` shifts each decoded token's position (0 when wired
/// right).
fn compare(model: &mut TextModel, r: &Reference, step_offset: usize) -> (f32, Vec<u32>) {
    let mut logits = model.forward(&r.prompt_tokens, 0).unwrap();
    let mut worst = max_diff(&logits, &r.logits[0]);
    let mut ours = vec![argmax(&logits)];
    for i in 1..r.greedy_tokens.len() {
        // Feed llama.cpp's previous token, so one wrong choice does not derail the rest; it
        // sits at position prompt + i − 1.
        let pos = r.prompt_tokens.len() + i - 1;
        logits = model
            .forward(&[r.greedy_tokens[i - 1]], pos + step_offset)
            .unwrap();
        worst = worst.max(max_diff(&logits, &r.logits[i]));
        ours.push(argmax(&logits));
    }
    (worst, ours)
}

fn check(kind: &str, tolerance: f32) {
    let r = reference(kind);
    let path = fixtures().join(format!("tiny-{kind}.gguf"));
    let mut model = TextModel::load(&path, &Device::Cpu).unwrap();
    assert_eq!(
        model.tokenizer().encode(&r.prompt),
        r.prompt_tokens,
        "{kind}: tokens of {:?}",
        r.prompt
    );
    let (worst, ours) = compare(&mut model, &r, 0);
    println!("{kind}: max |logit difference| {worst:.2e} (tolerance {tolerance})");
    assert!(
        worst <= tolerance,
        "{kind}: logits differ from llama.cpp's by {worst}"
    );
    assert_eq!(ours, r.greedy_tokens, "{kind}: greedy tokens");
    assert_eq!(model.tokenizer().decode(&r.greedy_tokens), r.greedy_text);

    // The whole generation loop (tokenizer, sampler at temperature 0, cache) gives the same.
    let greedy = SamplerParams {
        temperature: 0.0,
        ..Default::default()
    };
    let eos = model.tokenizer().eos();
    let expected: Vec<u32> = r
        .greedy_tokens
        .iter()
        .copied()
        .take_while(|&t| Some(t) != eos)
        .collect();
    let mut streamed = String::new();
    let generation = model
        .generate(&r.prompt, &greedy, r.greedy_tokens.len(), &[], |s| {
            streamed.push_str(s)
        })
        .unwrap();
    assert_eq!(generation.tokens, expected, "{kind}: generate");
    assert_eq!(generation.text, model.tokenizer().decode(&expected));
    assert_eq!(streamed, generation.text, "{kind}: the streamed pieces");
    assert!(generation.tokens_per_sec > 0.0);
}

#[test]
fn llama_f16_matches_llama_cpp() {
    check("llama-f16", TOLERANCE_F16);
}

#[test]
fn llama_q8_0_matches_llama_cpp() {
    check("llama-q8_0", TOLERANCE_Q8_0);
}

#[test]
fn llama_q4_k_m_matches_llama_cpp() {
    check("llama256-q4_k_m", TOLERANCE_K_QUANTS);
}

#[test]
fn llama_q5_k_m_matches_llama_cpp() {
    check("llama256-q5_k_m", TOLERANCE_K_QUANTS);
}

#[test]
fn qwen2_f16_matches_llama_cpp() {
    check("qwen2-f16", TOLERANCE_F16);
}

#[test]
fn rope_off_by_one_fails_the_comparison() {
    for (kind, tolerance) in [
        ("llama-f16", TOLERANCE_F16),
        ("llama-q8_0", TOLERANCE_Q8_0),
        ("qwen2-f16", TOLERANCE_F16),
        ("llama256-q4_k_m", TOLERANCE_K_QUANTS),
    ] {
        let r = reference(kind);
        let mut model =
            TextModel::load(&fixtures().join(format!("tiny-{kind}.gguf")), &Device::Cpu).unwrap();
        let (worst, _) = compare(&mut model, &r, 1);
        println!("{kind} with each decoded token one position late: max difference {worst:.2e}");
        assert!(
            worst > 4.0 * tolerance,
            "{kind}: an off-by-one position went unnoticed ({worst})"
        );
    }
}

/// A copy of the GGUF `kind` with `llama.attention.layer_norm_rms_epsilon` set to `eps`.
fn with_eps(kind: &str, eps: f32, dir: &Path) -> PathBuf {
    let src = fixtures().join(format!("tiny-{kind}.gguf"));
    let mut file = std::fs::File::open(&src).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let tensors: Vec<_> = content
        .tensor_infos
        .keys()
        .map(|name| {
            (
                name.clone(),
                content.tensor(&mut file, name, &Device::Cpu).unwrap(),
            )
        })
        .collect();
    let mut metadata = content.metadata.clone();
    let key = "llama.attention.layer_norm_rms_epsilon";
    assert!(metadata.contains_key(key));
    metadata.insert(key.into(), Value::F32(eps));
    let out = dir.join(format!("eps-{kind}.gguf"));
    let mut w = std::fs::File::create(&out).unwrap();
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<_> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    gguf_file::write(&mut w, &md, &ts).unwrap();
    out
}

#[test]
fn a_wrong_norm_epsilon_fails_the_comparison() {
    let dir = tempfile::tempdir().unwrap();
    for (kind, tolerance) in [("llama-f16", TOLERANCE_F16), ("llama-q8_0", TOLERANCE_Q8_0)] {
        let r = reference(kind);
        // The rewritten file itself is faithful: with the right epsilon it still matches.
        let mut same = TextModel::load(&with_eps(kind, 1e-5, dir.path()), &Device::Cpu).unwrap();
        assert!(compare(&mut same, &r, 0).0 <= tolerance);
        let mut wrong = TextModel::load(&with_eps(kind, 1e-6, dir.path()), &Device::Cpu).unwrap();
        let (worst, _) = compare(&mut wrong, &r, 0);
        println!("{kind} with epsilon 1e-6: max difference {worst:.2e}");
        assert!(
            worst > 4.0 * tolerance,
            "{kind}: a wrong epsilon went unnoticed ({worst})"
        );
    }
}
