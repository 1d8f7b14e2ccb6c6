"""Pins the engine's textual-inversion embeddings to diffusers' `load_textual_inversion`.

For each case this builds the text encoder(s) of a tiny random checkpoint that the Rust writer
produced (converted with diffusers' own single-file utilities, as tools/sd-fixtures does), loads
embeddings into them with diffusers' `TextualInversionLoaderMixin.load_textual_inversion` (which
adds one token per vector to the tokenizer and writes the vectors into the token embedding
matrix), expands the prompt with its `maybe_convert_prompt` and records the conditioning the
engine must give for the same prompt written with ComfyUI's `embedding:NAME`: at strength 1 and,
weighted as A1111 weights a prompt (`(embedding:NAME:0.8)`), at 0.8.

    python generate.py CHECKPOINT_DIR --bpe BPE_FILE --real REAL_EMBEDDINGS_DIR [--out DIR]

CHECKPOINT_DIR holds what the ignored Rust test `write_encoders_for_the_fixture_tool` of
crates/horde-diffusion/tests/ti_numbers.rs writes; BPE_FILE is CLIP's BPE vocabulary (the copy
in the `instant-clip-tokenizer` crate the engine tokenizes with); REAL_EMBEDDINGS_DIR holds
EasyNegative.ti.pt, bad_prompt.ti.pt, HyperSmoke.ti.pt and nfixer.ti.pt. generate.sh does it all.
"""

import argparse
import hashlib
import json
import os
import platform
import sys

import numpy as np
import safetensors.torch
import torch

import diffusers
import transformers
from diffusers.loaders import TextualInversionLoaderMixin
from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

torch.set_num_threads(1)

CHECKPOINT_SEED = 22
# Largest absolute difference allowed on any output (all of order 1; measured in README.md).
TOLERANCE = 1e-4
START, END = 49406, 49407
# The strength of the weighted variant: `(embedding:NAME:0.8)`.
STRENGTH = 0.8
# Of the real embeddings' outputs (at strength 1 only: weighting is the tiny cases'), the
# first positions are kept, to keep the files small: the prompt, its end and some padding
# (every position from an embedding's first slot on depends on it).
REAL_ROWS = 32

# The text encoders, in the engine's order for each model; `layers` is what diffusers builds
# (SD 2.x's encoder drops the checkpoint's last layer), `output` the hidden state the family
# conditions on.
L = dict(kind="clip", act="quick_gelu", width=32, pad=END)
G = dict(kind="open_clip", act="gelu", width=32, pad=0)
MODELS = {
    "sd15": [dict(L, prefix="cond_stage_model.transformer.", layers=2, output="last")],
    "sd2": [dict(G, prefix="cond_stage_model.model.", layers=2, output="last")],
    "sdxl": [dict(L, prefix="conditioner.embedders.0.transformer.", layers=2, output="penultimate"),
             dict(G, prefix="conditioner.embedders.1.model.", layers=3, output="penultimate", pooled=True)],
    # CLIP-L's and OpenCLIP-H's widths (the real embeddings' 768 and 1024) with one layer left
    # and a narrow MLP: the attention, norms and embeddings at full width, small files.
    "wide_l": [dict(L, prefix="cond_stage_model.transformer.", width=768, layers=1, output="last")],
    "wide_h": [dict(G, prefix="cond_stage_model.model.", width=1024, layers=1, output="last")],
}
INTERMEDIATE = 64

# Tiny random embeddings, written here in the formats people share: name → (format, shapes by
# key). `a1111` is A1111's pickled dict (`string_to_param: {'*': …}`), `pt` a pickled
# `{'emb_params': …}` (older trainers), `safetensors` a safetensors file of the keys.
TINY_EMBEDDINGS = {
    "tiny_sd15_a1111": ("a1111", {"*": (3, 32)}),
    "tiny_sd15_kohya": ("safetensors", {"emb_params": (2, 32)}),
    "tiny_sd2_a1111": ("a1111", {"*": (4, 32)}),
    "tiny_sd2_emb_params": ("pt", {"emb_params": (2, 32)}),
    "tiny_sdxl": ("safetensors", {"clip_l": (2, 32), "clip_g": (2, 32)}),
}
EXTENSION = {"a1111": ".pt", "pt": ".pt", "safetensors": ".safetensors"}

