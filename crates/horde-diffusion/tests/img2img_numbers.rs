//! Image-to-image pinned to diffusers' own pipelines: `StableDiffusionImg2ImgPipeline` (SD 1.5,
//! SD 2), `StableDiffusionXLImg2ImgPipeline`, `StableDiffusionInpaintPipeline` on an ordinary
//! UNet (latent masking) and on a 9-channel inpainting UNet, and
//! `StableDiffusionXLInpaintPipeline` on SDXL's, each with DDIM (η = 0) on the tiny random
//! checkpoints, every random draw recorded (`tools/sd-fixtures/img2img.py`).
//!
//! The engine runs the same job through `parts::sample_latents` — the code
//! `Model::generate_with` runs, from the prompt tokens and the 8-bit source and mask to the final
//! latents — with the recorded noise in the order diffusers drew it (the source's encoder
//! sample, the initial noise, the masked image's encoder sample), and must land within the
//! manifest's tolerance. A schedule started one step early or late (the strength whose
//! `⌊steps · strength⌋` is one more or one less) must miss by far.

use candle_core::{Device, Tensor};
use horde_diffusion::parts::{sample_latents, Noise, WeightedTokens};
use horde_diffusion::tiny::{write_tiny_checkpoint, write_tiny_inpainting_checkpoint, TinyArch};
use horde_diffusion::{Generation, LoadOptions, Model, SamplerKind, SourceImage, SourceProcessing};
use image::{GrayImage, RgbaImage};
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};

/// The seed of every checkpoint (`CHECKPOINT_SEED` of generate.py).
const CHECKPOINT_SEED: u64 = 22;
/// How far beyond the tolerance a schedule started one step off must land.
const WRONG_START_FACTOR: f64 = 100.0;

type Tensors = HashMap<String, Tensor>;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/img2img")
}

