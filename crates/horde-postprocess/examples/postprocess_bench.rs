//! Our side of the post-processor benchmark (`tools/postprocess-bench`, BENCHMARKS.md): loads a
//! checkpoint the PyTorch side wrote and times the same work, printing one JSON line (median
//! seconds after a warm-up, peak resident size), with the worker's allocator settings.
//! Threads: `RAYON_NUM_THREADS`.
//!
//!   postprocess_bench esrgan CHECKPOINT SIZE RUNS [TILE]   the network on a SIZE² image,
//!                                                          whole, or tiled with TILE² tiles
//!   postprocess_bench gfpgan CHECKPOINT RUNS               the network on one 512² face
//!   postprocess_bench u2net CHECKPOINT SIZE RUNS           `BackgroundRemover::remove` on a
//!                                                          SIZE² image (rembg's pipeline)
//!
//! Build with `cargo build --release -p horde-postprocess --example postprocess_bench`.

use candle_core::{Device, Tensor};
use horde_postprocess::background::BackgroundRemover;
use horde_postprocess::face::gfpgan::Gfpgan;
use horde_postprocess::upscale::{image_to_tensor, Upscaler};
use std::path::Path;
use std::time::Instant;

// The worker's allocator and setting (`keep_freed_memory` in the horde binary): freed maps are
// kept for the next layer instead of being faulted in and cleared again.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[allow(unsafe_code)]
fn keep_freed_memory() {
    // SAFETY: setting an option is allowed at any time; the value is a plain integer
    // (option 15 is `purge_delay`, -1 never purges).
    unsafe { libmimalloc_sys::mi_option_set(15, -1) }
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn number(text: &str, what: &str) -> usize {
    text.parse()
        .unwrap_or_else(|_| panic!("{what} must be a number, not {text}"))
}

/// The median of `runs` timed calls of `work`, after one untimed.
fn median_secs(runs: usize, mut work: impl FnMut()) -> f64 {
    work();
    let mut times: Vec<f64> = (0..runs.max(1))
        .map(|_| {
            let start = Instant::now();
            work();
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// A random RGB image, the same on every run.
fn noise_image(side: u32) -> image::RgbImage {
    let mut state = 0x2545_f491_u32;
    image::RgbImage::from_fn(side, side, |_, _| {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let [a, b, c, _] = state.to_le_bytes();
        image::Rgb([a, b, c])
    })
}

/// The ESRGAN case: the network on a `side`² image, whole (`tile` 0) or in `tile`² tiles.
fn esrgan(checkpoint: &str, side: usize, runs: usize, tile: usize) -> f64 {
    let device = Device::Cpu;
    let mut upscaler = Upscaler::load(Path::new(checkpoint), &device).expect("loads");
    let image = noise_image(side as u32);
    if tile == 0 {
        let x = image_to_tensor(&image, &device).unwrap();
        median_secs(runs, || {
            upscaler.forward(&x).unwrap();
        })
    } else {
        upscaler.tiling.tile = tile;
        median_secs(runs, || {
            upscaler.upscale(&image).unwrap();
        })
    }
}

fn gfpgan(checkpoint: &str, runs: usize) -> f64 {
    let device = Device::Cpu;
    let net = Gfpgan::load(Path::new(checkpoint), &device).expect("loads");
    let x = Tensor::rand(-1f32, 1f32, (1, 3, 512, 512), &device).unwrap();
    median_secs(runs, || {
        net.forward(&x).unwrap();
    })
}

fn u2net(checkpoint: &str, side: usize, runs: usize) -> f64 {
    let remover = BackgroundRemover::load(Path::new(checkpoint), &Device::Cpu).expect("loads");
    let image = noise_image(side as u32);
    median_secs(runs, || {
        remover.remove(&image).unwrap();
    })
}

fn main() {
    keep_freed_memory();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (network, size, tile, secs) = match args[..] {
        ["esrgan", checkpoint, size, runs, ref rest @ ..] => {
            let (side, runs) = (number(size, "SIZE"), number(runs, "RUNS"));
            let tile = rest.first().map_or(0, |t| number(t, "TILE"));
            ("esrgan", side, tile, esrgan(checkpoint, side, runs, tile))
        }
        ["gfpgan", checkpoint, runs] => {
            ("gfpgan", 512, 0, gfpgan(checkpoint, number(runs, "RUNS")))
        }
        ["u2net", checkpoint, size, runs] => {
            let (side, runs) = (number(size, "SIZE"), number(runs, "RUNS"));
            ("u2net", side, 0, u2net(checkpoint, side, runs))
        }
        _ => {
            eprintln!(
                "usage: postprocess_bench esrgan CHECKPOINT SIZE RUNS [TILE] \
                 | gfpgan CHECKPOINT RUNS | u2net CHECKPOINT SIZE RUNS"
            );
            std::process::exit(2);
        }
    };
    println!(
        "{{\"impl\": \"horde\", \"network\": \"{network}\", \"size\": {size}, \"tile\": {tile}, \
         \"median_s\": {secs:.3}, \"peak_rss_mib\": {:.1}}}",
        peak_rss_mib()
    );
}