# name, model, embeddings (in the job's order), prompt (ComfyUI's syntax).
CASES = [
    ("sd15_a1111_pt", "sd15", ["tiny_sd15_a1111"], "a photo of embedding:tiny_sd15_a1111 in the snow"),
    ("sd15_two", "sd15", ["tiny_sd15_a1111", "tiny_sd15_kohya"],
     "embedding:tiny_sd15_kohya a cat, embedding:tiny_sd15_a1111"),
    ("sd2_a1111_pt", "sd2", ["tiny_sd2_a1111"], "a photo of embedding:tiny_sd2_a1111 in the snow"),
    ("sd2_emb_params_pt", "sd2", ["tiny_sd2_emb_params"], "embedding:tiny_sd2_emb_params, a dog"),
    ("sdxl_clip_l_clip_g", "sdxl", ["tiny_sdxl"], "a photo of embedding:tiny_sdxl in the snow"),
    ("real_sd1", "wide_l", ["EasyNegative", "bad_prompt"],
     "a portrait, embedding:EasyNegative, blurry, embedding:bad_prompt"),
    ("real_sd2", "wide_h", ["HyperSmoke", "nfixer"], "embedding:HyperSmoke smoke, embedding:nfixer a city"),
]


# ---------------------------------------------------------------------------------------------
# The tokenizer: CLIP's, built from its BPE file the way OpenAI's `SimpleTokenizer` builds its
# vocabulary (diffusers' pipelines load the same vocabulary from the hub).


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def clip_tokenizer(bpe_path):
    with open(bpe_path, encoding="utf-8") as f:
        merges = [tuple(m.split()) for m in f.read().split("\n")[1:49152 - 256 - 2 + 1]]
    vocab = bytes_to_unicode()
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    tokenizer = CLIPTokenizer(vocab={v: i for i, v in enumerate(vocab)}, merges=merges)
    assert len(tokenizer) == 49408
    assert tokenizer("a photo of a cat")["input_ids"] == [START, 320, 1125, 539, 320, 2368, END]
    return tokenizer


# ---------------------------------------------------------------------------------------------
# Text encoders as diffusers converts them


def load_strict(module, state, allowed_unexpected=()):
    missing, unexpected = module.load_state_dict(state, strict=False)
    unexpected = [k for k in unexpected if not any(k.startswith(a) for a in allowed_unexpected)]
    if missing or unexpected:
        sys.exit(f"{type(module).__name__}: missing {missing}, unexpected {unexpected}")
    return module.eval()


def text_encoder(spec, checkpoint):
    config = CLIPTextConfig(vocab_size=49408, hidden_size=spec["width"], intermediate_size=INTERMEDIATE,
                            num_hidden_layers=spec["layers"], num_attention_heads=max(spec["width"] // 64, 1),
                            max_position_embeddings=77, hidden_act=spec["act"], projection_dim=32,
                            attn_implementation="eager")
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
    dropped = [f"{root}encoder.layers.{i}." for i in range(spec["layers"], 64)]
    if not pooled:
        dropped.append("text_projection.")
    return load_strict(model, state, allowed_unexpected=dropped)


class Loader(TextualInversionLoaderMixin):
    """What `load_textual_inversion` needs of a pipeline: no offloading hooks, no components."""

    hf_device_map = None
    components = {}


# ---------------------------------------------------------------------------------------------
# Embeddings


def write_tiny_embeddings(out, rng):
    """Writes each tiny embedding in its format; returns name → {key: tensor}."""
    written = {}
    for name, (fmt, shapes) in TINY_EMBEDDINGS.items():
        tensors = {k: torch.tensor(rng.standard_normal(s) * 0.3, dtype=torch.float32) for k, s in shapes.items()}
        path = os.path.join(out, name + EXTENSION[fmt])
        if fmt == "a1111":
            vectors = tensors["*"].clone().requires_grad_()
            torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors}, "name": name,
                        "step": 100, "sd_checkpoint": None, "sd_checkpoint_name": None}, path)
        elif fmt == "pt":
            torch.save(tensors, path)
        else:
            safetensors.torch.save_file(tensors, path)
        written[name] = path
    return written


def vectors_for(path, model, encoder):
    """The vectors diffusers is given for one encoder: the file itself (its own reader), or for
    SDXL the file's `clip_l` / `clip_g` tensor, as diffusers' documentation loads SDXL ones."""
    if model != "sdxl":
        return path
    return safetensors.torch.load_file(path)["clip_l" if encoder == 0 else "clip_g"]


def token(name):
    """diffusers' token for an embedding: lower case, as CLIP's tokenizer lowercases the prompt
    before it matches added tokens (`<EasyNegative>_1` would never match)."""
    return f"<{name.lower()}>"


def diffusers_prompt(prompt, names):
    for name in names:
        prompt = prompt.replace(f"embedding:{name}", token(name))
    return prompt


def weighted_prompt(prompt, names):
    for name in names:
        prompt = prompt.replace(f"embedding:{name}", f"(embedding:{name}:{STRENGTH})")
    return prompt


# ---------------------------------------------------------------------------------------------