fn manifest() -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join("manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Writes the checkpoints img2img.py runs on into `$HORDE_SD_FIXTURES_CHECKPOINTS`
/// (`tools/sd-fixtures/generate.sh` runs it).
#[test]
#[ignore = "writes the checkpoints for tools/sd-fixtures; run by its generate.sh"]
fn write_img2img_checkpoints_for_the_fixture_tool() {
    let dir = std::env::var("HORDE_SD_FIXTURES_CHECKPOINTS")
        .expect("HORDE_SD_FIXTURES_CHECKPOINTS names the folder to write to");
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["sd15", "sd2", "sdxl", "sd15_inpainting", "sdxl_inpainting"] {
        let path = Path::new(&dir).join(format!("{name}.safetensors"));
        write_checkpoint(name, &path);
        println!("wrote {}", path.display());
    }
}

fn write_checkpoint(name: &str, path: &Path) {
    match name {
        "sd15" => write_tiny_checkpoint(TinyArch::Sd15, path, CHECKPOINT_SEED),
        "sd2" => write_tiny_checkpoint(TinyArch::Sd2, path, CHECKPOINT_SEED),
        "sdxl" => write_tiny_checkpoint(TinyArch::Sdxl, path, CHECKPOINT_SEED),
        "sd15_inpainting" => {
            write_tiny_inpainting_checkpoint(TinyArch::Sd15, path, CHECKPOINT_SEED)
        }
        "sdxl_inpainting" => {
            write_tiny_inpainting_checkpoint(TinyArch::Sdxl, path, CHECKPOINT_SEED)
        }
        other => panic!("no checkpoint {other}"),
    }
    .unwrap();
}

/// The checkpoint written is the one the fixtures were made from: tensor count and float64 sums.
fn check_fingerprint(path: &Path, expected: &serde_json::Value) {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    let values: Vec<f64> = tensors
        .values()
        .flat_map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .map(f64::from)
        .collect();
    let stale = "the tiny writer changed: regenerate the fixtures (tools/sd-fixtures)";
    assert_eq!(
        tensors.len() as u64,
        expected["tensors"].as_u64().unwrap(),
        "{stale}"
    );
    let sums = [
        ("sum", values.iter().sum::<f64>()),
        ("sum_abs", values.iter().map(|v| v.abs()).sum()),
    ];
    for (what, got) in sums {
        let want = expected[what].as_f64().unwrap();
        assert!(
            (got - want).abs() <= 1e-6 * want.abs().max(1.0),
            "{} {what}: {got} against {want}: {stale}",
            path.display()
        );
    }
}

/// diffusers' draws, replayed in order; each must be asked for with the shape it was drawn at.
struct RecordedNoise {
    draws: VecDeque<Tensor>,
    used: usize,
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

/// One fixture case, ready to run.
struct Case {
    name: String,
    model: Model,
    tensors: Tensors,
    steps: usize,
    strength: f64,
    inpaint: bool,
}

fn cases() -> Vec<Case> {
    let manifest = manifest();
    let dir = tempfile::tempdir().unwrap();
    let mut out = Vec::new();
    for (name, entry) in manifest["cases"].as_object().unwrap() {
        let checkpoint = entry["checkpoint"].as_str().unwrap();
        let path = dir.path().join(format!("{checkpoint}.safetensors"));
        if !path.exists() {
            write_checkpoint(checkpoint, &path);
            check_fingerprint(&path, &entry["checkpoint_fingerprint"]);
        }
        let model = Model::load(&path, &LoadOptions::default(), &mut |_| {}).unwrap();
        assert_eq!(
            model.config().unet.in_channels as u64,
            entry["unet_in_channels"].as_u64().unwrap(),
            "{name}: the inpainting UNet is detected from conv_in"
        );
        let tensors = candle_core::safetensors::load(
            fixtures().join(entry["file"].as_str().unwrap()),
            &Device::Cpu,
        )
        .unwrap();
        out.push(Case {
            name: name.clone(),
            model,
            tensors,
            steps: entry["steps"].as_u64().unwrap() as usize,
            strength: entry["strength"].as_f64().unwrap(),
            inpaint: entry["pipeline"].as_str().unwrap().contains("Inpaint"),
        });
    }
    assert_eq!(out.len(), 6, "every case of img2img.py");
    out
}

fn tokens(t: &Tensor) -> WeightedTokens {
    let ids: Vec<u32> = t
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|id| u32::try_from(id).unwrap())
        .collect();
    WeightedTokens {
        weights: vec![1.0; ids.len()],
        ids,
    }
}

/// The engine's final latents for `case` at `strength`, on the recorded noise.
fn engine_latents(case: &Case, strength: f64) -> Tensor {
    let t = &case.tensors;
    let (h, w, _) = t["rgb"].dims3().unwrap();
    let rgb = t["rgb"].flatten_all().unwrap().to_vec1::<u8>().unwrap();
    let image = RgbaImage::from_fn(w as u32, h as u32, |x, y| {
        let i = 3 * (y as usize * w + x as usize);
        image::Rgba([rgb[i], rgb[i + 1], rgb[i + 2], 255])
    });
    let mask = case.inpaint.then(|| {
        let data = t["mask"].flatten_all().unwrap().to_vec1::<u8>().unwrap();
        GrayImage::from_raw(w as u32, h as u32, data).unwrap()
    });
    let source = SourceImage {
        image,
        mask,
        processing: if case.inpaint {
            SourceProcessing::Inpainting
        } else {
            SourceProcessing::Img2Img
        },
        denoising_strength: strength,
    };
    let job = Generation {
        prompt: String::new(),
        negative_prompt: String::new(),
        width: w,
        height: h,
        steps: case.steps,
        cfg_scale: manifest()["cases"][&case.name]["guidance_scale"]
            .as_f64()
            .unwrap(),
        sampler: SamplerKind::Ddim,
        karras: false,
        clip_skip: 1,
        tiling: false,
        seeds: vec![0],
        prompts: vec![],
        embeddings: Vec::new(),
    };
    let draws: VecDeque<Tensor> = (0..)
        .map_while(|i| t.get(&format!("noise.{i}")).cloned())
        .collect();
    let mut noise = RecordedNoise { draws, used: 0 };
    let pair = (tokens(&t["tokens.positive"]), tokens(&t["tokens.negative"]));
    sample_latents(
        &case.model,
        &job,
        vec![pair],
        Some(&source),
        None,
        &mut noise,
    )
    .unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    f64::from(
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
    )
}

#[test]
fn image_to_image_and_inpainting_match_diffusers_pipelines() {
    let tolerance = manifest()["tolerance"].as_f64().unwrap();
    let mut report = Vec::new();
    for case in cases() {
        let latents = engine_latents(&case, case.strength);
        let diff = max_diff(&latents, &case.tensors["latents"]);
        report.push(format!("{}: {diff:.2e}", case.name));
        assert!(diff < tolerance, "{}: {diff} ≥ {tolerance}", case.name);
    }
    println!("{}", report.join("\n"));
}

/// The strength whose `⌊steps · strength⌋` is `init_timestep` (img2img.py's `strength_for`).
fn strength_for(steps: usize, init_timestep: usize) -> f64 {
    (init_timestep as f64 + 0.5) / steps as f64
}

#[test]
fn a_schedule_started_one_step_off_misses_diffusers_by_far() {
    let tolerance = manifest()["tolerance"].as_f64().unwrap();
    let mut report = Vec::new();
    for case in cases() {
        let init = (case.steps as f64 * case.strength).floor() as usize;
        for (label, init) in [("later", init - 1), ("earlier", init + 1)] {
            let latents = engine_latents(&case, strength_for(case.steps, init));
            let miss = max_diff(&latents, &case.tensors["latents"]);
            report.push(format!("{} one step {label}: {miss:.3}", case.name));
            assert!(
                miss > WRONG_START_FACTOR * tolerance,
                "{} started one step {label} misses by only {miss}",
                case.name
            );
        }
    }
    println!("{}", report.join("\n"));
}
