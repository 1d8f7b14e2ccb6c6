//! The engine beside PyTorch: one SD 1.5 UNet step at 512×512 with classifier-free guidance
//! (batch 2) and one VAE decode (64×64 latent → 512×512), random weights of the real
//! architecture, f32, CPU. Prints one JSON line per part, in the format of
//! `tools/engine-bench/pytorch_bench.py`, for `tools/engine-bench/compare.py`.
//!
//! `cargo bench -p horde-diffusion --bench engine -- --part unet|vae [--repeats N]`; run each
//! part in its own process so that peak RSS is the part's own (`tools/engine-bench/run.sh`).

use candle_core::{Device, Tensor};
use horde_diffusion::config::{ModelConfig, UNET_PREFIX, VAE_PREFIX};
use horde_diffusion::sampling::SeededNoise;
use horde_diffusion::tiny::random_var_builder;
use horde_diffusion::unet::{Conditioning, UNet};
use horde_diffusion::vae::Vae;
use std::time::Instant;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn time(repeats: usize, mut run: impl FnMut() -> Tensor) -> (f64, f64) {
    run(); // warm-up
    let mut times: Vec<f64> = (0..repeats)
        .map(|_| {
            let started = Instant::now();
            let out = run();
            std::hint::black_box(out);
            started.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    (times[0], times[times.len() / 2])
}

fn main() {
    let part = arg("--part").unwrap_or_else(|| "unet".into());
    let repeats: usize = arg("--repeats").and_then(|r| r.parse().ok()).unwrap_or(3);
    let threads = candle_core::utils::get_num_threads();
    let config = ModelConfig::sd15();
    let vb = random_var_builder(0);
    let device = Device::Cpu;
    let (name, (min, median)) = match part.as_str() {
        "unet" => {
            let unet = UNet::new(
                &config.unet,
                config.family,
                vb.pp(UNET_PREFIX.trim_end_matches('.')),
            )
            .expect("UNet builds");
            let latents = SeededNoise::new(&[1, 2])
                .sample(&[4, 64, 64], &device)
                .unwrap();
            let context = SeededNoise::new(&[3, 4])
                .sample(&[77, 768], &device)
                .unwrap();
            let timesteps = Tensor::new(&[500f32, 500.0], &device).unwrap();
            let cond = Conditioning {
                context: &context,
                vector: None,
            };
            (
                "unet_step_cfg_512",
                time(repeats, || {
                    unet.forward(&latents, &timesteps, &cond).unwrap()
                }),
            )
        }
        "vae" => {
            let vae =
                Vae::new(&config.vae, vb.pp(VAE_PREFIX.trim_end_matches('.'))).expect("VAE builds");
            let latents = SeededNoise::new(&[5])
                .sample(&[4, 64, 64], &device)
                .unwrap();
            (
                "vae_decode_512",
                time(repeats, || vae.decoder.decode(&latents).unwrap()),
            )
        }
        other => panic!("unknown part {other}: expected unet or vae"),
    };
    println!(
        "{{\"impl\": \"candle\", \"part\": \"{name}\", \"threads\": {threads}, \"min_s\": {min:.3}, \"median_s\": {median:.3}, \"peak_rss_mb\": {:.0}, \"candle\": \"0.11.1\", \"dtype\": \"f32\"}}",
        peak_rss_mb()
    );
}