def a1111_weighted(hidden, weights):
    """A1111's emphasis: each position times its weight, then the original mean restored. The
    means are taken in float64 (as the engine takes them): they are near 0, and their ratio
    would magnify float32's rounding of the sums to 1e-4 on outputs of order 5."""
    original_mean = hidden.double().mean()
    weighted = hidden * weights[None, :, None]
    return weighted * float(original_mean / weighted.double().mean())


def run_case(case, checkpoint, paths, bpe):
    name, model_name, embeddings, prompt = case
    contexts, weighted, out, chunk = [], [], {}, None
    for index, spec in enumerate(MODELS[model_name]):
        encoder = text_encoder(spec, checkpoint)
        tokenizer = clip_tokenizer(bpe)
        loader = Loader()
        for e in embeddings:
            loader.load_textual_inversion(vectors_for(paths[e], model_name, index), token=token(e),
                                          tokenizer=tokenizer, text_encoder=encoder)
        text = loader.maybe_convert_prompt(diffusers_prompt(prompt, embeddings), tokenizer)
        ids = tokenizer(text)["input_ids"]
        assert ids[0] == START and ids[-1] == END and len(ids) <= 77, ids
        # Both SDXL encoders get the same ids (pads aside): their tokens were added in one order.
        assert chunk is None or ids == chunk, (ids, chunk)
        chunk = ids
        ids = ids + [spec["pad"]] * (77 - len(ids))
        with torch.no_grad():
            result = encoder(torch.tensor([ids]), output_hidden_states=True)
        hidden = result.last_hidden_state if spec["output"] == "last" else result.hidden_states[-2]
        contexts.append(hidden)
        slot_weights = torch.tensor([STRENGTH if i >= 49408 else 1.0 for i in ids], dtype=torch.float32)
        weighted.append(a1111_weighted(hidden, slot_weights))
        if spec.get("pooled"):
            out["pooled"] = result.text_embeds
        out[f"ids.{index}"] = torch.tensor(ids, dtype=torch.int64)
    out["context"] = torch.cat(contexts, dim=-1)
    out["context_weighted"] = torch.cat(weighted, dim=-1)
    if model_name.startswith("wide"):
        out["context"] = out["context"][:, :REAL_ROWS]
        del out["context_weighted"]
    return {k: v.contiguous() for k, v in out.items()}


def fingerprint(checkpoint):
    """Tensor count and float64 sums, for the Rust test to check it regenerated this checkpoint."""
    total = sum(float(t.double().sum()) for t in checkpoint.values())
    total_abs = sum(float(t.double().abs().sum()) for t in checkpoint.values())
    return {"tensors": len(checkpoint), "sum": total, "sum_abs": total_abs}


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def max_diff(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a if k in b and a[k].is_floating_point())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints")
    parser.add_argument("--bpe", required=True)
    parser.add_argument("--real", required=True)
    parser.add_argument("--out", default="crates/horde-diffusion/tests/fixtures/ti")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    paths = write_tiny_embeddings(args.out, np.random.default_rng(2700))
    for real in ("EasyNegative", "bad_prompt", "HyperSmoke", "nfixer"):
        paths[real] = os.path.join(args.real, f"{real}.ti.pt")
    manifest = {
        "generator": "tools/ti-fixtures/generate.py",
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "diffusers": diffusers.__version__, "transformers": transformers.__version__,
                     "numpy": np.__version__, "safetensors": safetensors.__version__},
        "checkpoint_seed": CHECKPOINT_SEED,
        "tolerance": TOLERANCE,
        "tolerance_meaning": "largest absolute difference on any output",
        "strength": STRENGTH,
        "embeddings": {name: {"file": os.path.basename(paths[name]), "sha256": sha256(paths[name])}
                       for name in paths},
        "checkpoints": {},
        "cases": {},
    }
    checkpoints = {}
    for model in MODELS:
        checkpoints[model] = safetensors.torch.load_file(os.path.join(args.checkpoints, f"{model}.safetensors"))
        manifest["checkpoints"][model] = fingerprint(checkpoints[model])
    for case in CASES:
        name, model, embeddings, prompt = case
        print(name)
        reference = run_case(case, checkpoints[model], paths, args.bpe)
        # Deterministic: a second run gives the same numbers.
        assert max_diff(run_case(case, checkpoints[model], paths, args.bpe), reference) == 0.0
        path = os.path.join(args.out, f"{name}.safetensors")
        safetensors.torch.save_file(reference, path)
        manifest["cases"][name] = {
            "file": f"{name}.safetensors",
            "sha256": sha256(path),
            "model": model,
            "embeddings": embeddings,
            "prompt": prompt,
            "prompt_weighted": weighted_prompt(prompt, embeddings),
            "diffusers_prompt": diffusers_prompt(prompt, embeddings),
            "outputs": {k: {"shape": list(v.shape), "max_abs": float(v.abs().max())}
                        for k, v in reference.items() if v.is_floating_point()},
        }
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
