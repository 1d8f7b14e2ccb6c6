"""Pins the engine's LoRA loading and merging to diffusers and PEFT.

For each family (sd15, sd2, sdxl) this reads the tiny random checkpoint the Rust writer produced
(`horde_diffusion::tiny::write_tiny_checkpoint`, seed 22: the same checkpoints as
tools/sd-fixtures), builds diffusers' UNet and transformers' text encoders from it with the
sd-fixtures conversion (diffusers' single-file utilities), writes tiny random LoRAs in the
formats people share, and records what diffusers and PEFT make of them:

* `peft`: diffusers/PEFT keys (`unet.….lora_A.weight`, `text_encoder.…`, `text_encoder_2.…`) with
  PEFT's `lora_alpha` in the file's `lora_adapter_metadata`, loaded by the pipeline's
  `load_lora_weights`.
* `kohya`: kohya keys (`lora_unet_…`, `lora_te_…`/`lora_te1_…`/`lora_te2_…`, `.lora_down.weight`,
  `.lora_up.weight`, `.alpha`) on attention, feed-forward, projections and the residual blocks'
  first convolutions, time-embedding projections and shortcuts (LyCORIS LoCon: 3×3 and 1×1
  `lora_down`); SD 1.x and 2.x in diffusers' module names as
  kohya's SD 1.x/2.x trainer writes them, SDXL in the LDM names of kohya's SDXL trainer. Loaded
  by `load_lora_weights` (diffusers' `_convert_non_diffusers_lora_to_diffusers`, and for SDXL
  `_maybe_map_sgm_blocks_to_diffusers`).
* `loha`: LyCORIS LoHa keys (`.hada_w1_a`, `.hada_w1_b`, `.hada_w2_a`, `.hada_w2_b`, `.alpha`), on
  attention and each level's first residual block's 3×3 convolution; diffusers does not load LoHa, so the
  reference is PEFT's own LoHa (`LoHaConfig`, `inject_adapter_in_model`) with the same weights.

The kohya and LoHa files are stored in float16, as most shared files are. Every LoRA tensor is
random (none zero), and alpha differs from the rank, so a loader that
ignores alpha or the rank misses. Outputs (in `<family>.safetensors`): the UNet on fixed inputs
with each LoRA at model strengths 1.0 and 0.6, with kohya (0.8) and peft (-0.5) together, and the
text conditioning with each LoRA at clip strength 0.7 and with both (kohya 0.4, peft 0.9).

    python generate.py CHECKPOINT_DIR [--out DIR]
"""

import argparse
import hashlib
import json
import pathlib
import platform
import sys

import numpy as np
import safetensors.torch
import torch

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "sd-fixtures"))
import generate as sd  # noqa: E402  (tools/sd-fixtures/generate.py: the tiny models)

import diffusers  # noqa: E402
import peft  # noqa: E402
import transformers  # noqa: E402
from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline  # noqa: E402
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint  # noqa: E402
from peft import LoHaConfig, LoraConfig, inject_adapter_in_model  # noqa: E402

torch.set_num_threads(1)

FAMILIES = ("sd15", "sd2", "sdxl")
CHECKPOINT_SEED = 22
RANK = 4
# kohya and LoHa: alpha per module, half the rank (scale 0.5). PEFT: lora_alpha 6 (scale 1.5).
KOHYA_ALPHA = 2.0
PEFT_ALPHA = 6.0
# Largest difference allowed, relative to the largest magnitude of the output.
TOLERANCE = 1e-4
UNET_STRENGTHS = (1.0, 0.6)
CLIP_STRENGTH = 0.7
PAIR = {"kohya": (0.8, 0.4), "peft": (-0.5, 0.9)}
TEXT_MODULES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1",
                "mlp.fc2")


# ---------------------------------------------------------------------------------------------
# Models


def load_models(family, checkpoint):
    unet = sd.tiny_unet(family)
    sd.load_strict(unet, convert_ldm_unet_checkpoint(checkpoint, dict(unet.config)))
    encoders = [sd.text_encoder(spec, checkpoint) for spec in sd.TEXT_ENCODERS[family]]
    return unet, encoders


