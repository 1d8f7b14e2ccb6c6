//! Textual-inversion embeddings pinned to diffusers' `load_textual_inversion`: on the text
//! encoders of the tiny random checkpoints (SD 1.x, SD 2.x, SDXL's two) with tiny random
//! embeddings in A1111's `.pt`, a pickled `emb_params` and `.safetensors` (`emb_params`;
//! SDXL's `clip_l`/`clip_g`), and on encoders of CLIP-L's and OpenCLIP-H's widths with the
//! real embeddings of `../shared/reference/image/embeddings/`, the engine's conditioning of a
//! prompt naming them (`embedding:NAME`) gives diffusers' numbers within the manifest's
//! tolerance: its token ids (the vectors' slots where diffusers puts the tokens it adds), the
//! context at strength 1 and at `(embedding:NAME:0.8)` (A1111's weighting, applied to
//! diffusers' output by the fixture tool), and SDXL's pooled output. The fixtures are written by
//! `tools/ti-fixtures/generate.sh`, which runs the ignored test below to write the encoders.
//!
//! Mis-wired on purpose, the same prompts miss by far more than the tolerance: the vectors one
//! slot off, and SDXL's `clip_l` and `clip_g` vectors swapped.

mod common;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use common::{clip_prefixes, max_abs_diff, Fixtures, Tensors, CHECKPOINT_SEED};
use horde_diffusion::parts::{TextConditioner, TextTransformer, WeightedTokens};
use horde_diffusion::tiny::{random_tensors, record_random, tiny_config, TinyArch};
use horde_diffusion::{Embedding, ModelConfig};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const FIXTURES: Fixtures = Fixtures {
    folder: "ti",
    tool: "tools/ti-fixtures",
};
/// How far beyond the tolerance a mis-wired engine must land.
const MISWIRED_FACTOR: f64 = 100.0;
/// The first token id past CLIP's vocabulary: an embedding's vectors.
const FIRST_EMBEDDING_ID: u32 = 49408;
const MODELS: [&str; 5] = ["sd15", "sd2", "sdxl", "wide_l", "wide_h"];

/// The real embeddings, beside the project.
fn reference_embeddings() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/reference/image/embeddings")
}

/// The models the fixtures use: the tiny checkpoints' and two of the real encoders' widths
/// (CLIP-L's 768 and OpenCLIP-H's 1024, one layer to condition on, the tiny ones' narrow MLP).
fn model_config(name: &str) -> ModelConfig {
    match name {
        "sd15" => tiny_config(TinyArch::Sd15),
        "sd2" => tiny_config(TinyArch::Sd2),
        "sdxl" => tiny_config(TinyArch::Sdxl),
        "wide_l" => {
            let mut config = tiny_config(TinyArch::Sd15);
            let c = &mut config.text_encoders[0];
            (c.width, c.layers) = (768, 1);
            config
        }
        "wide_h" => {
            let mut config = tiny_config(TinyArch::Sd2);
            let c = &mut config.text_encoders[0];
            (c.width, c.layers, c.projection_dim) = (1024, 2, Some(1024));
            config
        }
        other => panic!("unknown model {other}"),
    }
}

/// The checkpoint's tensors, from the seed: a whole tiny checkpoint, or the wide encoder alone.
fn checkpoint(name: &str) -> Tensors {
    let config = model_config(name);
    if !name.starts_with("wide") {
        return random_tensors(&config, CHECKPOINT_SEED).unwrap();
    }
    record_random(CHECKPOINT_SEED, |vb| {
        for (c, prefix) in config
            .text_encoders
            .iter()
            .zip(clip_prefixes(config.family))
        {
            TextTransformer::new(c, vb.pp(prefix.trim_end_matches('.')))?;
        }
        Ok(())
    })
    .unwrap()
}

fn conditioner(config: &ModelConfig, tensors: &Tensors) -> TextConditioner {
    let vb = VarBuilder::from_tensors(tensors.clone(), DType::F32, &Device::Cpu);
    common::text_conditioner(config, &vb)
}

