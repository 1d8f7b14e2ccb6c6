//! The engine beside PyTorch: one SD 1.5 UNet step at 512×512 with classifier-free guidance
//! (batch 2) and one VAE decode (64×64 latent → 512×512), random weights of the real
//! architecture, f32, CPU. Prints one JSON line per part, in the format of
//! `tools/engine-bench/pytorch_bench.py`, for `tools/engine-bench/compare.py`.
//!
//! `cargo bench -p horde-diffusion --bench engine -- --part unet|vae [--repeats N]
//! [--dtype f32|f16|bf16]`; run each
//! part in its own process so that peak RSS is the part's own (`tools/engine-bench/run.sh`).
//! `--part conv` times each 3×3 convolution of the networks through candle, our direct kernel
//! and Winograd.

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

/// `--part conv`: each 3×3 convolution shape of the SD 1.5 UNet (batch 2, 512²) and VAE
/// decoder (512²) through candle's conv2d, our direct kernel and Winograd, minimum of 3
/// runs each, in milliseconds: where `nn`'s Winograd threshold comes from.
fn compare_convolutions() {
    use horde_diffusion::kernels::{conv::conv2d_stride1, winograd::conv2d_3x3};
    let shapes = [
        ("unet 64x64", 2, 320, 320, 64),
        ("unet 32x32", 2, 640, 640, 32),
        ("unet 16x16", 2, 1280, 1280, 16),
        ("vae 64x64", 1, 512, 512, 64),
        ("vae 128x128", 1, 512, 512, 128),
        ("vae 256x256", 1, 256, 256, 256),
        ("vae 512x512", 1, 128, 128, 512),
    ];
    println!("shape                 candle ms   direct ms   winograd ms");
    for (name, batch, c_in, c_out, size) in shapes {
        // One noise stream per leading item: `batch` images, `c_out` filters.
        let noise = |items: usize, per_item: &[usize]| {
            let seeds: Vec<u64> = (0..items as u64).collect();
            SeededNoise::new(&seeds)
                .sample(per_item, &Device::Cpu)
                .unwrap()
        };
        let x = noise(batch, &[c_in, size, size]);
        let w = (noise(c_out, &[c_in, 3, 3]) * 0.05).unwrap();
        let ms = |run: &dyn Fn() -> Tensor| {
            run();
            (0..3)
                .map(|_| {
                    let started = Instant::now();
                    std::hint::black_box(run());
                    started.elapsed().as_secs_f64() * 1e3
                })
                .fold(f64::INFINITY, f64::min)
        };
        let candle = ms(&|| x.conv2d(&w, 1, 1, 1, 1).unwrap());
        let direct = ms(&|| conv2d_stride1(&x, &w, 1).unwrap());
        let winograd = ms(&|| conv2d_3x3(&x, &w, 1).unwrap());
        println!("{name:<20} {candle:>10.1} {direct:>11.1} {winograd:>13.1}");
    }
}

fn main() {
    let part = arg("--part").unwrap_or_else(|| "unet".into());
    if part == "conv" {
        return compare_convolutions();
    }
    let repeats: usize = arg("--repeats").and_then(|r| r.parse().ok()).unwrap_or(3);
    let threads = candle_core::utils::get_num_threads();
    let config = ModelConfig::sd15();
    // `--dtype f32|f16|bf16`: the weights' and activations' dtype (our kernels compute in f32).
    let (dtype_name, dtype) = match arg("--dtype").as_deref().unwrap_or("f32") {
        "f32" => ("f32", candle_core::DType::F32),
        "f16" => ("f16", candle_core::DType::F16),
        "bf16" => ("bf16", candle_core::DType::BF16),
        other => panic!("unknown dtype {other}: expected f32, f16 or bf16"),
    };
    let vb = random_var_builder(0).set_dtype(dtype);
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
                .and_then(|t| t.to_dtype(dtype))
                .unwrap();
            let context = SeededNoise::new(&[3, 4])
                .sample(&[77, 768], &device)
                .and_then(|t| t.to_dtype(dtype))
                .unwrap();
            let timesteps = Tensor::new(&[500f32, 500.0], &device)
                .and_then(|t| t.to_dtype(dtype))
                .unwrap();
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
                .and_then(|t| t.to_dtype(dtype))
                .unwrap();
            (
                "vae_decode_512",
                time(repeats, || vae.decoder.decode(&latents).unwrap()),
            )
        }
        other => panic!("unknown part {other}: expected unet or vae"),
    };
    println!(
        "{{\"impl\": \"candle\", \"part\": \"{name}\", \"threads\": {threads}, \"min_s\": {min:.3}, \"median_s\": {median:.3}, \"peak_rss_mb\": {:.0}, \"candle\": \"0.11.1\", \"dtype\": \"{dtype_name}\"}}",
        peak_rss_mb()
    );
}
