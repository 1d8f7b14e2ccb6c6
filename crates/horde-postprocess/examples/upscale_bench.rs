//! Our side of the upscaler benchmark (`tools/postprocess-bench`): loads an upscaler checkpoint
//! and times it on a random `size`² image, untiled, printing one JSON line (median seconds, peak
//! resident size). Threads: `RAYON_NUM_THREADS`.
//!
//!   cargo run --release -p horde-postprocess --example upscale_bench -- CHECKPOINT SIZE RUNS

use candle_core::{Device, Tensor};
use horde_postprocess::upscale::Upscaler;
use std::time::Instant;

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, checkpoint, size, runs] = &args[..] else {
        eprintln!("usage: upscale_bench CHECKPOINT SIZE RUNS");
        std::process::exit(2);
    };
    let size: usize = size.parse().expect("SIZE is a number");
    let runs: usize = runs.parse().expect("RUNS is a number");
    let upscaler = Upscaler::load(checkpoint.as_ref(), &Device::Cpu).expect("loads");
    let x = Tensor::rand(0f32, 1f32, (1, 3, size, size), &Device::Cpu).unwrap();
    upscaler.forward(&x).unwrap(); // warm-up
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            upscaler.forward(&x).unwrap();
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    println!(
        "{{\"impl\": \"horde\", \"size\": {size}, \"median_s\": {:.3}, \"peak_rss_mib\": {:.1}}}",
        times[times.len() / 2],
        peak_rss_mib()
    );
}