def pipeline(family, checkpoint):
    unet, encoders = load_models(family, checkpoint)
    vae, scheduler = sd.tiny_vae(family), DDIMScheduler()
    if family == "sdxl":
        return StableDiffusionXLPipeline(vae=vae, text_encoder=encoders[0], text_encoder_2=encoders[1],
                                         tokenizer=None, tokenizer_2=None, unet=unet, scheduler=scheduler)
    return StableDiffusionPipeline(vae=vae, text_encoder=encoders[0], tokenizer=None, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def encoders_of(pipe):
    return [e for e in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if e is not None]


def ldm_names(unet_config, checkpoint):
    """diffusers UNet module name -> LDM module name, by converting a checkpoint whose tensors
    hold their own index (diffusers' converter only renames UNet tensors)."""
    prefix = "model.diffusion_model."
    names = sorted(k for k in checkpoint if k.startswith(prefix))
    tagged = {k: torch.full(checkpoint[k].shape, float(i), dtype=torch.float64) for i, k in enumerate(names)}
    tagged.update({k: v for k, v in checkpoint.items() if not k.startswith(prefix)})
    converted = convert_ldm_unet_checkpoint(tagged, unet_config)
    out = {}
    for key, value in converted.items():
        ldm = names[int(value.flatten()[0].item())]
        out[key.removesuffix(".weight")] = ldm.removeprefix(prefix).removesuffix(".weight")
    return out


# ---------------------------------------------------------------------------------------------
# Random LoRAs


def unet_modules(unet, kinds):
    """The UNet's modules of `kinds`: "attention" (every linear and 1×1 projection of the
    transformers), "conv3" (each residual block's first 3×3 convolution), "conv3_first" (the same
    in each level's first residual block only), "resnet_rest" (the time-embedding projections
    and 1×1 shortcuts). Fewer convolutions keep the committed files small."""
    out = []
    for name, module in unet.named_modules():
        if not name.startswith(("down_blocks", "mid_block", "up_blocks")):
            continue
        if "attentions" in name and isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            chosen = "attention" in kinds
        elif "resnets" in name and name.endswith(".conv1"):
            chosen = "conv3" in kinds or "conv3_first" in kinds and "resnets.0." in name
        elif "resnets" in name and name.endswith((".time_emb_proj", ".conv_shortcut")):
            chosen = "resnet_rest" in kinds
        else:
            chosen = False
        if chosen:
            out.append((name, module))
    return out


def text_modules(encoder):
    return [(name, module) for name, module in encoder.named_modules()
            if isinstance(module, torch.nn.Linear) and name.endswith(TEXT_MODULES)]


def normal(rng, shape, std):
    values = rng.standard_normal(shape) * std
    values[values == 0] = std  # none zero
    return torch.tensor(values, dtype=torch.float32)


def low_rank(rng, module):
    """(down, up): down `[r, in(, kh, kw)]`, up `[out, r(, 1, 1)]`, Δ about half the weight's scale."""
    if isinstance(module, torch.nn.Conv2d):
        k = module.kernel_size
        down = normal(rng, (RANK, module.in_channels, *k), 1 / np.sqrt(module.in_channels * k[0] * k[1]))
        up = normal(rng, (module.out_channels, RANK, 1, 1), 0.5 / np.sqrt(RANK))
    else:
        down = normal(rng, (RANK, module.in_features), 1 / np.sqrt(module.in_features))
        up = normal(rng, (module.out_features, RANK), 0.5 / np.sqrt(RANK))
    return down, up


def hadamard(rng, module):
    """LoHa's w1a, w1b, w2a, w2b (`[out, r]`, `[r, in·kh·kw]`)."""
    if isinstance(module, torch.nn.Conv2d):
        out, fan_in = module.out_channels, module.in_channels * module.kernel_size[0] * module.kernel_size[1]
    else:
        out, fan_in = module.out_features, module.in_features
    std_a, std_b = 1 / np.sqrt(RANK), 0.8 / fan_in ** 0.25
    # Rounded to half precision, as the file stores them.
    return tuple(t.half().float() for t in (normal(rng, (out, RANK), std_a), normal(rng, (RANK, fan_in), std_b),
                                            normal(rng, (out, RANK), std_a), normal(rng, (RANK, fan_in), std_b)))


def kohya_te_prefix(family, index):
    return "lora_te_" if family != "sdxl" else f"lora_te{index + 1}_"


def kohya_te_module(name):
    """transformers 5's plain CLIPTextModel drops `text_model.`; kohya names keep it."""
    return name if name.startswith("text_model.") else "text_model." + name


def write_kohya(family, pipe, checkpoint, rng, path):
    unet_names = (ldm_names(dict(pipe.unet.config), checkpoint) if family == "sdxl" else None)
    tensors = {}

    def add(key, down, up):
        tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"] = down, up
        tensors[f"{key}.alpha"] = torch.tensor(KOHYA_ALPHA)

    for name, module in unet_modules(pipe.unet, ("attention", "conv3", "resnet_rest")):
        spelled = unet_names[name] if unet_names else name
        add("lora_unet_" + spelled.replace(".", "_"), *low_rank(rng, module))
    for i, encoder in enumerate(encoders_of(pipe)):
        for name, module in text_modules(encoder):
            add(kohya_te_prefix(family, i) + kohya_te_module(name).replace(".", "_"), *low_rank(rng, module))
    # In half precision, as most shared files are (and half the size).
    safetensors.torch.save_file({k: v.half() for k, v in tensors.items()}, path)


def write_peft(family, pipe, rng, path):
    tensors, metadata = {}, {}
    networks = [("unet", pipe.unet, unet_modules(pipe.unet, ("attention",)))]
    networks += [(["text_encoder", "text_encoder_2"][i], e, text_modules(e)) for i, e in enumerate(encoders_of(pipe))]
    for prefix, _, modules in networks:
        for name, module in modules:
            down, up = low_rank(rng, module)
            tensors[f"{prefix}.{name}.lora_A.weight"], tensors[f"{prefix}.{name}.lora_B.weight"] = down, up
        config = LoraConfig(r=RANK, lora_alpha=PEFT_ALPHA, target_modules=[n for n, _ in modules]).to_dict()
        for key, value in config.items():
            metadata[f"{prefix}.{key}"] = sorted(value) if isinstance(value, set) else value
    header = {"format": "pt", "lora_adapter_metadata": json.dumps(metadata, indent=2, sort_keys=True, default=str)}
    safetensors.torch.save_file(tensors, path, metadata=header)


def loha_weights(family, pipe, rng):
    """{network index (0 UNet, 1.. text encoders): {module name: (w1a, w1b, w2a, w2b)}}."""
    out = {0: {name: hadamard(rng, m) for name, m in unet_modules(pipe.unet, ("attention", "conv3_first"))}}
    for i, encoder in enumerate(encoders_of(pipe)):
        out[i + 1] = {name: hadamard(rng, m) for name, m in text_modules(encoder)}
    return out


def write_loha(family, pipe, checkpoint, weights, path):
    unet_names = ldm_names(dict(pipe.unet.config), checkpoint) if family == "sdxl" else None
    tensors = {}
    for network, modules in weights.items():
        for name, parts in modules.items():
            if network == 0:
                key = "lora_unet_" + (unet_names[name] if unet_names else name).replace(".", "_")
            else:
                key = kohya_te_prefix(family, network - 1) + kohya_te_module(name).replace(".", "_")
            for part, tensor in zip(("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"), parts):
                tensors[f"{key}.{part}"] = tensor.half()
            tensors[f"{key}.alpha"] = torch.tensor(KOHYA_ALPHA).half()
    safetensors.torch.save_file(tensors, path)


# ---------------------------------------------------------------------------------------------
# Running


def inputs(family, rng):
    context_dim = 64 if family == "sdxl" else 32
    x = {
        "text.tokens": torch.tensor(rng.integers(1, sd.START, size=sd.PROMPT_TOKENS), dtype=torch.int64),
        "unet.sample": torch.tensor(rng.standard_normal((2, 4, 8, 8)), dtype=torch.float32),
        "unet.timesteps": torch.tensor([981.0, 37.25], dtype=torch.float32),
        "unet.context": torch.tensor(rng.standard_normal((2, 10, context_dim)), dtype=torch.float32),
    }
    if family == "sdxl":
        x["unet.text_embeds"] = torch.tensor(rng.standard_normal((2, 32)), dtype=torch.float32)
        x["unet.time_ids"] = torch.tensor([[48, 64, 0, 0, 48, 64], [1024, 768, 16, 8, 1024, 768]],
                                          dtype=torch.float32)
    return x


def run_unet(family, unet, x):
    kwargs = {}
    if family == "sdxl":
        kwargs["added_cond_kwargs"] = {"text_embeds": x["unet.text_embeds"], "time_ids": x["unet.time_ids"]}
    with torch.no_grad():
        return unet(x["unet.sample"], x["unet.timesteps"], x["unet.context"], **kwargs).sample


def run_text(family, encoders, x):
    """The engine's conditioning at AI Horde's clip skip 1 (sd-fixtures' `text.context`)."""
    contexts, pooled = [], None
    for spec, model in zip(sd.TEXT_ENCODERS[family], encoders):
        ids = torch.tensor([sd.chunk_ids(x["text.tokens"].tolist(), spec["pad"])])
        with torch.no_grad():
            result = model(ids, output_hidden_states=True)
        contexts.append(result.last_hidden_state if spec["output"] == "last" else result.hidden_states[-2])
        if spec.get("pooled"):
            pooled = result.text_embeds
    return torch.cat(contexts, dim=-1), pooled


def component_weights(family, unet, clip):
    weights = {"unet": unet, "text_encoder": clip}
    if family == "sdxl":
        weights["text_encoder_2"] = clip
    return weights


def with_diffusers(family, checkpoint, loras, x):
    """Outputs with `loras` [(file, name, model strength, clip strength)] loaded by diffusers."""
    pipe = pipeline(family, checkpoint)
    for path, name, _, _ in loras:
        pipe.load_lora_weights(str(path), adapter_name=name)
        check_loaded(pipe, path, name)
    pipe.set_adapters([n for _, n, _, _ in loras],
                      adapter_weights=[component_weights(family, m, c) for _, _, m, c in loras])
    return run_unet(family, pipe.unet, x), run_text(family, encoders_of(pipe), x)


def check_loaded(pipe, path, name):
    """Every module of the file got a LoRA layer holding the file's weights (by their norms)."""
    stored = safetensors.torch.load_file(str(path))
    downs = sorted(float(v.float().norm()) for k, v in stored.items() if k.endswith(("lora_down.weight", "lora_A.weight")))
    loaded = sorted(float(m.lora_A[name].weight.norm()) for network in [pipe.unet, *encoders_of(pipe)]
                    for m in network.modules() if hasattr(m, "lora_A") and name in m.lora_A)
    if not np.allclose(downs, loaded, rtol=1e-6):
        sys.exit(f"{path.name}: diffusers loaded {len(loaded)} of its {len(downs)} LoRA modules")


def with_peft_loha(family, checkpoint, weights, strengths, x):
    """Outputs with PEFT's LoHa holding `weights` at (model, clip) `strengths`."""
    pipe = pipeline(family, checkpoint)
    networks = [pipe.unet, *encoders_of(pipe)]
    for index, network in enumerate(networks):
        modules = weights[index]
        config = LoHaConfig(r=RANK, alpha=KOHYA_ALPHA, target_modules=list(modules))
        inject_adapter_in_model(config, network, adapter_name="default")
        by_name = dict(network.named_modules())
        for name, parts in modules.items():
            layer = by_name[name]
            for part, tensor in zip(("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"), parts):
                getattr(layer, part)["default"].data.copy_(tensor)
            layer.set_scale("default", strengths[0] if index == 0 else strengths[1])
    return run_unet(family, pipe.unet, x), run_text(family, networks[1:], x)


# ---------------------------------------------------------------------------------------------


def sha256(path):
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def max_diff(a, b):
    return float((a - b).abs().max())


def family_fixtures(family, index, checkpoint, out_dir):
    rng = np.random.default_rng(2700 + index)
    x = inputs(family, rng)
    pipe = pipeline(family, checkpoint)
    files = {fmt: out_dir / f"{family}_{fmt}.safetensors" for fmt in ("kohya", "peft", "loha")}
    write_kohya(family, pipe, checkpoint, rng, files["kohya"])
    write_peft(family, pipe, rng, files["peft"])
    loha = loha_weights(family, pipe, rng)
    write_loha(family, pipe, checkpoint, loha, files["loha"])

    out = dict(x)
    base_unet = run_unet(family, pipe.unet, x)
    base_text, base_pooled = run_text(family, encoders_of(pipe), x)
    out["base.unet"], out["base.text.context"] = base_unet, base_text
    if base_pooled is not None:
        out["base.text.pooled"] = base_pooled
    record = {}
    for fmt, path in files.items():
        for s in UNET_STRENGTHS:
            if fmt == "loha":
                unet_out, _ = with_peft_loha(family, checkpoint, loha, (s, 0.0), x)
            else:
                unet_out, _ = with_diffusers(family, checkpoint, [(path, fmt, s, 0.0)], x)
            out[f"{fmt}.unet.{s}"] = unet_out
            record[f"{fmt}.unet.{s} change"] = max_diff(unet_out, base_unet)
        if fmt == "loha":
            _, (context, pooled) = with_peft_loha(family, checkpoint, loha, (0.0, CLIP_STRENGTH), x)
        else:
            _, (context, pooled) = with_diffusers(family, checkpoint, [(path, fmt, 0.0, CLIP_STRENGTH)], x)
        out[f"{fmt}.text.context"] = context
        record[f"{fmt}.text.context change"] = max_diff(context, base_text)
        if pooled is not None:
            out[f"{fmt}.text.pooled"] = pooled
    pair = [(files[f], f, *PAIR[f]) for f in ("kohya", "peft")]
    unet_out, (context, pooled) = with_diffusers(family, checkpoint, pair, x)
    out["pair.unet"], out["pair.text.context"] = unet_out, context
    if pooled is not None:
        out["pair.text.pooled"] = pooled
    record["pair.unet change"] = max_diff(unet_out, base_unet)
    path = out_dir / f"{family}.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in out.items()}, path)
    return {
        "magnitudes": {k: float(v.abs().max()) for k, v in out.items() if not k.startswith(("text.", "unet."))},
        "changes": record,
        "sha256": {p.name: sha256(p) for p in [path, *files.values()]},
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoints", type=pathlib.Path)
    parser.add_argument("--out", type=pathlib.Path,
                        default=HERE.parent.parent / "crates/horde-diffusion/tests/fixtures/lora")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "diffusers": diffusers.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__, "numpy": np.__version__},
        "checkpoint_seed": CHECKPOINT_SEED, "rank": RANK, "kohya_alpha": KOHYA_ALPHA, "peft_alpha": PEFT_ALPHA,
        "tolerance": TOLERANCE, "unet_strengths": UNET_STRENGTHS, "clip_strength": CLIP_STRENGTH,
        "pair": PAIR, "families": {},
    }
    for index, family in enumerate(FAMILIES):
        checkpoint = safetensors.torch.load_file(args.checkpoints / f"{family}.safetensors")
        manifest["families"][family] = family_fixtures(family, index, checkpoint, args.out)
        print(f"{family}: done", file=sys.stderr)
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
