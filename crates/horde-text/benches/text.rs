//! The built-in text engine's speed beside llama.cpp's (issue 27, point 6): prompt processing
//! (the prompt's tokens in one forward from an empty cache) and generation (single-token
//! forwards, each feeding back the greedy token of the one before) with [`TextModel`], on the
//! random "small" llama that `tools/engine-bench/text_model.py` writes (F16, and Q8_0 / Q4_K_M
//! quantised by llama.cpp's own quantiser). `tools/engine-bench/text_bench.py` times the same
//! files, prompt tokens and counts through llama-cpp-python; BENCHMARKS.md has both.
//!
//! `RAYON_NUM_THREADS=2 cargo bench -p horde-text --bench text -- [--dir DIR]
//! [--types q8_0,q4_k_m,f16] [--prompt 128] [--generate 64] [--repeats 3]`
//!
//! The forwards go straight to [`TextModel::forward`] with token ids, so the tokenizer and the
//! samplers (a few microseconds a token) are not in the figures, as on the llama.cpp side.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::Device;
use horde_text::TextModel;

/// After `<unk>`, `<s>`, `</s>` and the 256 byte tokens: the word pieces of the bench vocabulary.
const FIRST_PIECE: u32 = 259;

struct Args {
    dir: PathBuf,
    types: Vec<String>,
    prompt: usize,
    generate: usize,
    repeats: usize,
}

/// The value after `--name`, or `default` (cargo adds its own `--bench`, which is skipped).
fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_string())
}

fn parse_args() -> Args {
    let args: Vec<String> = std::env::args().collect();
    let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
    let number = |name, default| {
        arg(&args, name, default)
            .parse()
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    Args {
        dir: arg(&args, "--dir", &format!("{home}/.cache/horde/text-bench")).into(),
        types: arg(&args, "--types", "q8_0,q4_k_m")
            .split(',')
            .map(str::to_string)
            .collect(),
        prompt: number("--prompt", "128"),
        generate: number("--generate", "64"),
        repeats: number("--repeats", "3"),
    }
}

/// BOS, then word pieces spread over the vocabulary (text_bench.py's `prompt_tokens`).
fn prompt_tokens(n: usize, n_vocab: u32) -> Vec<u32> {
    let spread = |i: u32| FIRST_PIECE + (i * 7919) % (n_vocab - FIRST_PIECE);
    std::iter::once(1)
        .chain((1..n as u32).map(spread))
        .collect()
}

fn argmax(logits: &[f32]) -> u32 {
    let best = logits
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i);
    best.expect("the model returned no logits") as u32
}

/// Seconds of the prompt's forward and of `generate` greedy single-token forwards after it.
fn run_once(model: &mut TextModel, prompt: &[u32], generate: usize) -> (f64, f64) {
    let started = Instant::now();
    let mut logits = model.forward(prompt, 0).expect("prompt forward");
    let prompt_secs = started.elapsed().as_secs_f64();
    let started = Instant::now();
    for step in 0..generate {
        let token = argmax(&logits);
        logits = model
            .forward(&[token], prompt.len() + step)
            .expect("generation forward");
    }
    (prompt_secs, started.elapsed().as_secs_f64())
}

/// One line: the tokens/s of the fastest and of the median run.
fn report(kind: &str, qtype: &str, tokens: usize, secs: &[f64]) {
    let mut rates: Vec<f64> = secs.iter().map(|s| tokens as f64 / s).collect();
    rates.sort_by(f64::total_cmp);
    let mid = rates.len() / 2;
    let median = if rates.len().is_multiple_of(2) {
        (rates[mid - 1] + rates[mid]) / 2.0
    } else {
        rates[mid]
    };
    let best = rates[rates.len() - 1];
    println!(
        "candle    {qtype:7} {kind:3} {tokens:4} tokens: best {best:8.1} tok/s, median {median:8.1} tok/s ({} runs)",
        secs.len()
    );
}

fn main() {
    let args = parse_args();
    println!(
        "horde-text (candle 0.11.1), {} threads",
        candle_core::utils::get_num_threads()
    );
    for qtype in &args.types {
        let path = args.dir.join(format!("bench-{qtype}.gguf"));
        let mut model = TextModel::load(&path, &Device::Cpu)
            .unwrap_or_else(|e| panic!("{e} (write it with tools/engine-bench/text_model.py)"));
        let n_vocab = model.tokenizer().vocabulary().tokens.len() as u32;
        let prompt = prompt_tokens(args.prompt, n_vocab);
        run_once(&mut model, &prompt, args.generate); // warm-up
        let runs: Vec<(f64, f64)> = (0..args.repeats)
            .map(|_| run_once(&mut model, &prompt, args.generate))
            .collect();
        let prompt_secs: Vec<f64> = runs.iter().map(|r| r.0).collect();
        let generate_secs: Vec<f64> = runs.iter().map(|r| r.1).collect();
        report("pp", qtype, args.prompt, &prompt_secs);
        report("tg", qtype, args.generate, &generate_secs);
    }
}
