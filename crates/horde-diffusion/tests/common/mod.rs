//! What the numbers tests share, so that each file keeps only what it pins and how closely:
//! where a fixture tool's files are, the checkpoints rebuilt from their seed and loaded as the
//! engine loads them, the check that they are the ones the fixtures were made from, and the
//! conversions between the fixtures' tensors and the engine's inputs.
#![allow(dead_code)] // each test binary compiles this module and uses its own part

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use horde_diffusion::parts::{
    open_checkpoint, Noise, TextConditioner, TextTransformer, UNet, WeightedTokens,
    SD1_CLIP_PREFIX, SD2_CLIP_PREFIX, SDXL_CLIP_G_PREFIX, SDXL_CLIP_L_PREFIX, UNET_PREFIX,
};
use horde_diffusion::tiny::{write_tiny_checkpoint, TinyArch};
use horde_diffusion::{Family, Generation, LoadOptions, Model, ModelConfig, SamplerKind};
use image::{RgbImage, RgbaImage};
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::fmt::Display;
use std::path::{Path, PathBuf};

/// Named tensors, as a safetensors file holds them.
pub(crate) type Tensors = HashMap<String, Tensor>;

/// The seed of every tiny checkpoint the fixtures were made on (`CHECKPOINT_SEED` of the tools).
pub(crate) const CHECKPOINT_SEED: u64 = 22;

/// The tiny architecture of each family, with the name the fixtures give it.
pub(crate) const FAMILIES: [(TinyArch, &str); 3] = [
    (TinyArch::Sd15, "sd15"),
    (TinyArch::Sd2, "sd2"),
    (TinyArch::Sdxl, "sdxl"),
];

/// A folder of `tests/fixtures/` and the tool that writes it.
pub(crate) struct Fixtures {
    /// The folder's name under `tests/fixtures/`.
    pub(crate) folder: &'static str,
    /// The tool that writes it, named in the message of a stale fingerprint.
    pub(crate) tool: &'static str,
}

impl Fixtures {
    /// The folder, under the crate cargo runs the test in (not the one it was built in: a target
    /// directory shared by clones at other paths keeps binaries built elsewhere).
    pub(crate) fn dir(&self) -> PathBuf {
        let crate_dir =
            std::env::var("CARGO_MANIFEST_DIR").unwrap_or(env!("CARGO_MANIFEST_DIR").into());
        Path::new(&crate_dir)
            .join("tests/fixtures")
            .join(self.folder)
    }

