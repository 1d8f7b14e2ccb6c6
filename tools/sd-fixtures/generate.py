"""Pins the engine's Stable Diffusion networks to diffusers and transformers.

For each family (sd15, sd2, sdxl) this reads the tiny random single-file (LDM layout) checkpoint
the Rust writer (`horde_diffusion::tiny::write_tiny_checkpoint`, seed CHECKPOINT_SEED) produced,
converts it with diffusers' own single-file utilities into diffusers/transformers models of the
matching tiny configuration, runs fixed seeded inputs through the UNet, the VAE (encode and
decode) and the text encoders as diffusers' pipelines use them, and writes inputs and outputs to
`crates/horde-diffusion/tests/fixtures/sd_numbers/<family>.safetensors` plus `manifest.json`
(versions, tolerance, sha256 of each fixture, checkpoint fingerprints, and mis-wired variants
with their measured diffs: on the random checkpoint, and on the same checkpoint with the tensors
the old writer left constant put back to those constants).

    python generate.py CHECKPOINT_DIR [--part networks|img2img|all] [--out DIR] [--img2img-out DIR]

CHECKPOINT_DIR holds sd15.safetensors, sd2.safetensors and sdxl.safetensors as the ignored Rust
test `write_checkpoints_for_the_fixture_tool` writes them, and (for `--part img2img`, img2img.py)
sd15_inpainting.safetensors and sdxl_inpainting.safetensors as `write_img2img_checkpoints_for_the_
fixture_tool` of tests/img2img_numbers.rs writes them (generate.sh does every step).
"""

import argparse
import hashlib
import json
import os
import platform
import sys

import numpy as np
import PIL.Image
import safetensors.torch
import torch

import diffusers
import transformers
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

torch.set_num_threads(1)

FAMILIES = ("sd15", "sd2", "sdxl")
# The seed the Rust writer is given (the Rust test regenerates the checkpoint with it).
CHECKPOINT_SEED = 22
# Largest absolute difference allowed between the engine and diffusers, on every output (all
# are of order 1; the measured float32 differences are recorded in the manifest).
TOLERANCE = 1e-4
START, END = 49406, 49407
# Prompt tokens (between start and end), a fixed draw.
PROMPT_TOKENS = 12


# ---------------------------------------------------------------------------------------------
# Tiny diffusers configurations: the same as tools/diffusers-names/dump.py (whose names the
# engine's diffusers-folder loader is tested against) and as `horde_diffusion::tiny::tiny_config`.


# The latent scaling factor of each family's VAE config (SDXL's VAE was trained to another scale).
SCALING_FACTOR = {"sd15": 0.18215, "sd2": 0.18215, "sdxl": 0.13025}


def tiny_vae(family):
    return AutoencoderKL(
        block_out_channels=(32, 32, 32, 32), layers_per_block=1, latent_channels=4, norm_num_groups=32,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        scaling_factor=SCALING_FACTOR[family],
    )


def tiny_unet(family):
    common = dict(sample_size=8, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=32)
    cross = dict(down_block_types=("CrossAttnDownBlock2D",) * 2, up_block_types=("CrossAttnUpBlock2D",) * 2)
    if family == "sd15":
        # SD 1.x: 8 heads (diffusers' legacy `attention_head_dim` means heads), conv projections.
        return UNet2DConditionModel(**common, **cross, cross_attention_dim=32, attention_head_dim=8,
                                    use_linear_projection=False)
    if family == "sd2":
        # SD 2.x: 64-channel heads (one here), linear projections.
        return UNet2DConditionModel(**common, **cross, cross_attention_dim=32, attention_head_dim=1,
                                    use_linear_projection=True)
    # SDXL: no attention at level 0, depth 2, size conditioning ("text_time").
    return UNet2DConditionModel(
        **common, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=64, attention_head_dim=1,
        use_linear_projection=True, transformer_layers_per_block=(1, 2), addition_embed_type="text_time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=32 + 6 * 8,
    )


def clip_config(act, layers):
    return CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                          num_attention_heads=1, max_position_embeddings=77, hidden_act=act, projection_dim=32,
                          attn_implementation="eager")


