#!/usr/bin/env python3
"""PyTorch (diffusers) side of the engine side-by-side benchmark.

Builds the SD 1.5 UNet and VAE with their real configs and *random* weights
(torch.manual_seed(0), default init; no checkpoint needed), then times on CPU:

  unet_step_cfg_512  one UNet forward at 512x512 with classifier-free guidance
                     (latents [2,4,64,64], timesteps [2], context [2,77,768])
  vae_decode_512     one VAE decode [1,4,64,64] -> [1,3,512,512]
  vae_encode_512     one VAE encode [1,3,512,512] -> a sample of the latent
                     distribution (seeded generator) times the scaling factor
                     [1,4,64,64], as diffusers' img2img pipelines start

Each part runs in its own fresh subprocess (this script re-invokes itself with
--part) so that its peak RSS (ru_maxrss) is measured separately. One JSON line
is printed on stdout per measurement; everything else goes to stderr.

See README.md in this directory.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

# The real runwayml/stable-diffusion-v1-5 unet/config.json (diffusers 0.6 era
# keys; everything not listed takes diffusers' default, which matches SD 1.5).
UNET_CONFIG = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    center_input_sample=False,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=(
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ),
    up_block_types=(
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    cross_attention_dim=768,
    attention_head_dim=8,
)

# The real runwayml/stable-diffusion-v1-5 vae/config.json.
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
)

# The real stabilityai/stable-diffusion-xl-base-1.0 unet/config.json (the keys that
# differ from diffusers' defaults). Its VAE has the SD 1.5 VAE's architecture.
SDXL_UNET_CONFIG = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    cross_attention_dim=2048,
    attention_head_dim=(5, 10, 20),
    use_linear_projection=True,
    transformer_layers_per_block=(1, 2, 10),
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)

PART_NAMES = {
    "unet": "unet_step_cfg_512",
    "unet_bf16": "unet_step_cfg_512",
    "vae": "vae_decode_512",
    "vae_encode": "vae_encode_512",
    "sdxl_unet": "sdxl_unet_step_cfg_1024",
    "sdxl_vae": "sdxl_vae_decode_1024",
    "sdxl_vae_encode": "sdxl_vae_encode_1024",
}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def peak_rss_mb():
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if sys.platform == "darwin":
        return r / (1024 * 1024)
    return r / 1024


def time_calls(fn, repeats):
    t0 = time.perf_counter()
    out = fn()  # warm-up
    warm = time.perf_counter() - t0
    log(f"  warm-up: {warm:.3f} s")
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        log(f"  run {i + 1}/{repeats}: {times[-1]:.3f} s")
    return warm, times, out


def run_part(part, threads, repeats):
    import torch
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if part == "unet_bf16" else torch.float32

    sdxl = part.startswith("sdxl_")
    is_unet = part.startswith("unet") or part == "sdxl_unet"
    latent = 128 if sdxl else 64
    t0 = time.perf_counter()
    if is_unet:
        model = UNet2DConditionModel(**(SDXL_UNET_CONFIG if sdxl else UNET_CONFIG))
    else:
        # SDXL's VAE has SD 1.5's architecture, trained to another latent scale.
        model = AutoencoderKL(**VAE_CONFIG, scaling_factor=0.13025 if sdxl else 0.18215)
    if dtype != torch.float32:
        model = model.to(dtype=dtype)
    model = model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    attn = sorted({type(v).__name__ for v in model.attn_processors.values()})
    build_s = time.perf_counter() - t0
    log(f"[{part}] built {type(model).__name__} ({n_params / 1e6:.1f} M params, "
        f"{dtype}) in {build_s:.1f} s; threads={torch.get_num_threads()}")

    g = torch.Generator().manual_seed(1)
    with torch.inference_mode():
        if is_unet:
            x = torch.randn(2, 4, latent, latent, generator=g).to(dtype)
            t = torch.tensor([500, 500], dtype=torch.long)
            ctx = torch.randn(2, 77, 2048 if sdxl else 768, generator=g).to(dtype)
            added = None
            if sdxl:
                added = {
                    "text_embeds": torch.randn(2, 1280, generator=g).to(dtype),
                    "time_ids": torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]] * 2).to(dtype),
                }

            def fn():
                return model(x, t, encoder_hidden_states=ctx,
                             added_cond_kwargs=added, return_dict=False)[0]
        elif part.endswith("vae_encode"):
            image = (torch.rand(1, 3, 8 * latent, 8 * latent, generator=g) * 2 - 1).to(dtype)
            factor = model.config.scaling_factor

            def fn():
                posterior = model.encode(image, return_dict=False)[0]
                return posterior.sample(generator=torch.Generator().manual_seed(2)) * factor
        else:
            z = torch.randn(1, 4, latent, latent, generator=g).to(dtype)

            def fn():
                return model.decode(z, return_dict=False)[0]

        warm, times, out = time_calls(fn, repeats)
        out_f = out.float()
        finite = bool(torch.isfinite(out_f).all())
        out_abs_mean = float(out_f.abs().mean()) if finite else None
        out_shape = list(out.shape)

    rec = {
        "impl": "pytorch",
        "part": PART_NAMES[part],
        "threads": threads,
        "min_s": round(min(times), 4),
        "median_s": round(statistics.median(times), 4),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "torch": torch.__version__.split("+")[0],
        "dtype": "bf16" if dtype == torch.bfloat16 else "f32",
        # Extra (informational) keys; compare.py ignores them.
        "repeats": repeats,
        "warmup_s": round(warm, 4),
        "build_s": round(build_s, 2),
        "params_m": round(n_params / 1e6, 2),
        "out_shape": out_shape,
        "out_finite": finite,
        "out_abs_mean": out_abs_mean,
        "diffusers": diffusers.__version__,
        "attn_processor": ",".join(attn),
    }
    print(json.dumps(rec), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="torch.set_num_threads (default: os.cpu_count())")
    ap.add_argument("--repeats", type=int, default=3,
                    help="timed calls after 1 warm-up (default 3)")
    ap.add_argument("--only", choices=["unet", "vae", "vae_encode"],
                    help="run only this part")
    ap.add_argument("--sdxl", action="store_true",
                    help="SDXL at 1024x1024 instead of SD 1.5 at 512x512")
    ap.add_argument("--bf16", action="store_true",
                    help="also time the UNet in bfloat16 (separate line)")
    ap.add_argument("--part", choices=sorted(PART_NAMES),
                    help=argparse.SUPPRESS)  # internal: run one part in-process
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")

    if args.part:
        run_part(args.part, args.threads, args.repeats)
        return

    parts = []
    prefix = "sdxl_" if args.sdxl else ""
    if args.only in (None, "unet"):
        parts.append(prefix + "unet")
        if args.bf16 and not args.sdxl:
            parts.append("unet_bf16")
    if args.only in (None, "vae"):
        parts.append(prefix + "vae")
    if args.only in (None, "vae_encode"):
        parts.append(prefix + "vae_encode")

    env = dict(os.environ)
    # Keep the intra-op pools of OpenMP/MKL consistent with --threads.
    env["OMP_NUM_THREADS"] = str(args.threads)
    env["MKL_NUM_THREADS"] = str(args.threads)
    failed = False
    for part in parts:
        cmd = [sys.executable, os.path.abspath(__file__), "--part", part,
               "--threads", str(args.threads), "--repeats", str(args.repeats)]
        # stdout carries the JSON line; stderr (progress) passes through.
        r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
        sys.stdout.write(r.stdout)
        sys.stdout.flush()
        if r.returncode != 0:
            log(f"part {part} failed with exit status {r.returncode}")
            failed = True
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
