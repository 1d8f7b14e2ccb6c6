//! Sampler overhead per step — everything a sampler does except calling the model — as a
//! fraction of one UNet step of the tiny SD 1.5 model (the cheapest network a step can call).
//! `cargo bench -p horde-diffusion --bench samplers`; prints a Markdown table for BENCHMARKS.md.

use candle_core::{Device, Tensor};
use horde_diffusion::parts::samplers;
use horde_diffusion::parts::{Conditioning, UNet};
use horde_diffusion::parts::{DiscreteSchedule, SeededNoise, UNET_PREFIX};
use horde_diffusion::tiny::{random_var_builder, tiny_config, TinyArch};
use horde_diffusion::SamplerKind;
use std::time::Instant;

const STEPS: usize = 20;
const REPEATS: usize = 5;

fn best_of<T>(mut run: impl FnMut() -> T) -> f64 {
    (0..REPEATS)
        .map(|_| {
            let started = Instant::now();
            std::hint::black_box(run());
            started.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let device = Device::Cpu;
    let config = tiny_config(TinyArch::Sd15);
    let unet = UNet::new(
        &config.unet,
        config.family,
        random_var_builder(0).pp(UNET_PREFIX.trim_end_matches('.')),
    )
    .unwrap();
    // 512×512 with classifier-free guidance: a batch of 2 latents of 64×64.
    let latents = SeededNoise::new(&[1, 2])
        .sample(&[4, 64, 64], &device)
        .unwrap();
    let context = SeededNoise::new(&[3, 4])
        .sample(&[77, config.unet.context_dim], &device)
        .unwrap();
    let t = Tensor::new(&[500f32, 500.0], &device).unwrap();
    let cond = Conditioning {
        context: &context,
        vector: None,
    };
    let unet_step = best_of(|| unet.forward(&latents, &t, &cond).unwrap());

    let schedule = DiscreteSchedule::default();
    let x = SeededNoise::new(&[9])
        .sample(&[4, 64, 64], &device)
        .unwrap();
    println!(
        "tiny SD 1.5 UNet step (512×512, CFG batch 2): {:.2} ms, {} threads\n",
        unet_step * 1e3,
        candle_core::utils::get_num_threads()
    );
    println!("| sampler | model calls | overhead per step (ms) | ÷ tiny UNet step |");
    println!("|---|---:|---:|---:|");
    for kind in SamplerKind::ALL {
        let sigmas = schedule.sigmas_for(kind, STEPS, true);
        let mut calls = 0;
        let elapsed = best_of(|| {
            calls = 0;
            // A free denoiser: only the sampler's own arithmetic is timed.
            let mut denoise = |x: &Tensor, _: f64| {
                calls += 1;
                Ok(x.clone())
            };
            let mut noise = SeededNoise::new(&[1]);
            samplers::run(
                kind,
                &mut denoise,
                (&x * sigmas[0]).unwrap(),
                &sigmas,
                &mut noise,
                &mut |_, _, _| {},
            )
            .unwrap()
        });
        let per_step = elapsed / STEPS as f64;
        println!(
            "| {} | {calls} | {:.3} | {:.1e} |",
            kind.horde_name(),
            per_step * 1e3,
            per_step / unet_step
        );
    }
}