# One entry per text encoder, in the engine's order: how diffusers builds and converts it, the
# hidden state its pipeline conditions on, and the pad token of its tokenizer.
TEXT_ENCODERS = {
    # SD 1.x: CLIP-L, last layer, final norm (`last_hidden_state`).
    "sd15": [dict(kind="clip", prefix="cond_stage_model.transformer.", act="quick_gelu", layers=2,
                  output="last", pad=END)],
    # SD 2.x: diffusers' OpenCLIP-H encoder has the last of the checkpoint's layers removed
    # (3 → 2) and conditions on `last_hidden_state` (final norm) of what is left.
    "sd2": [dict(kind="open_clip", prefix="cond_stage_model.model.", act="gelu", layers=2,
                 output="last", pad=0)],
    # SDXL: both encoders' penultimate hidden state without final norm, and the second one's
    # projected pooled output (`text_embeds`).
    "sdxl": [dict(kind="clip", prefix="conditioner.embedders.0.transformer.", act="quick_gelu", layers=2,
                  output="penultimate", pad=END),
             dict(kind="open_clip", prefix="conditioner.embedders.1.model.", act="gelu", layers=3,
                  output="penultimate", pad=0, pooled=True)],
}


def load_strict(module, state, allowed_unexpected=()):
    missing, unexpected = module.load_state_dict(state, strict=False)
    unexpected = [k for k in unexpected if not any(k.startswith(a) for a in allowed_unexpected)]
    if missing or unexpected:
        sys.exit(f"{type(module).__name__}: missing {missing}, unexpected {unexpected}")
    return module.eval()


def text_encoder(spec, checkpoint):
    config = clip_config(spec["act"], spec["layers"])
    pooled = spec.get("pooled", False)
    model = (CLIPTextModelWithProjection if pooled else CLIPTextModel)(config)
    if spec["kind"] == "clip":
        state = convert_ldm_clip_checkpoint(checkpoint, remove_prefix=spec["prefix"])
        state = {k: v for k, v in state.items() if k.startswith("text_model.")}
    else:
        state = convert_open_clip_checkpoint(model, checkpoint, prefix=spec["prefix"])
    # transformers 5 names the plain CLIPTextModel's tensors without the `text_model.` prefix.
    root = "text_model." if pooled else ""
    state = {root + k.removeprefix("text_model.") if k.startswith("text_model.") else k: v
             for k, v in state.items()}
    # The layers diffusers drops (SD 2.x) and a projection the plain model has no use for.
    dropped = [f"{root}encoder.layers.{i}." for i in range(spec["layers"], 64)]
    if not pooled:
        dropped.append("text_projection.")
    return load_strict(model, state, allowed_unexpected=dropped)


def chunk_ids(tokens, pad):
    """The 77 ids of one chunk as the engine (and diffusers' tokenizers) lay them out."""
    ids = [START, *tokens, END]
    return ids + [pad] * (77 - len(ids))


# ---------------------------------------------------------------------------------------------
# Inputs


def inputs(family, rng):
    context_dim = 64 if family == "sdxl" else 32
    x = {
        "text.tokens": torch.tensor(rng.integers(1, START, size=PROMPT_TOKENS), dtype=torch.int64),
        "unet.sample": torch.tensor(rng.standard_normal((2, 4, 8, 8)), dtype=torch.float32),
        # Fractional, as the engine's σ → t conversion gives them.
        "unet.timesteps": torch.tensor([981.0, 37.25], dtype=torch.float32),
        "unet.context": torch.tensor(rng.standard_normal((2, 10, context_dim)), dtype=torch.float32),
        "vae.image": torch.tensor(rng.uniform(-1, 1, (1, 3, 32, 32)), dtype=torch.float32),
        "vae.latents": torch.tensor(rng.standard_normal((1, 4, 4, 4)), dtype=torch.float32),
    }
    if family == "sdxl":
        x["unet.text_embeds"] = torch.tensor(rng.standard_normal((2, 32)), dtype=torch.float32)
        # (original h, w, crop top, left, target h, w) as SDXL's pipeline builds them.
        x["unet.time_ids"] = torch.tensor([[48, 64, 0, 0, 48, 64], [1024, 768, 16, 8, 1024, 768]],
                                          dtype=torch.float32)
    # The encoder's: the noise of a sample of `vae.image`'s latent distribution, and an 8-bit RGB
    # image (height × width × channel, not square) that goes through the image processor.
    x["vae.noise"] = torch.tensor(rng.standard_normal((1, 4, 4, 4)), dtype=torch.float32)
    x["vae.rgb"] = torch.tensor(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8))
    return x


# ---------------------------------------------------------------------------------------------
# The three networks as diffusers runs them