/// Writes the checkpoints the fixture tool feeds to diffusers into
/// `$HORDE_TI_FIXTURES_CHECKPOINTS` (`tools/ti-fixtures/generate.sh` runs it).
#[test]
#[ignore = "writes the checkpoints for tools/ti-fixtures; run by its generate.sh"]
fn write_encoders_for_the_fixture_tool() {
    let dir = common::tool_dir("HORDE_TI_FIXTURES_CHECKPOINTS");
    for name in MODELS {
        let path = dir.join(format!("{name}.safetensors"));
        candle_core::safetensors::save(&checkpoint(name), &path).unwrap();
        println!("wrote {}", path.display());
    }
}

fn embedding(name: &str) -> Arc<Embedding> {
    let file = FIXTURES.manifest()["embeddings"][name]["file"]
        .as_str()
        .unwrap()
        .to_string();
    let dir = if name.starts_with("tiny_") {
        FIXTURES.dir()
    } else {
        reference_embeddings()
    };
    Arc::new(Embedding::open(&dir.join(file), name).unwrap())
}

/// One case: its conditioner, embeddings, prompts and diffusers' outputs.
struct Case {
    name: String,
    text: TextConditioner,
    embeddings: Vec<Arc<Embedding>>,
    prompt: String,
    prompt_weighted: String,
    reference: Tensors,
}

/// Every case of the manifest; those of the real embeddings only where they are (beside the
/// project, `../shared`), with a note when not.
fn cases() -> Vec<Case> {
    let manifest = FIXTURES.manifest();
    let mut built: HashMap<String, (ModelConfig, Tensors)> = HashMap::new();
    let mut out = Vec::new();
    for (name, case) in manifest["cases"].as_object().unwrap() {
        let names: Vec<&str> = (case["embeddings"].as_array().unwrap().iter())
            .map(|e| e.as_str().unwrap())
            .collect();
        assert!(
            names.iter().all(|n| n.starts_with("tiny_")) || reference_embeddings().is_dir(),
            "{name}: the reference embeddings are missing: {} (../shared/reference beside the \
             checkout, as CI has it)",
            reference_embeddings().display()
        );
        let model = case["model"].as_str().unwrap();
        let (config, tensors) = built.entry(model.to_string()).or_insert_with(|| {
            let tensors = checkpoint(model);
            let recorded = &manifest["checkpoints"][model];
            FIXTURES.check_fingerprint(model, &tensors, recorded, 1e-9);
            (model_config(model), tensors)
        });
        let file = FIXTURES.dir().join(case["file"].as_str().unwrap());
        out.push(Case {
            name: name.clone(),
            text: conditioner(config, tensors),
            embeddings: names.iter().map(|n| embedding(n)).collect(),
            prompt: case["prompt"].as_str().unwrap().into(),
            prompt_weighted: case["prompt_weighted"].as_str().unwrap().into(),
            reference: common::load_tensors(&file),
        });
    }
    out
}

/// The engine's context (as many rows as the reference kept) and pooled output.
fn encode(case: &Case, tokens: &WeightedTokens, embeddings: &[Arc<Embedding>]) -> Tensors {
    let encoded = case
        .text
        .encode_with_embeddings(tokens, embeddings, 1, 1, DType::F32, &Device::Cpu)
        .unwrap();
    let rows = case.reference["context"].dim(1).unwrap();
    let mut out = Tensors::new();
    out.insert(
        "context".into(),
        encoded.context.narrow(1, 0, rows).unwrap(),
    );
    if let Some(pooled) = encoded.pooled {
        out.insert("pooled".into(), pooled);
    }
    out
}

/// The largest difference from the reference's `context` (or `context_weighted`) and pooled.
fn miss(case: &Case, ours: &Tensors, context: &str) -> f64 {
    let mut worst = max_abs_diff(&ours["context"], &case.reference[context]);
    if let Some(pooled) = case.reference.get("pooled") {
        worst = worst.max(max_abs_diff(&ours["pooled"], pooled));
    }
    worst
}

/// diffusers' chunk ids: start, the prompt's ids (its added tokens from 49408 on), end, pads.
fn reference_ids(case: &Case) -> Vec<u32> {
    let ids = case.reference["ids.0"].to_vec1::<i64>().unwrap();
    let end = ids.iter().position(|&i| i == 49407).unwrap();
    ids[1..end].iter().map(|&i| i as u32).collect()
}

