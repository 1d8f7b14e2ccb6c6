//! The byte-level BPE tokenizer against llama.cpp's on vocabulary-only GGUFs written by
//! tools/text-fixtures, one per pre-tokenizer ("llama-bpe" for Llama 3, "qwen2"): the tokens of a
//! few texts (words that are whole tokens, merges, digits, contractions, non-ASCII, tabs and line
//! breaks), and the text back. (The SentencePiece tokenizer is checked against llama.cpp in
//! llama_cpp_numbers.rs.)

use std::path::{Path, PathBuf};

use horde_text::gguf::GgufFile;
use horde_text::tokenizer::Tokenizer;
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    text: String,
    tokens: Vec<u32>,
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn load(pre: &str) -> (Tokenizer, Vec<Case>) {
    let gguf = GgufFile::open(&fixture(&format!("bpe-{pre}.gguf"))).unwrap();
    let tokenizer = Tokenizer::new(gguf.vocabulary().unwrap()).unwrap();
    let json = std::fs::read_to_string(fixture(&format!("bpe-{pre}.json"))).unwrap();
    (tokenizer, serde_json::from_str(&json).unwrap())
}

#[test]
fn bpe_tokens_match_llama_cpp() {
    for pre in ["llama-bpe", "qwen2"] {
        let (tokenizer, cases) = load(pre);
        for case in &cases {
            assert_eq!(
                tokenizer.encode(&case.text),
                case.tokens,
                "{pre}: {:?}",
                case.text
            );
            assert_eq!(tokenizer.decode(&case.tokens), case.text, "{pre}");
        }
    }
}

#[test]
fn the_other_pre_tokenizer_fails_the_comparison() {
    // Qwen2 splits digits one by one and merges every word; Llama 3 takes up to three digits
    // and whole-token words. Tokenizing the Llama 3 cases with Qwen2's rules must differ.
    let (qwen2, _) = load("qwen2");
    let (_, llama3_cases) = load("llama-bpe");
    let differing = llama3_cases
        .iter()
        .filter(|c| qwen2.encode(&c.text) != c.tokens)
        .count();
    assert!(differing >= 2, "only {differing} cases differ");
}