def run_unet(family, checkpoint, x):
    unet = tiny_unet(family)
    load_strict(unet, convert_ldm_unet_checkpoint(checkpoint, dict(unet.config)))
    out = {}
    kwargs = {}
    if family == "sdxl":
        kwargs["added_cond_kwargs"] = {"text_embeds": x["unet.text_embeds"], "time_ids": x["unet.time_ids"]}
        # The vector the engine's UNet takes: pooled text, then each size value embedded.
        time_embeds = unet.add_time_proj(x["unet.time_ids"].flatten()).reshape(2, -1)
        out["unet.vector"] = torch.cat([x["unet.text_embeds"], time_embeds], dim=-1)
    with torch.no_grad():
        out["unet.out"] = unet(x["unet.sample"], x["unet.timesteps"], x["unet.context"], **kwargs).sample
    return out


def run_vae(family, checkpoint, x):
    vae = tiny_vae(family)
    load_strict(vae, convert_ldm_vae_checkpoint(checkpoint, dict(vae.config)))
    # What diffusers' image-to-image pipelines feed the encoder: 2 · (v / 255) − 1, channels first.
    rgb = VaeImageProcessor(vae_scale_factor=8).preprocess(PIL.Image.fromarray(x["vae.rgb"].numpy()))
    with torch.no_grad():
        posterior = vae.encode(x["vae.image"]).latent_dist
        # `posterior.sample(generator)` with the recorded noise in place of the generator's.
        sample = posterior.mean + posterior.std * x["vae.noise"]
        return {
            "vae.encoded_mean": posterior.mean,
            "vae.encoded_sample": sample,
            "vae.encoded_latents": sample * vae.config.scaling_factor,
            "vae.rgb_latents": vae.encode(rgb).latent_dist.mean * vae.config.scaling_factor,
            "vae.decoded": vae.decode(x["vae.latents"]).sample,
        }


def run_text(family, checkpoint, x):
    contexts, out = [], {}
    for spec in TEXT_ENCODERS[family]:
        model = text_encoder(spec, checkpoint)
        ids = torch.tensor([chunk_ids(x["text.tokens"].tolist(), spec["pad"])])
        with torch.no_grad():
            result = model(ids, output_hidden_states=True)
        contexts.append(result.last_hidden_state if spec["output"] == "last" else result.hidden_states[-2])
        if spec.get("pooled"):
            out["text.pooled"] = result.text_embeds
        if spec["output"] == "last":
            # AI Horde's (A1111's) clip_skip 2 is the pipeline's `clip_skip=1`: hidden state
            # -(1 + 1), then the final norm. (diffusers reaches the norm through
            # `text_encoder.text_model`, which transformers 5's CLIPTextModel no longer has.)
            with torch.no_grad():
                out["text.context_clip_skip_2"] = model.final_layer_norm(result.hidden_states[-2])
    out["text.context"] = torch.cat(contexts, dim=-1)
    return out


def run_all(family, checkpoint, x):
    return {**run_unet(family, checkpoint, x), **run_vae(family, checkpoint, x), **run_text(family, checkpoint, x)}


# ---------------------------------------------------------------------------------------------
# Mis-wired variants: what a loader bug would do to the checkpoint (the Rust test applies the
# same changes to the engine's checkpoint and must miss the fixtures).


def swap_q_k(checkpoint):
    for name, t in checkpoint.items():
        if name.endswith(("attn.in_proj_weight", "attn.in_proj_bias")):
            q, k, v = t.chunk(3, dim=0)
            checkpoint[name] = torch.cat([k, q, v], dim=0)


def transpose_text_projection(checkpoint):
    for name, t in checkpoint.items():
        if name.endswith("text_projection"):
            checkpoint[name] = t.T.contiguous()


def shift_positions(checkpoint):
    for name, t in checkpoint.items():
        if name.endswith(("positional_embedding", "position_embedding.weight")):
            checkpoint[name] = torch.roll(t, 1, dims=0)


def swap_vae_norms(checkpoint):
    swap_pair(checkpoint, "first_stage_model.", ".norm1.", ".norm2.")


def swap_pair(checkpoint, prefix, first, second):
    """Swaps every tensor under `prefix` whose name has `first` with its `second` twin."""
    for name in list(checkpoint):
        if name.startswith(prefix) and first in name:
            other = name.replace(first, second)
            checkpoint[name], checkpoint[other] = checkpoint[other], checkpoint[name]


MISWIRINGS = {
    "openclip_in_proj_q_k_swapped": (("sd2", "sdxl"), swap_q_k),
    "text_projection_transposed": (("sdxl",), transpose_text_projection),
    "position_embeddings_shifted": (FAMILIES, shift_positions),
    "unet_transformer_norm2_norm3_swapped": (
        FAMILIES, lambda c: swap_pair(c, "model.diffusion_model.", ".norm2.", ".norm3.")),
    "vae_resnet_norm1_norm2_swapped": (FAMILIES, swap_vae_norms),
}

