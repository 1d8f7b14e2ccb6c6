//! `--part image`: one whole image through the public path, as a worker makes it
//! (`Model::generate`: the prompt through the tokenizer and the text encoder(s), the sampler's
//! steps over the UNet with classifier-free guidance, the VAE decode), timed once (a worker runs
//! one job; no warm-up). Issue 31's comparison with diffusers (`tools/engine-bench/image_bench.py`
//! on the same shapes) and its memory point: `--checkpoint PATH` loads a checkpoint instead of
//! random weights, so that `--release-text-encoders` has a file to re-read the encoders from;
//! `--part write_checkpoint --out PATH` writes a random one of the real architecture.
//!
//! `peak_rss_mb` is the whole process's peak, as diffusers' side reports it; the high-water mark
//! is also reset after loading (`/proc/self/clear_refs`), so that the generation's own peak
//! (`generation_peak_rss_mb`) and the load's (`load_peak_rss_mb`) are printed beside it.

use crate::common::{arg, peak_rss_mb};
use candle_core::DType;
use horde_diffusion::parts::{model_from_var_builder, TextTransformer, UNet, Vae};
use horde_diffusion::tiny::{random_var_builder, record_random};
use horde_diffusion::{Generation, LoadOptions, Model, ModelConfig, SamplerKind};
use std::time::Instant;

/// `--model sd15|sdxl`: the configuration, the part name's prefix and the default size.
fn model_arg() -> (ModelConfig, &'static str, usize) {
    match arg("--model").as_deref().unwrap_or("sd15") {
        "sd15" => (ModelConfig::sd15(), "", 512),
        "sdxl" => (ModelConfig::sdxl(), "sdxl_", 1024),
        other => panic!("unknown model {other}: expected sd15 or sdxl"),
    }
}

/// `--dtype f32|bf16|f16`: the dtype the weights are held in.
fn dtype_arg() -> (String, DType) {
    let name = arg("--dtype").unwrap_or_else(|| "f32".into());
    let dtype = horde_diffusion::dtype_named(&name).expect("--dtype f32, f16 or bf16");
    (name, dtype)
}

/// Resets the process's peak RSS (`VmHWM`) to its current RSS (Linux `clear_refs` 5).
fn reset_peak_rss() {
    std::fs::write("/proc/self/clear_refs", "5").expect("/proc/self/clear_refs is writable");
}

/// Seconds at which each step ended, from the step callback, split into the text encoding
/// (before the first step: the first callback's time less one mean step), the steps and the
/// decode (after the last callback).
fn split(ends: &[f64], total: f64) -> (f64, f64, f64) {
    let first = ends[0];
    let last = ends[ends.len() - 1];
    // One step: the text encoding is counted in it.
    let mean_step = if ends.len() > 1 {
        (last - first) / (ends.len() - 1) as f64
    } else {
        first
    };
    let text = first - mean_step;
    (text, last - text, total - last)
}

