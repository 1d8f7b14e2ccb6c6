//! LoRAs beside no LoRAs: one SD 1.5 UNet step at 512² with classifier-free guidance (batch 2),
//! random weights of the real architecture, f32, CPU, without LoRAs and with two merged
//! (`Model::set_loras`); the time to switch LoRA sets between jobs; and what the alternative,
//! a low-rank branch run beside every modified layer at every step, would add to a step (its
//! products alone, timed on the step's own activation shapes). Prints JSON lines in the format
//! of `tools/engine-bench/pytorch_bench.py` (`tools/engine-bench/lora_bench.py` is the
//! diffusers + PEFT side).
//!
//! `cargo bench -p horde-diffusion --bench lora -- [--repeats N] [--rank R] [--dtype bf16]`
//!
//! The LoRAs are random kohya files of rank R (default 16) on every transformer of the UNet
//! (attention q, k, v and out, the feed-forward's two layers, the 1×1 projections in and out:
//! 192 modules, as most shared SD 1.5 LoRAs) and on every layer of the text encoder (72).

use candle_core::{DType, Device, Tensor};
use horde_diffusion::parts::{model_from_var_builder, unet_forward_now, Conditioning, SeededNoise};
use horde_diffusion::tiny::random_var_builder;
use horde_diffusion::{LoadOptions, LoraApplication, LoraFile, ModelConfig};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// The allocator of the `horde` binary, whose worker runs the engine.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;
use common::{arg, keep_freed_memory, peak_rss_mb};

