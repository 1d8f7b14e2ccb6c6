//! The engine beside PyTorch: one SD 1.5 UNet step at 512×512 with classifier-free guidance
//! (batch 2), one VAE decode (64×64 latent → 512×512) and one VAE encode (512×512 → a seeded
//! sample of the 64×64 latent, scaled), or the same for SDXL at 1024×1024 (`--model sdxl`),
//! random weights of the real architecture, f32, CPU. Prints one JSON line per part, in the format of
//! `tools/engine-bench/pytorch_bench.py`, for `tools/engine-bench/compare.py`.
//!
//! `cargo bench -p horde-diffusion --bench engine -- --part unet|vae|vae_encode [--repeats N]
//! [--model sd15|sdxl] [--dtype f32|f16|bf16|bf16-vector|bf16-widened] [--decode whole|bands] [--encode whole|bands]
//! [--purge] [--cold]`; run each
//! part in its own process so that peak RSS is the part's own (`tools/engine-bench/run.sh`).
//! `--cold` skips the untimed first call: the first timed call then pays for its fresh memory,
//! as a worker's first job does.
//! `--part hires_fix [--steps N]` runs one whole hires-fix job (512² then 1024²) through
//! `Model::generate_with`. `--part image [--low-memory]` runs one whole image through `Model::generate`
//! (`image/mod.rs`: text encoding, k_euler_a steps, decode).
//! `--part conv [--dtype bf16] [--shape NAME]` times each 3×3 convolution of the networks through candle, our
//! direct kernel, Winograd and in bf16 (with SDXL's 1 280 channels at 32×32, its 1 920 → 640 at
//! 64×64, and `filters only`: one 4×4 tile, F(4×4)'s time its filter transform's).
//! `--part conv1x1` times SD 1.5's 1×1 convolutions (`kernels::conv::conv2d_1x1`).
//! `--part attention` times the fused attention on the UNets' and the VAE's shapes in f32 and
//! bf16; `--part text [--model sdxl] [--dtype bf16]` each text encoder over two prompts.
//! `--part peak` measures one core's peak rate (24 independent chains of `vfmadd231ps` and of
//! `vdpbf16ps` on 512-bit registers, nothing from memory): the ceiling the products' rates are
//! fractions of (BENCHMARKS.md).

use candle_core::{Device, Tensor};
use horde_diffusion::parts::{
    Conditioning, LatentDistribution, SeededNoise, UNet, Vae, UNET_PREFIX, VAE_PREFIX,
};
use horde_diffusion::tiny::random_var_builder;
use horde_diffusion::ModelConfig;
use std::time::Instant;

/// The allocator of the `horde` binary, whose worker runs the engine.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;
use common::{arg, keep_freed_memory, peak_rss_mb};
mod image;

