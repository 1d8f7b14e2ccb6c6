#!/usr/bin/env python3
"""The diffusers side of the whole-image benchmark (issue 31, point 3): one complete image,
random weights of the real architecture, as `engine --part image` makes it.

SD 1.5 at 512x512 (default) or SDXL 1.0 base at 1024x1024 (`--sdxl`): the text encoder(s) on
the prompt and the negative prompt (CLIP ViT-L; SDXL adds OpenCLIP ViT-bigG with its
projection, and conditions on both encoders' penultimate layers and bigG's pooled output), then
`StableDiffusionPipeline` / `StableDiffusionXLPipeline` with `EulerAncestralDiscreteScheduler`
(k_euler_a), guidance 7.5, `output_type="pil"` (the VAE decode and the conversion to 8-bit
pixels included). Random weights cannot be read by a tokenizer, so, as in hires_bench.py, the
prompts are 77 random token ids each, encoded inside the timed region: the encoders' work is
the same for any 77 ids.

    python image_bench.py [--sdxl] [--steps 20] [--size N] [--threads N] [--bf16]

Prints one JSON line in the format of pytorch_bench.py (for compare.py), with the split of the
time: text encoding (timed on its own), steps (to the last step's callback) and decode.
"""

import argparse
import json
import os
import resource
import sys
import time

from pytorch_bench import SDXL_UNET_CONFIG, UNET_CONFIG, VAE_CONFIG


def clip_l(CLIPTextConfig, CLIPTextModel):
    return CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12,
                                        max_position_embeddings=77, hidden_act="quick_gelu"))


def clip_big_g(CLIPTextConfig, CLIPTextModelWithProjection):
    return CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
        num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sdxl", action="store_true")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--bf16", action="store_true", help="weights and activations in bfloat16")
    args = ap.parse_args()
    size = args.size or (1024 if args.sdxl else 512)

    import torch
    from diffusers import (AutoencoderKL, EulerAncestralDiscreteScheduler, StableDiffusionPipeline,
                           StableDiffusionXLPipeline, UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    unet = UNet2DConditionModel(**(SDXL_UNET_CONFIG if args.sdxl else UNET_CONFIG)).eval()
    vae = AutoencoderKL(**VAE_CONFIG, scaling_factor=0.13025 if args.sdxl else 0.18215).eval()
    encoders = [clip_l(CLIPTextConfig, CLIPTextModel).eval()]
    if args.sdxl:
        encoders.append(clip_big_g(CLIPTextConfig, CLIPTextModelWithProjection).eval())
    if args.bf16:
        for network in [unet, vae, *encoders]:
            network.to(dtype)
    scheduler = EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012,
                                                beta_schedule="scaled_linear", steps_offset=1)
    if args.sdxl:
        pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=encoders[0], text_encoder_2=encoders[1],
                                         tokenizer=None, tokenizer_2=None, unet=unet, scheduler=scheduler)
    else:
        pipe = StableDiffusionPipeline(vae=vae, unet=unet, scheduler=scheduler, text_encoder=encoders[0],
                                       tokenizer=None, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    # [negative; positive], 77 ids each.
    ids = torch.randint(0, 49408, (2, 77), generator=torch.Generator().manual_seed(1))
    step_ends = []

    def on_step(pipeline, step, timestep, tensors):
        step_ends.append(time.perf_counter() - started)
        return tensors

    started = time.perf_counter()
    with torch.inference_mode():
        if args.sdxl:
            out_l = encoders[0](ids, output_hidden_states=True)
            out_g = encoders[1](ids, output_hidden_states=True)
            context = torch.cat([out_l.hidden_states[-2], out_g.hidden_states[-2]], dim=-1)
            pooled = out_g.text_embeds
            embeds = dict(prompt_embeds=context[1:], negative_prompt_embeds=context[:1],
                          pooled_prompt_embeds=pooled[1:], negative_pooled_prompt_embeds=pooled[:1])
        else:
            context = encoders[0](ids).last_hidden_state
            embeds = dict(prompt_embeds=context[1:], negative_prompt_embeds=context[:1])
        text_s = time.perf_counter() - started
        image = pipe(**embeds, height=size, width=size, num_inference_steps=args.steps,
                     guidance_scale=7.5, generator=torch.Generator().manual_seed(2),
                     output_type="pil", callback_on_step_end=on_step).images[0]
    seconds = time.perf_counter() - started
    assert image.size == (size, size), image.size
    print(f"step ends (s): {[round(t, 1) for t in step_ends]}", file=sys.stderr)
    print(json.dumps({
        "impl": "pytorch", "part": f"{'sdxl_' if args.sdxl else ''}image_{size}", "threads": args.threads,
        "min_s": round(seconds, 3), "median_s": round(seconds, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "torch": torch.__version__.split("+")[0], "dtype": "bf16" if args.bf16 else "f32",
        "steps": args.steps, "text_s": round(text_s, 3), "steps_s": round(step_ends[-1] - text_s, 3),
        "decode_s": round(seconds - step_ends[-1], 3),
    }))


if __name__ == "__main__":
    main()