/// (min, median) seconds of `repeats` calls of `run`, each after `before` (untimed).
fn time(repeats: usize, mut before: impl FnMut(usize), mut run: impl FnMut()) -> (f64, f64) {
    let mut times: Vec<f64> = (0..repeats)
        .map(|i| {
            before(i);
            let started = Instant::now();
            run();
            started.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    (times[0], times[times.len() / 2])
}

fn report(part: &str, (min, median): (f64, f64), extra: &str) {
    let threads = candle_core::utils::get_num_threads();
    let dtype = arg("--dtype").unwrap_or_else(|| "f32".into());
    println!(
        "{{\"impl\": \"candle\", \"part\": \"{part}\", \"threads\": {threads}, \"min_s\": {min:.4}, \"median_s\": {median:.4}, \"peak_rss_mb\": {:.0}, \"candle\": \"0.11.1\", \"dtype\": \"{dtype}\"{extra}}}",
        peak_rss_mb()
    );
}

/// One modified layer: its kohya module name, `[out, in]`, whether a 1×1 convolution, and how
/// many rows (tokens × batch) go through it in a step.
struct Layer {
    module: String,
    out: usize,
    inputs: usize,
    conv: bool,
    rows: usize,
}

/// The SD 1.5 UNet's transformer layers (LDM names, as kohya's SDXL trainer and many SD 1.5
/// files spell them) and the text encoder's, with their shapes and rows at 512², batch 2.
fn sd15_layers() -> Vec<Layer> {
    let mut blocks: Vec<(String, usize, usize)> = Vec::new();
    let (channels, tokens) = ([320, 640, 1280], [4096, 1024, 256]);
    for level in 0..3 {
        for j in 0..2 {
            blocks.push((
                format!("input_blocks_{}_1", 1 + level * 3 + j),
                channels[level],
                tokens[level],
            ));
        }
        for j in 0..3 {
            blocks.push((
                format!("output_blocks_{}_1", 3 * (3 - level) + j),
                channels[level],
                tokens[level],
            ));
        }
    }
    blocks.push(("middle_block_1".into(), 1280, 64));
    let mut layers = Vec::new();
    for (block, c, t) in blocks {
        let t = 2 * t;
        let mut add = |name: &str, out, inputs, conv, rows| {
            layers.push(Layer {
                module: format!("lora_unet_{block}_{name}"),
                out,
                inputs,
                conv,
                rows,
            })
        };
        add("proj_in", c, c, true, t);
        add("proj_out", c, c, true, t);
        let b = "transformer_blocks_0";
        for attn in ["attn1", "attn2"] {
            let (context, rows) = if attn == "attn1" {
                (c, t)
            } else {
                (768, 2 * 77)
            };
            add(&format!("{b}_{attn}_to_q"), c, c, false, t);
            add(&format!("{b}_{attn}_to_k"), c, context, false, rows);
            add(&format!("{b}_{attn}_to_v"), c, context, false, rows);
            add(&format!("{b}_{attn}_to_out_0"), c, c, false, t);
        }
        add(&format!("{b}_ff_net_0_proj"), 8 * c, c, false, t);
        add(&format!("{b}_ff_net_2"), c, 4 * c, false, t);
    }
    for i in 0..12 {
        let m = |name: &str| format!("lora_te_text_model_encoder_layers_{i}_{name}");
        for (name, out, inputs) in [
            ("self_attn_q_proj", 768, 768),
            ("self_attn_k_proj", 768, 768),
            ("self_attn_v_proj", 768, 768),
            ("self_attn_out_proj", 768, 768),
            ("mlp_fc1", 3072, 768),
            ("mlp_fc2", 768, 3072),
        ] {
            layers.push(Layer {
                module: m(name),
                out,
                inputs,
                conv: false,
                rows: 0,
            });
        }
    }
    layers
}

/// A random kohya LoRA of `rank` on `layers`, written to `path`.
fn write_lora(layers: &[Layer], rank: usize, seed: u64, path: &Path) {
    let mut tensors = HashMap::new();
    let device = Device::Cpu;
    for (i, layer) in layers.iter().enumerate() {
        let draw = |shape: &[usize], n: u64, std: f64| {
            SeededNoise::new(&[seed * 1_000_000 + 2 * i as u64 + n])
                .sample(shape, &device)
                .and_then(|t| t.reshape(shape))
                .and_then(|t| t * std)
                .and_then(|t| t.to_dtype(DType::F16))
                .unwrap()
        };
        let (down, up) = if layer.conv {
            (vec![rank, layer.inputs, 1, 1], vec![layer.out, rank, 1, 1])
        } else {
            (vec![rank, layer.inputs], vec![layer.out, rank])
        };
        let std = 1.0 / (layer.inputs as f64).sqrt();
        tensors.insert(
            format!("{}.lora_down.weight", layer.module),
            draw(&down, 0, std),
        );
        tensors.insert(
            format!("{}.lora_up.weight", layer.module),
            draw(&up, 1, 0.1),
        );
        let alpha = Tensor::new(rank as f32 / 2.0, &device).unwrap();
        tensors.insert(format!("{}.alpha", layer.module), alpha);
    }
    candle_core::safetensors::save(&tensors, path).unwrap();
}

/// The extra work of the alternative to merging: for each UNet layer, `x · downᵀ · upᵀ` added to
/// its output, for each of `loras` LoRAs, on the rows the layer takes in a step (candle's
/// products, f32; the 1×1 projections as the matrices they are).
fn low_rank_branches(layers: &[Layer], rank: usize, loras: usize) -> Tensor {
    let device = Device::Cpu;
    let mut last = Tensor::zeros(1, DType::F32, &device).unwrap();
    for layer in layers.iter().filter(|l| l.rows > 0) {
        let x = Tensor::ones((layer.rows, layer.inputs), DType::F32, &device).unwrap();
        let mut y = Tensor::zeros((layer.rows, layer.out), DType::F32, &device).unwrap();
        for _ in 0..loras {
            let down = Tensor::ones((layer.inputs, rank), DType::F32, &device).unwrap();
            let up = Tensor::ones((rank, layer.out), DType::F32, &device).unwrap();
            let branch = x.matmul(&down).unwrap().matmul(&up).unwrap();
            y = (y + branch).unwrap();
        }
        last = y
            .narrow(0, 0, 1)
            .unwrap()
            .narrow(1, 0, 1)
            .unwrap()
            .flatten_all()
            .unwrap();
    }
    last
}

fn main() {
    keep_freed_memory();
    let repeats: usize = arg("--repeats").and_then(|r| r.parse().ok()).unwrap_or(3);
    let rank: usize = arg("--rank").and_then(|r| r.parse().ok()).unwrap_or(16);
    let layers = sd15_layers();
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<Arc<LoraFile>> = (0..4)
        .map(|i| {
            let path = dir.path().join(format!("lora{i}.safetensors"));
            write_lora(&layers, rank, 100 + i, &path);
            Arc::new(LoraFile::open(&path).unwrap())
        })
        .collect();
    let set = |a: usize, b: usize| {
        vec![
            LoraApplication {
                file: files[a].clone(),
                model_strength: 0.8,
                clip_strength: 0.6,
            },
            LoraApplication {
                file: files[b].clone(),
                model_strength: 0.5,
                clip_strength: 1.0,
            },
        ]
    };
    // `--dtype f32|bf16`: the weights' and activations' dtype.
    let dtype = match arg("--dtype").as_deref().unwrap_or("f32") {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        other => panic!("unknown dtype {other}: expected f32 or bf16"),
    };
    let options = LoadOptions {
        dtype,
        ..LoadOptions::default()
    };
    let model = model_from_var_builder(
        random_var_builder(0).set_dtype(dtype),
        ModelConfig::sd15(),
        &options,
    )
    .expect("model builds");
    let device = Device::Cpu;
    let latents = SeededNoise::new(&[1, 2])
        .sample(&[4, 64, 64], &device)
        .and_then(|t| t.to_dtype(dtype))
        .unwrap();
    let context = SeededNoise::new(&[3, 4])
        .sample(&[77, 768], &device)
        .and_then(|t| t.to_dtype(dtype))
        .unwrap();
    let timesteps = Tensor::new(&[500f32, 500.0], &device).unwrap();
    let cond = Conditioning {
        context: &context,
        vector: None,
    };
    let step = || {
        std::hint::black_box(unet_forward_now(&model, &latents, &timesteps, &cond).unwrap());
    };
    let modules = format!(", \"rank\": {rank}, \"modules_per_lora\": {}", layers.len());
    step(); // warm-up
    report("unet_step_cfg_512", time(repeats, |_| {}, step), "");
    model.set_loras(&set(0, 1)).unwrap();
    // The set's first step: in bf16 it makes the kept weights of the layers the set modifies.
    report(
        "unet_step_cfg_512_2loras_first",
        time(1, |_| {}, step),
        &modules,
    );
    report(
        "unet_step_cfg_512_2loras_merged",
        time(repeats, |_| {}, step),
        &modules,
    );
    // Switching: from no LoRA to two; from two to two others; back to none.
    let from_base = time(
        repeats,
        |_| model.set_loras(&[]).unwrap(),
        || model.set_loras(&set(0, 1)).unwrap(),
    );
    report("lora_switch_none_to_2", from_base, &modules);
    let swap = time(
        repeats,
        |i| model.set_loras(&set(i % 2, 2 + i % 2)).unwrap(),
        || model.set_loras(&set(2, 3)).unwrap(),
    );
    report("lora_switch_2_to_2_others", swap, &modules);
    let restore = time(
        repeats,
        |_| model.set_loras(&set(0, 1)).unwrap(),
        || model.set_loras(&[]).unwrap(),
    );
    report("lora_switch_2_to_none", restore, &modules);
    let branches = time(
        repeats,
        |_| {},
        || {
            std::hint::black_box(low_rank_branches(&layers, rank, 2));
        },
    );
    report(
        "unet_step_2loras_low_rank_branches_only",
        branches,
        &modules,
    );
}