    /// The folder's `manifest.json`.
    pub(crate) fn manifest(&self) -> Value {
        let path = self.dir().join("manifest.json");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The manifest's `tolerance`.
    pub(crate) fn tolerance(&self) -> f64 {
        self.manifest()["tolerance"].as_f64().unwrap()
    }

    /// The tensors of the folder's safetensors `file`.
    pub(crate) fn tensors(&self, file: &str) -> Tensors {
        load_tensors(&self.dir().join(file))
    }

    /// Asserts that `tensors` (the checkpoint `what`, rebuilt from its seed) are those `expected`
    /// fingerprints: its `tensors` count, and its float64 `sum` and `sum_abs` within `relative`
    /// of their magnitude (at least 1); else the tiny writer changed and the tool must run again.
    pub(crate) fn check_fingerprint(
        &self,
        what: impl Display,
        tensors: &Tensors,
        expected: &Value,
        relative: f64,
    ) {
        let stale = format!(
            "{what}: the tiny writer changed: regenerate the fixtures ({})",
            self.tool
        );
        let count = expected["tensors"].as_u64().unwrap();
        assert_eq!(tensors.len() as u64, count, "{stale}");
        let values = || {
            (tensors.values())
                .flat_map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
                .map(f64::from)
        };
        let sums = [
            ("sum", values().sum::<f64>()),
            ("sum_abs", values().map(f64::abs).sum()),
        ];
        for (key, got) in sums {
            let want = expected[key].as_f64().unwrap();
            assert!(
                (got - want).abs() <= relative * want.abs().max(1.0),
                "{key}: {got} against {want}: {stale}"
            );
        }
    }
}

/// The tensors of a safetensors file, on the CPU.
pub(crate) fn load_tensors(path: &Path) -> Tensors {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The folder the environment variable `var` names (set by a fixture tool's `generate.sh`),
/// created.
pub(crate) fn tool_dir(var: &str) -> PathBuf {
    let dir = std::env::var(var).unwrap_or_else(|_| panic!("{var} names the folder to write to"));
    std::fs::create_dir_all(&dir).unwrap();
    PathBuf::from(dir)
}

/// The largest absolute difference between two tensors of one shape.
pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let diff = (a - b).unwrap().abs().unwrap().flatten_all().unwrap();
    f64::from(diff.max(0).unwrap().to_scalar::<f32>().unwrap())
}

/// A fixture's token ids (int64), each at weight 1.
pub(crate) fn tokens(t: &Tensor) -> WeightedTokens {
    let ids: Vec<u32> = (t.to_vec1::<i64>().unwrap().into_iter())
        .map(|id| u32::try_from(id).unwrap())
        .collect();
    WeightedTokens {
        weights: vec![1.0; ids.len()],
        ids,
    }
}

/// A fixture's 8-bit RGB image (`[H, W, 3]`).
pub(crate) fn rgb_image(t: &Tensor) -> RgbImage {
    let (h, w, _) = t.dims3().unwrap();
    let data = t.flatten_all().unwrap().to_vec1::<u8>().unwrap();
    RgbImage::from_raw(w as u32, h as u32, data).unwrap()
}

/// A fixture's 8-bit RGB image (`[H, W, 3]`), opaque.
pub(crate) fn rgba_image(t: &Tensor) -> RgbaImage {
    image::DynamicImage::ImageRgb8(rgb_image(t)).to_rgba8()
}

/// A checkpoint loaded by `Model::load` with the default options.
pub(crate) fn load_model(path: &Path) -> Model {
    Model::load(path, &LoadOptions::default(), &mut |_| {})
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The family's tiny checkpoint, rebuilt from [`CHECKPOINT_SEED`] and loaded by `Model::load`.
pub(crate) fn tiny_model(arch: TinyArch) -> Model {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    write_tiny_checkpoint(arch, &path, CHECKPOINT_SEED).unwrap();
    load_model(&path)
}

/// A checkpoint's configuration, as the engine infers it, and its tensors.
pub(crate) fn open(path: &Path) -> (ModelConfig, VarBuilder<'static>) {
    let index = open_checkpoint(path).unwrap();
    let config = ModelConfig::infer(&index, None).unwrap();
    (config, index.var_builder(DType::F32, &Device::Cpu))
}

/// The checkpoint's UNet.
pub(crate) fn unet(config: &ModelConfig, vb: &VarBuilder<'_>) -> UNet {
    let vb = vb.pp(UNET_PREFIX.trim_end_matches('.'));
    UNet::new(&config.unet, config.family, vb).unwrap()
}

/// Where a family's checkpoint keeps each of its text encoders.
pub(crate) fn clip_prefixes(family: Family) -> &'static [&'static str] {
    match family {
        Family::Sd1 => &[SD1_CLIP_PREFIX],
        Family::Sd2 => &[SD2_CLIP_PREFIX],
        Family::Sdxl => &[SDXL_CLIP_L_PREFIX, SDXL_CLIP_G_PREFIX],
    }
}

/// The checkpoint's text encoders, conditioning as the family does.
pub(crate) fn text_conditioner(config: &ModelConfig, vb: &VarBuilder<'_>) -> TextConditioner {
    let encoders = (config
        .text_encoders
        .iter()
        .zip(clip_prefixes(config.family)))
    .map(|(c, prefix)| TextTransformer::new(c, vb.pp(prefix.trim_end_matches('.'))).unwrap())
    .collect();
    TextConditioner::new(config.family, encoders)
}

/// A job as the fixture tools run diffusers: one image, empty prompts (the tokens are the
/// fixture's), DDIM (η = 0), no Karras schedule, clip skip 1.
pub(crate) fn ddim_job(width: usize, height: usize, steps: usize, cfg_scale: f64) -> Generation {
    Generation {
        prompt: String::new(),
        negative_prompt: String::new(),
        width,
        height,
        steps,
        cfg_scale,
        sampler: SamplerKind::Ddim,
        karras: false,
        clip_skip: 1,
        tiling: false,
        seeds: vec![0],
        prompts: vec![],
        embeddings: Vec::new(),
    }
}

/// diffusers' draws, replayed in order; each must be asked for with the shape it was drawn at.
pub(crate) struct RecordedNoise {
    draws: VecDeque<Tensor>,
    used: usize,
}

impl RecordedNoise {
    /// The draws diffusers made, in the order it made them.
    pub(crate) fn new(draws: impl IntoIterator<Item = Tensor>) -> Self {
        let draws = draws.into_iter().collect();
        Self { draws, used: 0 }
    }

    /// Whether the engine drew every recorded draw.
    pub(crate) fn all_used(&self) -> bool {
        self.draws.is_empty()
    }
}

impl Noise for RecordedNoise {
    fn like(&mut self, x: &Tensor) -> candle_core::Result<Tensor> {
        let next = self.draws.pop_front().unwrap_or_else(|| {
            panic!(
                "the engine drew noise #{} that diffusers never drew",
                self.used
            )
        });
        assert_eq!(
            next.dims(),
            x.dims(),
            "noise #{} has diffusers' shape",
            self.used
        );
        self.used += 1;
        next.to_dtype(x.dtype())
    }
}
