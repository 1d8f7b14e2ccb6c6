//! Every sampler starts image-to-image where diffusers' `get_timesteps` says, on a tiny SD 1.5
//! checkpoint: at full strength from zero latents it is text-to-image with the same noise, and
//! at other strengths it is the sampler run from `steps − ⌊steps · strength⌋` of its own
//! schedule, from the source noised to that step's σ.

use super::*;
use crate::tiny::{write_tiny_checkpoint, TinyArch};

fn model() -> Model {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sd15.safetensors");
    write_tiny_checkpoint(TinyArch::Sd15, &path, 9).unwrap();
    Model::load(&path, &LoadOptions::default(), &mut |_| {}).unwrap()
}

fn job(sampler: SamplerKind, steps: usize) -> Generation {
    Generation {
        prompt: "a lighthouse".into(),
        negative_prompt: "fog".into(),
        width: 32,
        height: 32,
        steps,
        cfg_scale: 6.0,
        sampler,
        karras: sampler == SamplerKind::Heun,
        clip_skip: 1,
        tiling: false,
        seeds: vec![5],
        prompts: vec![],
        embeddings: Vec::new(),
    }
}

fn conditioning(model: &Model, job: &Generation) -> PassConditioning {
    let tokens = vec![ImageTokens {
        positive: WeightedTokens::from_prompt(&job.prompt),
        negative: WeightedTokens::from_prompt(&job.negative_prompt),
        chunks: 1,
    }];
    model.pass_conditioning(job, &tokens, &[0]).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    crate::kernels::test_support::max_abs(&(a - b).unwrap())
}

fn start(latents: &Tensor, strength: f64, noise: &mut SeededNoise) -> Start {
    Start {
        noise: noise.like(latents).unwrap(),
        latents: latents.clone(),
        strength,
        pure_noise: false,
        inpaint: None,
    }
}

#[test]
fn full_strength_from_zero_latents_is_text_to_image_for_every_sampler() {
    let model = model();
    for kind in SamplerKind::ALL {
        let job = job(kind, 4);
        let cond = conditioning(&model, &job);
        let mut steps = Vec::new();
        let txt2img = model
            .run_pass(
                &job,
                &cond,
                (32, 32),
                4,
                None,
                &mut SeededNoise::new(&[5]),
                &mut |d, t| steps.push((d, t)),
            )
            .unwrap();
        let zeros = Tensor::zeros((1, 4, 4, 4), DType::F32, &Device::Cpu).unwrap();
        let mut noise = SeededNoise::new(&[5]);
        let start = start(&zeros, 1.0, &mut noise);
        let mut img_steps = Vec::new();
        let img2img = model
            .run_pass(
                &job,
                &cond,
                (32, 32),
                4,
                Some(start),
                &mut noise,
                &mut |d, t| img_steps.push((d, t)),
            )
            .unwrap();
        assert_eq!(max_diff(&txt2img, &img2img), 0.0, "{kind:?}");
        assert_eq!(steps, img_steps, "{kind:?}");
    }
}

#[test]
fn other_strengths_run_the_sampler_from_diffusers_start_step() {
    let model = model();
    let source = (Tensor::randn(0f32, 1.0, (1, 4, 4, 4), &Device::Cpu).unwrap() * 0.8).unwrap();
    // (steps, strength, the start step diffusers' get_timesteps gives).
    for (steps, strength, t_start) in [(6, 0.5, 3), (5, 0.7, 2), (10, 0.29, 8)] {
        for kind in SamplerKind::ALL {
            let job = job(kind, steps);
            let cond = conditioning(&model, &job);
            let mut noise = SeededNoise::new(&[5]);
            let s = start(&source, strength, &mut noise);
            let initial = s.noise.clone();
            let engine = model
                .run_pass(
                    &job,
                    &cond,
                    (32, 32),
                    steps,
                    Some(s),
                    &mut noise,
                    &mut |_, _| {},
                )
                .unwrap();
            // The same by hand: the sampler on its schedule from `t_start`, from the source
            // noised to that σ, with the same noise stream after the initial draw.
            let mut noise = SeededNoise::new(&[5]);
            noise.like(&source).unwrap();
            let sigmas = model.schedule.sigmas_for(kind, steps, job.karras)[t_start..].to_vec();
            let x = (&source + (&initial * sigmas[0]).unwrap()).unwrap();
            let mut denoise = |x: &Tensor, sigma: f64| {
                let unet_cond = Conditioning {
                    context: &cond.context,
                    vector: None,
                };
                model.denoise(x, sigma, &unet_cond, None, None, job.cfg_scale)
            };
            let mut by_hand = samplers::run(
                kind,
                &mut denoise,
                x,
                &sigmas,
                &mut noise,
                &mut |_, _, _| {},
            )
            .unwrap();
            if kind == SamplerKind::Ddim {
                let last = sigmas[sigmas.len() - 1];
                by_hand = (by_hand / (1.0 + last * last).sqrt()).unwrap();
            }
            let diff = max_diff(&engine, &by_hand);
            assert_eq!(diff, 0.0, "{kind:?} at {strength} of {steps} steps");
            // And not the run one step earlier or later.
            let earlier = model.schedule.sigmas_for(kind, steps, job.karras)[t_start - 1];
            assert!(earlier > sigmas[0], "{kind:?}: the schedule decreases");
        }
    }
}

