//! The generation loop on the tiny llama of tests/fixtures (see tools/text-fixtures): stop
//! sequences, seeded sampling, and prompts longer than the context.

use std::path::Path;

use candle_core::Device;
use horde_text::sampling::{RepetitionPenalty, SamplerParams};
use horde_text::{StopReason, TextError, TextModel};

fn model() -> TextModel {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama-f16.gguf");
    TextModel::load(&path, &Device::Cpu).unwrap()
}

const PROMPT: &str = "Hello world, the tiny llama";

fn greedy() -> SamplerParams {
    SamplerParams {
        temperature: 0.0,
        ..Default::default()
    }
}

#[test]
fn a_stop_sequence_ends_the_text_after_it() {
    // llama.cpp's greedy continuation is the bytes CD 01 9C, then "////" and 19 (tokens 208, 4,
    // 159, 50, 50, 50, 50, 28).
    let mut m = model();
    let stops = ["zz".to_string(), "//".to_string()];
    let g = m.generate(PROMPT, &greedy(), 8, &stops, |_| {}).unwrap();
    assert_eq!(g.stop, StopReason::StopSequence("//".into()));
    assert_eq!(g.tokens, vec![208, 4, 159, 50, 50]);
    assert!(
        g.text.ends_with("//") && !g.text.ends_with("///"),
        "{:?}",
        g.text
    );
    let g = m.generate(PROMPT, &greedy(), 8, &[], |_| {}).unwrap();
    assert_eq!((g.stop, g.tokens.len()), (StopReason::Length, 8));
}

#[test]
fn a_seed_reproduces_a_sampled_generation() {
    let mut m = model();
    let params = |seed| SamplerParams {
        temperature: 1.2,
        top_k: 100,
        top_p: 0.95,
        rep_pen: RepetitionPenalty {
            penalty: 1.1,
            range: 64,
            slope: 0.7,
        },
        seed,
        ..Default::default()
    };
    let run = |m: &mut TextModel, seed| {
        m.generate(PROMPT, &params(seed), 24, &[], |_| {})
            .unwrap()
            .tokens
    };
    let a = run(&mut m, 3);
    assert_eq!(a, run(&mut m, 3));
    assert_ne!(a, run(&mut m, 4));
    // Sampling, not greedy: the greedy continuation is not what seed 3 drew.
    let g = m
        .generate(PROMPT, &greedy(), 24, &[], |_| {})
        .unwrap()
        .tokens;
    assert_ne!(a, g);
}

#[test]
fn a_prompt_longer_than_the_context_keeps_its_end() {
    let mut m = model();
    assert_eq!(m.context_length(), 128);
    let long = "the world ".repeat(100);
    let g = m.generate(&long, &greedy(), 16, &[], |_| {}).unwrap();
    assert_eq!(g.prompt_tokens, 128 - 16);
    assert_eq!(g.tokens.len(), 16);
    match m.generate(PROMPT, &greedy(), 128, &[], |_| {}) {
        Err(TextError::TooLong {
            max_length: 128,
            context_length: 128,
        }) => {}
        other => panic!("{other:?}"),
    }
}