/// `--part image [--model sd15|sdxl] [--steps 20] [--size N] [--dtype f32|bf16]
/// [--checkpoint PATH] [--release-text-encoders | --low-memory]`.
pub(crate) fn time_image(threads: usize) {
    let (config, prefix, default_size) = model_arg();
    let steps: usize = arg("--steps").and_then(|s| s.parse().ok()).unwrap_or(20);
    let size: usize = arg("--size")
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_size);
    let (dtype_name, dtype) = dtype_arg();
    // `--low-memory`: as a worker with `low_memory` runs (worker_cmd.rs): the text encoders
    // released, freed memory handed back (`main`), the weights rearranged at each use.
    let low_memory = std::env::args().any(|a| a == "--low-memory");
    if low_memory {
        horde_diffusion::parts::kernels::keep_rearranged_weights(false);
    }
    let release = low_memory || std::env::args().any(|a| a == "--release-text-encoders");
    let options = LoadOptions {
        dtype,
        release_text_encoders: release,
        ..LoadOptions::default()
    };
    let loading = Instant::now();
    let model = match arg("--checkpoint") {
        Some(path) => Model::load(path.as_ref(), &options, &mut |_| {}).expect("checkpoint loads"),
        None => model_from_var_builder(random_var_builder(0).set_dtype(dtype), config, &options)
            .expect("model builds"),
    };
    let load_s = loading.elapsed().as_secs_f64();
    let load_peak = peak_rss_mb();
    reset_peak_rss();
    let job = Generation {
        prompt: "a lighthouse on a cliff at dusk, oil painting".into(),
        negative_prompt: "blurry".into(),
        width: size,
        height: size,
        steps,
        cfg_scale: 7.5,
        sampler: SamplerKind::EulerAncestral,
        karras: false,
        clip_skip: 1,
        tiling: false,
        seeds: vec![1],
        prompts: vec![],
        embeddings: Vec::new(),
    };
    let mut ends = Vec::new();
    let started = Instant::now();
    let images = model
        .generate(&job, &mut |_, _| ends.push(started.elapsed().as_secs_f64()))
        .expect("the image generates");
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(images[0].dimensions(), (size as u32, size as u32));
    let (text, stepping, decode) = split(&ends, seconds);
    eprintln!("step ends (s): {ends:.1?}");
    // The whole process's peak, as diffusers' side reports it (`ru_maxrss`), and the
    // generation's alone.
    let generation_peak = peak_rss_mb();
    let peak = generation_peak.max(load_peak);
    println!(
        "{{\"impl\": \"candle\", \"part\": \"{prefix}image_{size}\", \"threads\": {threads}, \"min_s\": {seconds:.3}, \"median_s\": {seconds:.3}, \"peak_rss_mb\": {peak:.0}, \"candle\": \"0.11.1\", \"dtype\": \"{dtype_name}\", \"steps\": {steps}, \"text_s\": {text:.3}, \"steps_s\": {stepping:.3}, \"decode_s\": {decode:.3}, \"load_s\": {load_s:.1}, \"load_peak_rss_mb\": {load_peak:.0}, \"generation_peak_rss_mb\": {generation_peak:.0}, \"release_text_encoders\": {release}}}"
    );
}

/// `--part write_checkpoint [--model sd15|sdxl] [--dtype bf16] --out PATH`: a single-file
/// checkpoint of the real architecture with random weights (every tensor seeded by its name,
/// as `random_var_builder` gives them), for `--checkpoint`.
pub(crate) fn write_checkpoint() {
    let (config, _, _) = model_arg();
    let (_, dtype) = dtype_arg();
    let out = arg("--out").expect("--out PATH");
    let tensors = record_random(0, |vb| {
        let vb = vb.set_dtype(dtype);
        use horde_diffusion::parts::{SD1_CLIP_PREFIX, SDXL_CLIP_G_PREFIX, SDXL_CLIP_L_PREFIX};
        let prefixes: &[&str] = match config.family {
            horde_diffusion::Family::Sdxl => &[SDXL_CLIP_L_PREFIX, SDXL_CLIP_G_PREFIX],
            _ => &[SD1_CLIP_PREFIX],
        };
        for (encoder, prefix) in config.text_encoders.iter().zip(prefixes) {
            TextTransformer::new(encoder, vb.pp(prefix.trim_end_matches('.')))?;
        }
        let unet_prefix = horde_diffusion::parts::UNET_PREFIX.trim_end_matches('.');
        UNet::new(&config.unet, config.family, vb.pp(unet_prefix))?;
        let vae_prefix = horde_diffusion::parts::VAE_PREFIX.trim_end_matches('.');
        Vae::new(&config.vae, vb.pp(vae_prefix)).map(|_| ())
    })
    .expect("the networks build");
    candle_core::safetensors::save(&tensors, &out).expect("the checkpoint is written");
    eprintln!("wrote {} tensors to {out}", tensors.len());
}