NORM_PARTS = {"norm", "norm1", "norm2", "norm3", "norm_out", "layer_norm1", "layer_norm2", "final_layer_norm",
              "ln_1", "ln_2", "ln_final"}


def is_norm(name):
    """Whether `name` is a weight or bias of a group or layer norm (LDM names)."""
    parts = name.split(".")
    if any(p in NORM_PARTS for p in parts):
        return True
    # The UNet's residual blocks (`in_layers.0`, `out_layers.0`) and its final norm (`out.0`).
    return any(p in ("in_layers", "out_layers") and n == "0" for p, n in zip(parts, parts[1:])) or \
        name.startswith("model.diffusion_model.out.0.")


def old_constants(checkpoint):
    """The checkpoint as the old writer had it: norms 1/0, OpenCLIP's `in_proj`,
    `text_projection` and position embeddings 0 (the tensors it wrote from a constant init)."""
    old = dict(checkpoint)
    for name, t in checkpoint.items():
        if is_norm(name):
            old[name] = torch.ones_like(t) if name.endswith("weight") else torch.zeros_like(t)
        elif name.endswith(("in_proj_weight", "in_proj_bias", "text_projection", "positional_embedding",
                            "position_embedding.weight")):
            old[name] = torch.zeros_like(t)
    return old


def max_diff(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def miswired_table(family, checkpoint, x, reference):
    old = old_constants(checkpoint)
    old_reference = run_all(family, old, x)
    table = {}
    for name, (families, miswire) in MISWIRINGS.items():
        if family not in families:
            continue
        bad = dict(checkpoint)
        miswire(bad)
        old_bad = dict(old)
        miswire(old_bad)
        table[name] = {
            "max_diff": max_diff(run_all(family, bad, x), reference),
            "max_diff_on_old_constant_checkpoint": max_diff(run_all(family, old_bad, x), old_reference),
        }
        print(f"  {name}: {table[name]}")
    return table


# ---------------------------------------------------------------------------------------------


def fingerprint(checkpoint):
    """Tensor count and float64 sums, for the Rust test to check it regenerated this checkpoint."""
    total = sum(float(t.double().sum()) for t in checkpoint.values())
    total_abs = sum(float(t.double().abs().sum()) for t in checkpoint.values())
    return {"tensors": len(checkpoint), "sum": total, "sum_abs": total_abs}


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints")
    parser.add_argument("--out", default="crates/horde-diffusion/tests/fixtures/sd_numbers")
    parser.add_argument("--img2img-out", default="crates/horde-diffusion/tests/fixtures/img2img")
    parser.add_argument("--part", choices=("networks", "img2img", "all"), default="all",
                        help="the networks' fixtures, image-to-image's (img2img.py), or both")
    args = parser.parse_args()
    if args.part in ("img2img", "all"):
        import img2img

        manifest = img2img.generate(args.checkpoints, args.img2img_out)
        manifest["versions"] = versions()
        with open(os.path.join(args.img2img_out, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
            f.write("\n")
    if args.part in ("networks", "all"):
        networks(args)


def versions():
    return {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "numpy": np.__version__,
            "safetensors": safetensors.__version__}


def networks(args):
    os.makedirs(args.out, exist_ok=True)
    manifest = {
        "generator": "tools/sd-fixtures/generate.py",
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "diffusers": diffusers.__version__, "transformers": transformers.__version__,
                     "numpy": np.__version__, "safetensors": safetensors.__version__},
        "checkpoint_seed": CHECKPOINT_SEED,
        "tolerance": TOLERANCE,
        "tolerance_meaning": "largest absolute difference on any output",
        "families": {},
    }
    for index, family in enumerate(FAMILIES):
        print(family)
        checkpoint = safetensors.torch.load_file(os.path.join(args.checkpoints, f"{family}.safetensors"))
        rng = np.random.default_rng(2200 + index)
        x = inputs(family, rng)
        reference = run_all(family, checkpoint, x)
        # Run twice: the reference is deterministic.
        assert max_diff(run_all(family, checkpoint, x), reference) == 0.0
        fixture = {**x, **{k: v.contiguous() for k, v in reference.items()}}
        path = os.path.join(args.out, f"{family}.safetensors")
        safetensors.torch.save_file(fixture, path)
        manifest["families"][family] = {
            "file": f"{family}.safetensors",
            "sha256": sha256(path),
            "checkpoint": fingerprint(checkpoint),
            "inputs": {k: list(v.shape) for k, v in x.items()},
            "outputs": {k: {"shape": list(v.shape), "max_abs": float(v.abs().max())} for k, v in reference.items()},
            "miswired": miswired_table(family, checkpoint, x, reference),
        }
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