#[test]
fn nearest_exact_repeats_cells_as_comfyui_latent_upscale() {
    let x = Tensor::arange(0f32, 4.0, &Device::Cpu)
        .unwrap()
        .reshape((1, 1, 2, 2))
        .unwrap();
    let up = nearest_exact(&x, 3, 4).unwrap();
    // Rows ⌊(i + ½)·2/3⌋ = 0, 1, 1; columns ⌊(j + ½)·2/4⌋ = 0, 0, 1, 1.
    assert_eq!(
        up.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        vec![0., 0., 1., 1., 2., 2., 3., 3., 2., 2., 3., 3.]
    );
}

/// A tiny SD 1.5 checkpoint written in `dir`, and the options that load it in bf16.
fn tiny_bf16_checkpoint(dir: &Path) -> (std::path::PathBuf, LoadOptions) {
    let path = dir.join("sd15.safetensors");
    write_tiny_checkpoint(TinyArch::Sd15, &path, 9).unwrap();
    let options = LoadOptions {
        dtype: DType::BF16,
        ..LoadOptions::default()
    };
    (path, options)
}

/// A bf16 model rearranges its UNet's weights for the bf16 kernels as it loads, where the CPU
/// runs them (`Model::prepare_kept_weights`), so its first job does not; its VAE keeps none (it
/// runs once per job); and its image is, bit for bit, the one a model that rearranges at every
/// call makes: the weights kept from the 8×8 pass serve the 32×32 job's steps.
#[test]
fn a_bf16_model_prepares_its_unets_kept_weights_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let (path, options) = tiny_bf16_checkpoint(dir.path());
    let prepared = Model::load(&path, &options, &mut |_| {}).unwrap();
    let kernels = crate::kernels::bf16_gemm::available();
    assert_eq!(prepared.unet.out_conv().keeps_weights(), kernels);
    let job = job(SamplerKind::EulerAncestral, 3);
    let image = prepared.generate(&job, &mut |_, _| {}).unwrap();
    assert!(!prepared.vae.decoder.conv_out().keeps_weights());

    let unkept = crate::kernels::kept::without_keeping(|| {
        let model = Model::load(&path, &options, &mut |_| {}).unwrap();
        assert!(!model.unet.out_conv().keeps_weights());
        model.generate(&job, &mut |_, _| {}).unwrap()
    });
    assert_eq!(image[0].as_raw(), unkept[0].as_raw());
}

/// A worker plans a bf16 model's memory with the UNet's kept weights in it, where it will keep
/// them: as much again as its convolutions' and linear layers' weights (`Model::inspect`).
#[test]
fn a_bf16_models_planned_memory_holds_its_kept_weights() {
    let dir = tempfile::tempdir().unwrap();
    let (path, options) = tiny_bf16_checkpoint(dir.path());
    let planned = Model::inspect(&path, &options).unwrap().1;
    let unkept = crate::kernels::kept::without_keeping(|| Model::inspect(&path, &options))
        .unwrap()
        .1;
    let index = checkpoint::open(&path).unwrap();
    let kept: u64 = index
        .names()
        .filter(|name| name.starts_with(UNET_PREFIX) && name.ends_with(".weight"))
        .map(|name| index.shape(name).unwrap())
        .filter(|shape| matches!(shape.len(), 2 | 4))
        .map(|shape| 2 * shape.iter().product::<usize>() as u64)
        .sum();
    let kernels = crate::kernels::bf16_gemm::available();
    assert_eq!(planned - unkept, if kernels { kept } else { 0 });
    assert!(kept > 0);
}
