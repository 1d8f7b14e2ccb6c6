"""Image-to-image fixtures: diffusers' own img2img and inpainting pipelines on the tiny checkpoints.

Each case runs one of diffusers' pipelines end to end (VAE encode, the schedule started at
`get_timesteps`' step, the noise added at that step, classifier-free guidance, DDIM with eta 0,
latent masking or an inpainting UNet's extra channels) on a tiny random checkpoint the Rust
writer made, with every random draw replaced by recorded standard-normal noise, and writes the
inputs, the recorded noise in the order the pipeline drew it and the final latents
(`output_type="latent"`) to `crates/horde-diffusion/tests/fixtures/img2img/<case>.safetensors`,
plus `manifest.json`. `tests/img2img_numbers.rs` feeds the same inputs and noise to the engine
(`parts::sample_latents`, the code `Model::generate_with` runs) and compares.

The manifest also records, per case, how far diffusers' own output moves when the schedule starts
one step earlier or later (the strength that gives `init_timestep ± 1`): the margin an off-by-one
start step would miss the fixture by.

Called by generate.py (`--part img2img`); the checkpoints come from the ignored Rust test
`write_img2img_checkpoints_for_the_fixture_tool` of tests/img2img_numbers.rs.
"""

import os
import sys

import numpy as np
import PIL.Image
import safetensors.torch
import torch

from diffusers import (
    DDIMScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    UNet2DConditionModel,
)
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

import generate as g

# Largest absolute difference allowed between the engine's final latents and diffusers' (they
# are of order 1; the measured differences are in the README).
TOLERANCE = 5e-4
WIDTH, HEIGHT = 64, 48
GUIDANCE = 5.0

# name, checkpoint file (without .safetensors), family, pipeline, steps, strength.
CASES = [
    ("sd15_img2img", "sd15", "sd15", "img2img", 6, 0.5),
    ("sd2_img2img", "sd2", "sd2", "img2img", 6, 0.5),
    ("sdxl_img2img", "sdxl", "sdxl", "img2img", 6, 0.5),
    # An ordinary UNet through the inpainting pipeline: latent masking.
    ("sd15_inpaint_latent_mask", "sd15", "sd15", "inpaint", 8, 0.75),
    # 9-channel inpainting UNets: the mask and the masked image's latents as extra channels.
    ("sd15_inpainting_unet", "sd15_inpainting", "sd15", "inpaint", 8, 0.75),
    ("sdxl_inpainting_unet", "sdxl_inpainting", "sdxl", "inpaint", 8, 0.75),
]


class RecordedNoise:
    """Stands in for diffusers' `randn_tensor`: standard normal draws from one numpy generator,
    each remembered in order (the Rust test replays them in the same order)."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.draws = []
        self.replay = None

    def __call__(self, shape, generator=None, device=None, dtype=None, layout=None, **_):
        if self.replay is not None:
            tensor = self.replay.pop(0)
        else:
            tensor = torch.tensor(self.rng.standard_normal(tuple(shape)), dtype=torch.float32)
            self.draws.append(tensor)
        assert tuple(tensor.shape) == tuple(shape), (tensor.shape, shape)
        return tensor.clone().to(dtype or torch.float32)


def patch_randn(recorder):
    """Every diffusers module's `randn_tensor` (the pipelines' and the VAE distribution's)."""
    for name, module in list(sys.modules.items()):
        if name.startswith("diffusers") and hasattr(module, "randn_tensor"):
            module.randn_tensor = recorder


def networks(family, checkpoint):
    vae = g.tiny_vae(family)
    g.load_strict(vae, convert_ldm_vae_checkpoint(checkpoint, dict(vae.config)))
    base = g.tiny_unet(family)
    in_channels = checkpoint["model.diffusion_model.input_blocks.0.0.weight"].shape[1]
    unet = UNet2DConditionModel.from_config(base.config, in_channels=in_channels)
    g.load_strict(unet, convert_ldm_unet_checkpoint(checkpoint, dict(unet.config)))
    return vae, unet.eval()


def scheduler(family):
    """DDIM as diffusers configures it for Stable Diffusion (the engine's `DDIM`)."""
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading",
                         prediction_type="v_prediction" if family == "sd2" else "epsilon")


def text_conditioning(family, checkpoint, tokens):
    """The context (and SDXL's pooled text) the engine's `encode(tokens, 1 chunk, clip skip 1)`
    gives: the same hidden states generate.py pins as `text.context`."""
    contexts, pooled = [], None
    for spec in g.TEXT_ENCODERS[family]:
        model = g.text_encoder(spec, checkpoint)
        ids = torch.tensor([g.chunk_ids(tokens, spec["pad"])])
        with torch.no_grad():
            result = model(ids, output_hidden_states=True)
        contexts.append(result.last_hidden_state if spec["output"] == "last" else result.hidden_states[-2])
        if spec.get("pooled"):
            pooled = result.text_embeds
    return torch.cat(contexts, dim=-1), pooled