fn time(repeats: usize, mut run: impl FnMut() -> Tensor) -> (f64, f64) {
    // `--cold`: no warm-up, so the first timed call pays for its fresh memory as a job does.
    if !std::env::args().any(|a| a == "--cold") {
        run();
    }
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

/// A seeded sample of the latent distribution, scaled as image-to-image starts from it.
fn encode_sample(distribution: &candle_core::Result<LatentDistribution>, scale: f64) -> Tensor {
    let distribution = distribution.as_ref().unwrap();
    (distribution.sample(&mut SeededNoise::new(&[7])).unwrap() * scale).unwrap()
}

/// The fastest of 3 calls of `run` after one untimed call, in milliseconds.
fn best_of_3_ms(run: &dyn Fn() -> Tensor) -> f64 {
    run();
    (0..3)
        .map(|_| {
            let started = Instant::now();
            std::hint::black_box(run());
            started.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::INFINITY, f64::min)
}

/// `--part conv`: each 3×3 convolution shape of the SD 1.5 UNet (batch 2, 512²) and VAE
/// decoder (512²) through candle's conv2d, our direct kernel and Winograd, minimum of 3
/// runs each, in milliseconds: where `nn`'s Winograd threshold comes from; and in bf16 through
/// `nn::conv` (bf16 products where the CPU has AVX512-BF16, the weights rearranged at the first
/// call and kept, as in a network). `--dtype bf16` times the bf16 column alone, the fastest of
/// `--repeats` calls (10 unless given), for a profile of it; `--shape "unet 32x32"` one shape.
fn compare_convolutions() {
    use horde_diffusion::parts::kernels::{
        conv2d_3x3, conv2d_3x3_f4, conv2d_im2col, conv2d_stride1,
    };
    let shapes = [
        ("unet 64x64", 2, 320, 320, 64),
        ("unet 32x32", 2, 640, 640, 32),
        ("unet 16x16", 2, 1280, 1280, 16),
        ("unet 8x8", 2, 1280, 1280, 8),
        ("sdxl 32x32", 2, 1280, 1280, 32),
        ("sdxl 64x64 up", 2, 1920, 640, 64),
        // The rest of SDXL's 3×3 convolutions at 1 024² (batch 2), by level.
        ("sdxl 128x128", 2, 320, 320, 128),
        ("sdxl 128x128 up 960", 2, 960, 320, 128),
        ("sdxl 128x128 up 640", 2, 640, 320, 128),
        ("sdxl 128x128 upsample", 2, 640, 640, 128),
        ("sdxl 64x64", 2, 640, 640, 64),
        ("sdxl 64x64 in", 2, 320, 640, 64),
        ("sdxl 64x64 up 1280", 2, 1280, 640, 64),
        ("sdxl 64x64 up 960", 2, 960, 640, 64),
        ("sdxl 64x64 upsample", 2, 1280, 1280, 64),
        ("sdxl 32x32 in", 2, 640, 1280, 32),
        ("sdxl 32x32 up 2560", 2, 2560, 1280, 32),
        ("sdxl 32x32 up 1920", 2, 1920, 1280, 32),
        // One 4×4 tile: F(4×4)'s time is its filter transform's (1 280 × 1 280 filters).
        ("filters only", 1, 1280, 1280, 4),
        ("vae 64x64", 1, 512, 512, 64),
        ("vae 128x128", 1, 512, 512, 128),
        ("vae 256x256", 1, 256, 256, 256),
        ("vae 512x512", 1, 128, 128, 512),
    ];
    let bf16_only = arg("--dtype").as_deref() == Some("bf16");
    let repeats: usize = arg("--repeats").and_then(|r| r.parse().ok()).unwrap_or(10);
    if bf16_only {
        println!("shape                 bf16 ms");
    } else {
        println!(
            "shape                 candle ms   direct ms   im2col ms   winograd ms   F(4x4) ms   bf16 ms"
        );
    }
    let only = arg("--shape");
    for (name, batch, c_in, c_out, size) in shapes {
        if only.as_deref().is_some_and(|only| only != name) {
            continue;
        }
        // One noise stream per leading item: `batch` images, `c_out` filters.
        let noise = |items: usize, per_item: &[usize]| {
            let seeds: Vec<u64> = (0..items as u64).collect();
            SeededNoise::new(&seeds)
                .sample(per_item, &Device::Cpu)
                .unwrap()
        };
        let x = noise(batch, &[c_in, size, size]);
        let w = (noise(c_out, &[c_in, 3, 3]) * 0.05).unwrap();
        let bf16 = bf16_convolution_ms(&x, &w, if bf16_only { repeats } else { 3 });
        if bf16_only {
            println!("{name:<20} {bf16:>9.2}");
            continue;
        }
        let candle = best_of_3_ms(&|| x.conv2d(&w, 1, 1, 1, 1).unwrap());
        let direct = best_of_3_ms(&|| conv2d_stride1(&x, &w, None, 1).unwrap());
        let im2col = if size <= 32 {
            best_of_3_ms(&|| conv2d_im2col(&x, &w, None, 1, 1, false).unwrap())
        } else {
            f64::NAN // the columns of a large map are 9 × its size: not a way we take there
        };
        let winograd = best_of_3_ms(&|| conv2d_3x3(&x, &w, None, 1).unwrap());
        let winograd4 = best_of_3_ms(&|| conv2d_3x3_f4(&x, &w, None, 1, false).unwrap());
        println!(
            "{name:<20} {candle:>10.1} {direct:>11.1} {im2col:>11.1} {winograd:>13.1} {winograd4:>11.1} {bf16:>9.1}"
        );
    }
}

/// The fastest of `repeats` calls (after one untimed) of `x` (f32) convolved by `w` as a bf16
/// layer, `nn::conv` with padding 1, in milliseconds; NaN where the CPU has no AVX512-BF16.
fn bf16_convolution_ms(x: &Tensor, w: &Tensor, repeats: usize) -> f64 {
    use candle_core::{DType, Module};
    if !horde_diffusion::parts::kernels::bf16_products() {
        return f64::NAN;
    }
    let (c_out, c_in, k, _) = w.dims4().unwrap();
    let half = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
    let weights = std::collections::HashMap::from([
        ("weight".to_string(), half(w)),
        (
            "bias".to_string(),
            Tensor::zeros(c_out, DType::BF16, &Device::Cpu).unwrap(),
        ),
    ]);
    let vb = candle_nn::VarBuilder::from_tensors(weights, DType::BF16, &Device::Cpu);
    let conv = horde_diffusion::nn::conv(c_in, c_out, k, 1, 1, vb).unwrap();
    let x = half(x);
    conv.forward(&x).unwrap(); // rearranges the weights, kept from then on
    (0..repeats)
        .map(|_| {
            let started = Instant::now();
            std::hint::black_box(conv.forward(&x).unwrap());
            started.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::INFINITY, f64::min)
}

/// `--part attention`: the fused attention kernel on the SD 1.5 UNet's attention shapes at
/// 512² (batch 2, 8 heads), SDXL's self-attention at 1024² (heads of 64) and the VAE's mid
/// block at 512² and 1024² (batch 1, one head of 512), in f32 and in
/// bf16 (bf16 products where the CPU has AVX512-BF16), minimum of 3 runs each, in
/// milliseconds, with the FLOP rate of its two products.
fn time_attention() {
    use candle_core::DType;
    use horde_diffusion::parts::kernels::fused_attention;
    let shapes = [
        ("self 4096 x 320", 4096, 4096, 320, 8),
        ("cross 4096 x 77", 4096, 77, 320, 8),
        ("self 1024 x 640", 1024, 1024, 640, 8),
        ("self 256 x 1280", 256, 256, 1280, 8),
        ("SDXL self 4096 x 640", 4096, 4096, 640, 10),
        ("SDXL self 1024 x 1280", 1024, 1024, 1280, 20),
        ("VAE mid 4096 x 512", 4096, 4096, 512, 1),
        ("SDXL VAE mid 16384", 16384, 16384, 512, 1),
    ];
    println!("shape                 f32 ms   GFLOP/s   bf16 ms   GFLOP/s");
    for (name, q_len, k_len, width, heads) in shapes {
        // The UNet's batch of two (guidance); the VAE decodes one image.
        let batch = if name.contains("VAE") { 1 } else { 2 };
        let noise = |len: usize, seed: u64| {
            SeededNoise::new(&[seed, seed + 1][..batch])
                .sample(&[len, width], &Device::Cpu)
                .unwrap()
        };
        let (q, k, v) = (noise(q_len, 1), noise(k_len, 3), noise(k_len, 5));
        let half = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
        let (qh, kh, vh) = (half(&q), half(&k), half(&v));
        let f32_ms = best_of_3_ms(&|| fused_attention(&q, &k, &v, heads).unwrap());
        let bf16_ms = best_of_3_ms(&|| fused_attention(&qh, &kh, &vh, heads).unwrap());
        let mflop = 2.0 * 2.0 * batch as f64 * (q_len * k_len * width) as f64 / 1e6;
        println!(
            "{name:<21} {f32_ms:>7.1} {:>9.0} {bf16_ms:>9.1} {:>9.0}",
            mflop / f32_ms,
            mflop / bf16_ms
        );
    }
}

/// One seeded sample of standard normal noise of `shape`, f32 on the CPU.
fn one_sample(shape: &[usize], seed: u64) -> Tensor {
    SeededNoise::new(&[seed])
        .sample(shape, &Device::Cpu)
        .and_then(|t| t.squeeze(0))
        .unwrap()
}

/// `--part conv1x1`: SD 1.5's 1×1 convolutions at 512² (batch 2, NCHW, with their bias):
/// the spatial transformers' `proj_in`/`proj_out` at each level and the widest skip
/// connections of the up blocks, minimum of 3 runs each, in milliseconds and GFLOP/s.
fn time_conv_1x1() {
    use horde_diffusion::parts::kernels::conv2d_1x1;
    let shapes = [
        ("proj 320 at 64x64", 320, 320, 64),
        ("proj 640 at 32x32", 640, 640, 32),
        ("proj 1280 at 16x16", 1280, 1280, 16),
        ("skip 960->320 at 64x64", 960, 320, 64),
        ("skip 1920->640 at 32x32", 1920, 640, 32),
        ("skip 2560->1280 at 16x16", 2560, 1280, 16),
    ];
    println!("shape                       ms   GFLOP/s");
    for (name, c_in, c_out, size) in shapes {
        let x = SeededNoise::new(&[1, 2])
            .sample(&[c_in, size, size], &Device::Cpu)
            .unwrap();
        let (weight, bias) = (one_sample(&[c_out, c_in, 1, 1], 3), one_sample(&[c_out], 4));
        let ms = best_of_3_ms(&|| conv2d_1x1(&x, &weight, Some(&bias)).unwrap());
        let gflop = 2.0 * 2.0 * (c_in * c_out * size * size) as f64 / 1e6;
        println!("{name:<25} {ms:>6.1} {:>9.0}", gflop / ms);
    }
}

/// `--part text [--model sd15|sdxl] [--dtype f32|bf16]`: each text encoder of the model over
/// two prompts of 77 random token ids (the prompt and the negative prompt, as a job encodes
/// them), all its layers, random weights; minimum of 3 runs after a warm-up, in milliseconds.
fn time_text() {
    use horde_diffusion::parts::{
        TextTransformer, SD1_CLIP_PREFIX, SDXL_CLIP_G_PREFIX, SDXL_CLIP_L_PREFIX,
    };
    let config = match arg("--model").as_deref().unwrap_or("sd15") {
        "sd15" => ModelConfig::sd15(),
        "sdxl" => ModelConfig::sdxl(),
        other => panic!("unknown model {other}: expected sd15 or sdxl"),
    };
    let dtype_name = arg("--dtype").unwrap_or_else(|| "f32".into());
    let dtype = horde_diffusion::dtype_named(&dtype_name).expect("--dtype f32, f16 or bf16");
    let prefixes: &[&str] = match config.family {
        horde_diffusion::Family::Sdxl => &[SDXL_CLIP_L_PREFIX, SDXL_CLIP_G_PREFIX],
        _ => &[SD1_CLIP_PREFIX],
    };
    let vb = random_var_builder(0).set_dtype(dtype);
    for (encoder, prefix) in config.text_encoders.iter().zip(prefixes) {
        let text = TextTransformer::new(encoder, vb.pp(prefix.trim_end_matches('.')))
            .expect("the encoder builds");
        let ids: Vec<u32> = (0..2 * 77u32).map(|i| (i * 7919) % 49_000).collect();
        let tokens = Tensor::from_vec(ids, (2, 77), &Device::Cpu).unwrap();
        let ms = best_of_3_ms(&|| text.hidden_states(&tokens, encoder.layers).unwrap());
        println!("{prefix:<40} {dtype_name:>5} {ms:>9.1} ms");
    }
}

/// `--part linear`: the SD 1.5 UNet's largest linear layers at 512² (batch 2) as candle's
/// matrix product (which `nn::Linear` ran before `kernels::linear`), with the weight as stored
/// (`[out, in]`, read transposed) and pre-transposed (`[in, out]`), then through
/// `kernels::linear` in f32 and in bf16 (bf16 products where the CPU has AVX512-BF16),
/// minimum of 3 runs each, in milliseconds and GFLOP/s.
fn time_linear() {
    use candle_core::DType;
    use horde_diffusion::parts::kernels::linear;
    // `--model sdxl`: SDXL's at 1 024² (batch 2) instead of SD 1.5's at 512².
    let shapes: &[(&str, usize, usize, usize)] = match arg("--model").as_deref() {
        Some("sdxl") => &[
            ("sdxl attn 2048x1280->1280", 2048, 1280, 1280),
            ("sdxl qkv 2048x1280->3840", 2048, 1280, 3840),
            ("sdxl ff in 2048x1280->10240", 2048, 1280, 10240),
            ("sdxl ff out 2048x5120->1280", 2048, 5120, 1280),
            ("sdxl attn 8192x640->640", 8192, 640, 640),
            ("sdxl ff in 8192x640->5120", 8192, 640, 5120),
            ("sdxl ff out 8192x2560->640", 8192, 2560, 640),
            ("sdxl kv 154x2048->1280", 154, 2048, 1280),
        ],
        _ => &[
            ("ff in 8192x320->2560", 8192, 320, 2560),
            ("ff out 8192x1280->320", 8192, 1280, 320),
            ("attn 8192x320->320", 8192, 320, 320),
            ("ff in 2048x640->5120", 2048, 640, 5120),
            ("ff in 512x1280->10240", 512, 1280, 10240),
            ("kv 154x768->320", 154, 768, 320),
        ],
    };
    // A layer's input `[rows, d_in]` and weight `[d_out, d_in]`, f32, and its work in GFLOP.
    let operands = |rows: usize, d_in: usize, d_out: usize| {
        let gflop = 2.0 * (rows * d_in * d_out) as f64 / 1e6;
        (
            one_sample(&[rows, d_in], 1),
            one_sample(&[d_out, d_in], 2),
            gflop,
        )
    };
    // `--dtype bf16`: our bf16 product only (its weight packed at each call, as a weight past
    // the kept budget is).
    if arg("--dtype").as_deref() == Some("bf16") {
        println!("shape                          ours bf16 ms   GFLOP/s");
        for &(name, rows, d_in, d_out) in shapes {
            let (x, w, gflop) = operands(rows, d_in, d_out);
            let half = |t: Tensor| t.to_dtype(DType::BF16).unwrap();
            let (x, w) = (half(x), half(w));
            let ms = best_of_3_ms(&|| linear(&x, &w, None, None).unwrap());
            println!("{name:<30} {ms:>12.1} {:>9.0}", gflop / ms);
        }
        return;
    }
    println!(
        "shape                      as stored ms   GFLOP/s   transposed ms   GFLOP/s   ours f32 ms   GFLOP/s   ours bf16 ms   GFLOP/s"
    );
    for &(name, rows, d_in, d_out) in shapes {
        let (x, w, gflop) = operands(rows, d_in, d_out);
        let w_t = w.t().unwrap().contiguous().unwrap();
        let (x_half, w_half) = (
            x.to_dtype(DType::BF16).unwrap(),
            w.to_dtype(DType::BF16).unwrap(),
        );
        let stored = best_of_3_ms(&|| x.matmul(&w.t().unwrap()).unwrap());
        let transposed = best_of_3_ms(&|| x.matmul(&w_t).unwrap());
        let ours = best_of_3_ms(&|| linear(&x, &w, None, None).unwrap());
        let ours_bf16 = best_of_3_ms(&|| linear(&x_half, &w_half, None, None).unwrap());
        println!(
            "{name:<26} {stored:>12.1} {:>9.0} {transposed:>15.1} {:>9.0} {ours:>13.1} {:>9.0} {ours_bf16:>14.1} {:>9.0}",
            gflop / stored,
            gflop / transposed,
            gflop / ours,
            gflop / ours_bf16
        );
    }
}

/// `--part ops`: the UNet's element-wise and normalisation ops at 512² (batch 2), minimum of 3
/// runs each, in milliseconds (PyTorch's, measured beside them, are in BENCHMARKS.md).
fn time_ops() {
    use candle_core::Module;
    use horde_diffusion::nn;
    let noise = |shape: &[usize], seed: u64| {
        SeededNoise::new(&[seed, seed + 1])
            .sample(shape, &Device::Cpu)
            .unwrap()
    };
    let vb = random_var_builder(0);
    let map = noise(&[320, 64, 64], 1);
    let other = noise(&[320, 64, 64], 3);
    let tokens = noise(&[4096, 320], 5);
    let wide = noise(&[4096, 2560], 7);
    let deep = noise(&[1280, 16, 16], 9);
    let norm = nn::group_norm(320, 1e-5, vb.pp("gn")).unwrap();
    let layer_norm = nn::layer_norm(320, vb.pp("ln")).unwrap();
    // Two seeds per `noise`: 2 × 160 filters, and 2 × 1 280 rows of weights and biases.
    let down_w = (noise(&[160, 320, 3, 3], 11) * 0.05).unwrap();
    let down_w = down_w.reshape((320, 320, 3, 3)).unwrap();
    let deep_w = (noise(&[640, 1280, 3, 3], 17) * 0.02).unwrap();
    let deep_w = deep_w.reshape((1280, 1280, 3, 3)).unwrap();
    let linear = nn::Linear::new(
        noise(&[1280, 320], 13).reshape((2560, 320)).unwrap(),
        Some(noise(&[1280], 15).flatten_all().unwrap()),
    );
    let one_by_one = down_w.narrow(2, 1, 1).unwrap().narrow(3, 1, 1).unwrap();
    let one_by_one = one_by_one.contiguous().unwrap();
    use horde_diffusion::parts::kernels as conv;
    type Op<'a> = Box<dyn Fn() -> Tensor + 'a>;
    let rows: [(&str, Op<'_>); 14] = [
        (
            "stride-2 conv [2,320,64,64], candle",
            Box::new(|| map.conv2d(&down_w, 1, 2, 1, 1).unwrap()),
        ),
        (
            "stride-2 conv [2,320,64,64], ours",
            Box::new(|| conv::conv2d_stride2(&map, &down_w, None, 1).unwrap()),
        ),
        (
            "1x1 conv [2,320,64,64], banded",
            Box::new(|| conv::conv2d_stride1(&map, &one_by_one, None, 0).unwrap()),
        ),
        (
            "1x1 conv [2,320,64,64], one product",
            Box::new(|| conv::conv2d_1x1(&map, &one_by_one, None).unwrap()),
        ),
        (
            "stride-2 conv [2,1280,16,16], candle",
            Box::new(|| deep.conv2d(&deep_w, 1, 2, 1, 1).unwrap()),
        ),
        (
            "stride-2 conv [2,1280,16,16], ours",
            Box::new(|| conv::conv2d_stride2(&deep, &deep_w, None, 1).unwrap()),
        ),
        (
            "linear + bias [2,4096,320]->2560",
            Box::new(|| linear.forward(&tokens).unwrap()),
        ),
        (
            "group norm + SiLU [2,320,64,64]",
            Box::new(|| norm.forward_silu(&map).unwrap()),
        ),
        (
            "layer norm [2,4096,320]",
            Box::new(|| layer_norm.forward(&tokens).unwrap()),
        ),
        (
            "GEGLU [2,4096,2560]",
            Box::new(|| nn::geglu(&wide).unwrap()),
        ),
        ("add [2,320,64,64]", Box::new(|| (&map + &other).unwrap())),
        (
            "to tokens [2,320,64,64]",
            Box::new(|| nn::to_tokens(&map).unwrap().contiguous().unwrap()),
        ),
        (
            "upsample [2,1280,16,16] 2x",
            Box::new(|| deep.upsample_nearest2d(32, 32).unwrap()),
        ),
        (
            "cat [2,320,64,64] x2",
            Box::new(|| Tensor::cat(&[&map, &other], 1).unwrap()),
        ),
    ];
    for (name, run) in rows {
        println!("{name:<34} {:>8.2} ms", best_of_3_ms(&*run));
    }
}

/// `--part hires_fix`: one whole hires-fix job, SD 1.5 architecture (random weights), 1024²
/// requested: the text encoder, a first pass of `--steps` (default 4) DDIM steps at 512², the
/// latent upscale, the second pass at strength 0.5 (horde_sdk's step count, of which the start
/// step leaves ⌊steps · 0.5⌋) and the 1024² decode, timed once (no warm-up: one job is what a
/// worker runs; `tools/engine-bench/hires_bench.py` is the diffusers side).
fn time_hires_fix(threads: usize) {
    use horde_diffusion::parts::model_from_var_builder;
    use horde_diffusion::{Generation, HiresFix, LoadOptions, SamplerKind};
    let steps: usize = arg("--steps").and_then(|r| r.parse().ok()).unwrap_or(4);
    let model = model_from_var_builder(
        random_var_builder(0),
        ModelConfig::sd15(),
        &LoadOptions::default(),
    )
    .expect("model builds");
    let job = Generation {
        prompt: "a lighthouse on a cliff at dusk, oil painting".into(),
        negative_prompt: "blurry".into(),
        width: 1024,
        height: 1024,
        steps,
        cfg_scale: 7.5,
        sampler: SamplerKind::Ddim,
        karras: false,
        clip_skip: 1,
        tiling: false,
        seeds: vec![1],
        prompts: vec![],
        embeddings: Vec::new(),
    };
    let hires = HiresFix {
        denoising_strength: 0.5,
    };
    let mut evaluations = Vec::new();
    let started = Instant::now();
    let images = model
        .generate_with(&job, None, Some(&hires), &mut |done, total| {
            evaluations.push((done, total, started.elapsed().as_secs_f64()));
        })
        .expect("hires fix runs");
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(images[0].dimensions(), (1024, 1024));
    eprintln!("steps (done, total, s): {evaluations:?}");
    println!(
        "{{\"impl\": \"candle\", \"part\": \"hires_fix_512_to_1024\", \"threads\": {threads}, \"min_s\": {seconds:.3}, \"median_s\": {seconds:.3}, \"peak_rss_mb\": {:.0}, \"candle\": \"0.11.1\", \"dtype\": \"f32\", \"steps\": {steps}}}",
        peak_rss_mb()
    );
}

fn main() {
    let part = arg("--part").unwrap_or_else(|| "unet".into());
    if part == "ops" {
        return time_ops();
    }
    // Every part as the worker runs: freed memory kept (`--purge`, or `--low-memory` as the
    // worker's `low_memory` setting: handed back).
    let flag = |name: &str| std::env::args().any(|a| a == name);
    if !flag("--purge") && !flag("--low-memory") {
        keep_freed_memory();
    }
    if part == "linear" {
        return time_linear();
    }
    if part == "conv" {
        return compare_convolutions();
    }
    if part == "attention" {
        return time_attention();
    }
    if part == "conv1x1" {
        return time_conv_1x1();
    }
    if part == "text" {
        return time_text();
    }
    if part == "peak" {
        return peak::print();
    }
    let repeats: usize = arg("--repeats").and_then(|r| r.parse().ok()).unwrap_or(3);
    let threads = candle_core::utils::get_num_threads();
    if part == "hires_fix" {
        return time_hires_fix(threads);
    }
    if part == "image" {
        return image::time_image(threads);
    }
    if part == "write_checkpoint" {
        return image::write_checkpoint();
    }
    // `--model sd15|sdxl`: SD 1.5 at 512² (the default) or SDXL at 1024².
    let (config, model, size) = match arg("--model").as_deref().unwrap_or("sd15") {
        "sd15" => (ModelConfig::sd15(), "", 512),
        "sdxl" => (ModelConfig::sdxl(), "sdxl_", 1024),
        other => panic!("unknown model {other}: expected sd15 or sdxl"),
    };
    let latent = size / 8;
    // `--dtype f32|f16|bf16|bf16-vector|bf16-widened`: the weights' and activations' dtype.
    // Our kernels compute in f32, except the bf16 products (`kernels::bf16_gemm`) where the
    // CPU has AVX512-BF16 (on AMX tiles where it has them); `bf16-vector` keeps them off the
    // tiles and `bf16-widened` turns them off, to time those paths beside them.
    let (dtype_name, dtype) = match arg("--dtype").as_deref().unwrap_or("f32") {
        "f32" => ("f32", candle_core::DType::F32),
        "f16" => ("f16", candle_core::DType::F16),
        "bf16" => ("bf16", candle_core::DType::BF16),
        "bf16-vector" => {
            horde_diffusion::parts::kernels::use_amx_tiles(false);
            ("bf16-vector", candle_core::DType::BF16)
        }
        "bf16-widened" => {
            horde_diffusion::parts::kernels::use_bf16_products(false);
            ("bf16-widened", candle_core::DType::BF16)
        }
        other => {
            panic!("unknown dtype {other}: expected f32, f16, bf16, bf16-vector or bf16-widened")
        }
    };
    let vb = random_var_builder(0).set_dtype(dtype);
    let device = Device::Cpu;
    let noise = |seeds: &[u64], shape: &[usize]| {
        SeededNoise::new(seeds)
            .sample(shape, &device)
            .and_then(|t| t.to_dtype(dtype))
            .unwrap()
    };
    let (name, (min, median)) = match part.as_str() {
        "unet" => {
            let unet = UNet::new(
                &config.unet,
                config.family,
                vb.pp(UNET_PREFIX.trim_end_matches('.')),
            )
            .expect("UNet builds");
            let latents = noise(&[1, 2], &[4, latent, latent]);
            let context = noise(&[3, 4], &[77, config.context_dim()]);
            let vector = config
                .unet
                .adm_in_channels
                .map(|adm| noise(&[5, 6], &[adm]));
            let timesteps = Tensor::new(&[500f32, 500.0], &device)
                .and_then(|t| t.to_dtype(dtype))
                .unwrap();
            let cond = Conditioning {
                context: &context,
                vector: vector.as_ref(),
            };
            (
                format!("{model}unet_step_cfg_{size}"),
                time(repeats, || {
                    unet.forward(&latents, &timesteps, &cond).unwrap()
                }),
            )
        }
        "vae" => {
            let vae =
                Vae::new(&config.vae, vb.pp(VAE_PREFIX.trim_end_matches('.'))).expect("VAE builds");
            let latents = noise(&[5], &[4, latent, latent]);
            // `--decode whole|bands`: force one way; by default `decode` picks by size.
            let decode = arg("--decode").unwrap_or_else(|| "auto".into());
            let suffix = match decode.as_str() {
                "auto" => String::new(),
                forced => format!("_{forced}"),
            };
            (
                format!("{model}vae_decode_{size}{suffix}"),
                time(repeats, || match decode.as_str() {
                    "whole" => vae.decoder.decode_whole(&latents).unwrap(),
                    "bands" => vae
                        .decoder
                        .decode_in_bands(&latents, horde_diffusion::parts::BAND_PIXELS)
                        .unwrap(),
                    _ => vae.decoder.decode(&latents).unwrap(),
                }),
            )
        }
        "vae_encode" => {
            let vae =
                Vae::new(&config.vae, vb.pp(VAE_PREFIX.trim_end_matches('.'))).expect("VAE builds");
            // An image in [-1, 1], as `encode_images` makes of 8-bit pixels.
            let pixels = (noise(&[6], &[3, size, size]) * 0.5)
                .and_then(|t| t.clamp(-1f32, 1f32))
                .unwrap();
            // `--encode whole|bands`: force one way; by default `distribution` picks by size.
            let encode = arg("--encode").unwrap_or_else(|| "auto".into());
            let suffix = match encode.as_str() {
                "auto" => String::new(),
                forced => format!("_{forced}"),
            };
            let scale = config.family.latent_scale();
            (
                format!("{model}vae_encode_{size}{suffix}"),
                time(repeats, || {
                    let moments = match encode.as_str() {
                        "whole" => vae.encoder.moments_whole(&pixels).unwrap(),
                        "bands" => vae
                            .encoder
                            .moments_in_bands(&pixels, horde_diffusion::parts::BAND_PIXELS)
                            .unwrap(),
                        _ => return encode_sample(&vae.encoder.distribution(&pixels), scale),
                    };
                    encode_sample(&LatentDistribution::from_moments(&moments), scale)
                }),
            )
        }
        other => panic!("unknown part {other}: expected unet, vae or vae_encode"),
    };
    println!(
        "{{\"impl\": \"candle\", \"part\": \"{name}\", \"threads\": {threads}, \"min_s\": {min:.3}, \"median_s\": {median:.3}, \"peak_rss_mb\": {:.0}, \"candle\": \"0.11.1\", \"dtype\": \"{dtype_name}\"}}",
        peak_rss_mb()
    );
}

/// One core's peak arithmetic rate, from chains of vector instructions with nothing but
/// registers: 24 accumulators, so every instruction's latency is hidden behind the others.
mod peak {
    use std::time::Instant;

    /// Instructions per timed run, in groups of 24.
    const GROUPS: usize = 10_000_000;

    /// Prints the f32 FMA rate (AVX-512F) and the bf16 dot-product rate (AVX512-BF16) where
    /// the CPU has them, the best of three runs each, as GFLOP/s (an FMA lane is 2 FLOP, a
    /// `vdpbf16ps` lane 4).
    pub(super) fn print() {
        #[cfg(target_arch = "x86_64")]
        {
            let best = |run: fn() -> f32, flop: f64| {
                let mut best = 0f64;
                for _ in 0..3 {
                    let start = Instant::now();
                    std::hint::black_box(run());
                    let seconds = start.elapsed().as_secs_f64();
                    best = best.max(GROUPS as f64 * 24.0 * flop / seconds / 1e9);
                }
                best
            };
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F, checked just above.
                #[allow(unsafe_code)]
                let rate = best(|| unsafe { fma_f32() }, 32.0);
                println!("f32 FMA (zmm): {rate:.1} GFLOP/s");
            }
            if horde_diffusion::parts::kernels::bf16_products() {
                // SAFETY: the CPU has AVX512-BF16 (and AVX-512F), checked just above.
                #[allow(unsafe_code)]
                let rate = best(|| unsafe { dot_bf16() }, 64.0);
                println!("bf16 dot product (zmm): {rate:.1} GFLOP/s");
            }
        }
    }

    /// 24 chains of `acc = acc·x + y`, `GROUPS` steps each.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[allow(unsafe_code)]
    unsafe fn fma_f32() -> f32 {
        use std::arch::x86_64::*;
        let (x, y) = std::hint::black_box((_mm512_set1_ps(1.0), _mm512_set1_ps(1e-7)));
        let mut acc = std::array::from_fn::<_, 24, _>(|i| _mm512_set1_ps(i as f32));
        for _ in 0..std::hint::black_box(GROUPS) {
            for acc in &mut acc {
                *acc = _mm512_fmadd_ps(*acc, x, y);
            }
        }
        acc.iter().map(|a| _mm512_reduce_add_ps(*a)).sum()
    }

    /// 24 chains of `acc += a·b` in bf16 pairs, `GROUPS` steps each.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512bf16,avx512f,avx512bw,avx512vl")]
    #[allow(unsafe_code)]
    unsafe fn dot_bf16() -> f32 {
        use std::arch::x86_64::*;
        // bf16 1.0 and 2⁻⁷ in each half of every word.
        let to_bf16 = |bits: i32| std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(bits));
        let (a, b) = std::hint::black_box((to_bf16(0x3f80_3f80), to_bf16(0x3c00_3c00)));
        let mut acc = std::array::from_fn::<_, 24, _>(|i| _mm512_set1_ps(i as f32));
        for _ in 0..std::hint::black_box(GROUPS) {
            for acc in &mut acc {
                *acc = _mm512_dpbf16_ps(*acc, a, b);
            }
        }
        acc.iter().map(|a| _mm512_reduce_add_ps(*a)).sum()
    }
}