#[test]
fn embeddings_condition_as_diffusers_loads_them() {
    let tolerance = FIXTURES.tolerance();
    let cases = cases();
    assert!(cases.len() >= 5, "the tiny cases run everywhere");
    for case in &cases {
        let tokens = WeightedTokens::with_embeddings(&case.prompt, &case.embeddings);
        assert_eq!(tokens.ids, reference_ids(case), "{}: token ids", case.name);
        assert!(tokens.ids.iter().any(|&id| id >= FIRST_EMBEDDING_ID));
        let plain = miss(case, &encode(case, &tokens, &case.embeddings), "context");
        println!("{}: max difference {plain:.2e}", case.name);
        assert!(plain <= tolerance, "{}: {plain} > {tolerance}", case.name);
        // At strength 0.8 (the tiny cases; the real ones' files keep strength 1 only).
        if case.reference.contains_key("context_weighted") {
            let weighted_tokens =
                WeightedTokens::with_embeddings(&case.prompt_weighted, &case.embeddings);
            assert_eq!(weighted_tokens.ids, tokens.ids, "{}", case.name);
            let ours = encode(case, &weighted_tokens, &case.embeddings);
            let weighted = miss(case, &ours, "context_weighted");
            println!("{}: at strength 0.8 {weighted:.2e}", case.name);
            assert!(
                weighted <= tolerance,
                "{}: {weighted} > {tolerance}",
                case.name
            );
        }
        // The embedding changes the conditioning: without it the context is far off.
        let without = WeightedTokens::with_embeddings(&case.prompt, &[]);
        let ignored = miss(case, &encode(case, &without, &[]), "context");
        assert!(
            ignored > MISWIRED_FACTOR * tolerance,
            "{}: {ignored}",
            case.name
        );
    }
}

/// Tokens with the first embedding's vectors one slot later (one earlier where it ends the
/// prompt), the word they passed moved in front.
fn one_slot_off(tokens: &WeightedTokens) -> WeightedTokens {
    let mut t = tokens.clone();
    let p = t
        .ids
        .iter()
        .position(|&id| id >= FIRST_EMBEDDING_ID)
        .unwrap();
    let n = t.ids[p..]
        .iter()
        .take_while(|&&id| id >= FIRST_EMBEDDING_ID)
        .count();
    if p + n < t.ids.len() {
        t.ids[p..=p + n].rotate_right(1);
    } else {
        t.ids[p - 1..p + n].rotate_left(1);
    }
    t
}

#[test]
fn vectors_one_slot_off_miss_by_far() {
    let tolerance = FIXTURES.tolerance();
    for case in &cases() {
        let tokens = WeightedTokens::with_embeddings(&case.prompt, &case.embeddings);
        let shifted = one_slot_off(&tokens);
        assert_ne!(shifted.ids, tokens.ids);
        let miss = miss(case, &encode(case, &shifted, &case.embeddings), "context");
        println!("{}: one slot off misses by {miss:.3}", case.name);
        assert!(miss > MISWIRED_FACTOR * tolerance, "{}: {miss}", case.name);
    }
}

#[test]
fn sdxl_clip_l_and_clip_g_swapped_miss_by_far() {
    let tolerance = FIXTURES.tolerance();
    let case = cases()
        .into_iter()
        .find(|c| c.name == "sdxl_clip_l_clip_g")
        .unwrap();
    let original = case.embeddings[0].path().to_path_buf();
    let mut vectors = common::load_tensors(&original);
    let l = vectors.remove("clip_l").unwrap();
    let g = vectors.remove("clip_g").unwrap();
    vectors.insert("clip_l".into(), g);
    vectors.insert("clip_g".into(), l);
    let dir = tempfile::tempdir().unwrap();
    let swapped = dir.path().join("swapped.safetensors");
    candle_core::safetensors::save(&vectors, &swapped).unwrap();
    let embeddings = vec![Arc::new(Embedding::open(&swapped, "tiny_sdxl").unwrap())];
    let tokens = WeightedTokens::with_embeddings(&case.prompt, &embeddings);
    let miss = miss(&case, &encode(&case, &tokens, &embeddings), "context");
    println!("clip_l and clip_g swapped: miss {miss:.3}");
    assert!(miss > MISWIRED_FACTOR * tolerance, "{miss}");
}