def pipeline(family, kind, vae, unet):
    common = dict(vae=vae, unet=unet, scheduler=scheduler(family), text_encoder=None, tokenizer=None)
    if family == "sdxl":
        cls = StableDiffusionXLImg2ImgPipeline if kind == "img2img" else StableDiffusionXLInpaintPipeline
        return cls(**common, text_encoder_2=None, tokenizer_2=None, requires_aesthetics_score=False,
                   force_zeros_for_empty_prompt=False, add_watermarker=False)
    cls = StableDiffusionImg2ImgPipeline if kind == "img2img" else StableDiffusionInpaintPipeline
    return cls(**common, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def inputs(rng):
    rgb = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    # A repaint rectangle, and the binarisation's edge at the top-left pixels of two latent cells:
    # 128 repaints (cell (0, 0)), 127 does not (cell (0, 1)).
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    mask[8:32, 16:40] = 255
    mask[0, 0], mask[0, 8] = 128, 127
    return {
        "rgb": torch.tensor(rgb),
        "mask": torch.tensor(mask),
        "tokens.positive": torch.tensor(rng.integers(1, g.START, size=10), dtype=torch.int64),
        "tokens.negative": torch.tensor(rng.integers(1, g.START, size=6), dtype=torch.int64),
    }


def run(pipe, family, kind, x, conditioning, steps, strength, recorder):
    (context, pooled), (negative, negative_pooled) = conditioning
    kwargs = dict(prompt_embeds=context, negative_prompt_embeds=negative, image=PIL.Image.fromarray(x["rgb"].numpy()),
                  strength=strength, num_inference_steps=steps, guidance_scale=GUIDANCE, eta=0.0,
                  output_type="latent")
    if family == "sdxl":
        kwargs.update(pooled_prompt_embeds=pooled, negative_pooled_prompt_embeds=negative_pooled)
    if kind == "inpaint":
        kwargs.update(mask_image=PIL.Image.fromarray(x["mask"].numpy(), mode="L"), height=HEIGHT, width=WIDTH)
    patch_randn(recorder)
    with torch.no_grad():
        return pipe(**kwargs).images


def strength_for(steps, init_timestep):
    """A strength whose `int(steps · strength)` is `init_timestep`, in the middle of its range."""
    return (init_timestep + 0.5) / steps


def case(name, checkpoint_file, family, kind, steps, strength, checkpoints, index):
    checkpoint = safetensors.torch.load_file(os.path.join(checkpoints, f"{checkpoint_file}.safetensors"))
    rng = np.random.default_rng(2500 + index)
    x = inputs(rng)
    conditioning = [text_conditioning(family, checkpoint, x[k].tolist()) for k in ("tokens.positive", "tokens.negative")]
    vae, unet = networks(family, checkpoint)
    pipe = pipeline(family, kind, vae, unet)
    recorder = RecordedNoise(2600 + index)
    latents = run(pipe, family, kind, x, conditioning, steps, strength, recorder)
    draws = list(recorder.draws)
    # Deterministic: the same noise gives the same latents, bit for bit.
    recorder.replay = list(draws)
    assert torch.equal(run(pipe, family, kind, x, conditioning, steps, strength, recorder), latents)
    init_timestep = int(steps * strength)
    misses = {}
    for label, shift in (("one_step_later", -1), ("one_step_earlier", 1)):
        recorder.replay = list(draws)
        other = run(pipe, family, kind, x, conditioning, steps, strength_for(steps, init_timestep + shift), recorder)
        misses[label] = float((other - latents).abs().max())
    fixture = {**x, "latents": latents.contiguous()}
    for i, d in enumerate(draws):
        fixture[f"noise.{i}"] = d.contiguous()
    return fixture, {
        "checkpoint": checkpoint_file,
        "checkpoint_fingerprint": g.fingerprint(checkpoint),
        "family": family,
        "pipeline": type(pipe).__name__,
        "unet_in_channels": unet.config.in_channels,
        "steps": steps,
        "strength": strength,
        "start_step": steps - init_timestep,
        "guidance_scale": GUIDANCE,
        "width": WIDTH,
        "height": HEIGHT,
        "noise_draws": [list(d.shape) for d in draws],
        "latents_max_abs": float(latents.abs().max()),
        "wrong_start_miss": misses,
    }


def generate(checkpoints, out):
    os.makedirs(out, exist_ok=True)
    manifest = {"generator": "tools/sd-fixtures/img2img.py (generate.py --part img2img)",
                "tolerance": TOLERANCE, "tolerance_meaning": "largest absolute difference of the final latents",
                "cases": {}}
    for index, spec in enumerate(CASES):
        name = spec[0]
        print(name)
        fixture, entry = case(*spec, checkpoints, index)
        path = os.path.join(out, f"{name}.safetensors")
        safetensors.torch.save_file(fixture, path)
        entry["file"] = f"{name}.safetensors"
        entry["sha256"] = g.sha256(path)
        manifest["cases"][name] = entry
        print(f"  start step {entry['start_step']}, draws {entry['noise_draws']}, misses {entry['wrong_start_miss']}")
    return manifest
