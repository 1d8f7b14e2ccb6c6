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

mod common;

use candle_core::Tensor;
use common::{max_abs_diff, tokens, Fixtures, RecordedNoise, Tensors, CHECKPOINT_SEED};
use horde_diffusion::parts::sample_latents;
use horde_diffusion::tiny::{write_tiny_checkpoint, write_tiny_inpainting_checkpoint, TinyArch};
use horde_diffusion::{Model, SourceImage, SourceProcessing};
use image::GrayImage;
use std::path::Path;

const FIXTURES: Fixtures = Fixtures {
    folder: "img2img",
    tool: "tools/sd-fixtures",
};
/// How far beyond the tolerance a schedule started one step off must land.
const WRONG_START_FACTOR: f64 = 100.0;

/// Writes the checkpoints img2img.py runs on into `$HORDE_SD_FIXTURES_CHECKPOINTS`
/// (`tools/sd-fixtures/generate.sh` runs it).
#[test]
#[ignore = "writes the checkpoints for tools/sd-fixtures; run by its generate.sh"]
fn write_img2img_checkpoints_for_the_fixture_tool() {
    let dir = common::tool_dir("HORDE_SD_FIXTURES_CHECKPOINTS");
    for name in ["sd15", "sd2", "sdxl", "sd15_inpainting", "sdxl_inpainting"] {
        let path = dir.join(format!("{name}.safetensors"));
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
    let tensors = common::load_tensors(path);
    FIXTURES.check_fingerprint(path.display(), &tensors, expected, 1e-6);
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
    let manifest = FIXTURES.manifest();
    let dir = tempfile::tempdir().unwrap();
    let mut out = Vec::new();
    for (name, entry) in manifest["cases"].as_object().unwrap() {
        let checkpoint = entry["checkpoint"].as_str().unwrap();
        let path = dir.path().join(format!("{checkpoint}.safetensors"));
        if !path.exists() {
            write_checkpoint(checkpoint, &path);
            check_fingerprint(&path, &entry["checkpoint_fingerprint"]);
        }
        let model = common::load_model(&path);
        assert_eq!(
            model.config().unet.in_channels as u64,
            entry["unet_in_channels"].as_u64().unwrap(),
            "{name}: the inpainting UNet is detected from conv_in"
        );
        let tensors = FIXTURES.tensors(entry["file"].as_str().unwrap());
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

/// The engine's final latents for `case` at `strength`, on the recorded noise.
fn engine_latents(case: &Case, strength: f64) -> Tensor {
    let t = &case.tensors;
    let (h, w, _) = t["rgb"].dims3().unwrap();
    let mask = case.inpaint.then(|| {
        let data = t["mask"].flatten_all().unwrap().to_vec1::<u8>().unwrap();
        GrayImage::from_raw(w as u32, h as u32, data).unwrap()
    });
    let source = SourceImage {
        image: common::rgba_image(&t["rgb"]),
        mask,
        processing: if case.inpaint {
            SourceProcessing::Inpainting
        } else {
            SourceProcessing::Img2Img
        },
        denoising_strength: strength,
    };
    let cfg_scale = FIXTURES.manifest()["cases"][&case.name]["guidance_scale"]
        .as_f64()
        .unwrap();
    let job = common::ddim_job(w, h, case.steps, cfg_scale);
    let draws = (0..).map_while(|i| t.get(&format!("noise.{i}")).cloned());
    let mut noise = RecordedNoise::new(draws);
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

#[test]
fn image_to_image_and_inpainting_match_diffusers_pipelines() {
    let tolerance = FIXTURES.tolerance();
    let mut report = Vec::new();
    for case in cases() {
        let latents = engine_latents(&case, case.strength);
        let diff = max_abs_diff(&latents, &case.tensors["latents"]);
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
    let tolerance = FIXTURES.tolerance();
    let mut report = Vec::new();
    for case in cases() {
        let init = (case.steps as f64 * case.strength).floor() as usize;
        for (label, init) in [("later", init - 1), ("earlier", init + 1)] {
            let latents = engine_latents(&case, strength_for(case.steps, init));
            let miss = max_abs_diff(&latents, &case.tensors["latents"]);
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
