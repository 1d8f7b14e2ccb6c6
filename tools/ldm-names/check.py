"""Independent check of horde's single-file (LDM) tensor layout, with diffusers' own single-file
converters as the judge.

For each of sd15, sd2 and sdxl: writes a tiny checkpoint with `horde model tiny`, loads it with
safetensors, runs the converters of `diffusers.loaders.single_file_utils`
(`convert_ldm_unet_checkpoint`, `convert_ldm_vae_checkpoint`, `convert_ldm_clip_checkpoint`,
`convert_open_clip_checkpoint`) with the config of the matching tiny diffusers model (built as in
tools/diffusers-names/dump.py), and checks that every converted state dict has exactly the names
and shapes of that model and loads into it with `load_state_dict(strict=True)`. It also:

* runs the public entry points `UNet2DConditionModel.from_single_file` /
  `AutoencoderKL.from_single_file` (config from a local folder, offline) and diffusers'
  `create_diffusers_clip_model_from_ldm`, and checks they give the same weights;
* lists the tensors of our file that no converter consumed, and keys a converter asked for that
  our file lacks (a converter that reads a missing key gets `None`).

Needs torch, diffusers (0.42.1 here), transformers and safetensors, e.g. the venv
$HOME/.cache/horde/sampler-fixtures-venv. Usage:

    python tools/ldm-names/check.py [--horde PATH] [--fixtures DIR] [--json OUT]

Exit status 0 when every part matches, 1 otherwise.
"""

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile

import diffusers
import torch
import transformers
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders import single_file_utils as sfu
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


# --- The tiny diffusers models: the same builders and configs as tools/diffusers-names/dump.py
# (which cannot be imported: it writes its fixtures at import). The fixtures it wrote are compared
# against below, so a drift between the two files shows up as a failure.

def vae():
    return AutoencoderKL(
        block_out_channels=(32, 32, 32, 32), layers_per_block=1, latent_channels=4, norm_num_groups=32,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )


def clip(act, layers, projection=False):
    config = CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                            num_attention_heads=1, max_position_embeddings=77, hidden_act=act, projection_dim=32)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def unet(linear, down, up, context, **extra):
    return UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 64), layers_per_block=1, down_block_types=down, up_block_types=up,
        cross_attention_dim=context, norm_num_groups=32, use_linear_projection=linear, **extra,
    )


cross = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"), ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D")


def pipelines():
    return {
        "sd15": {"unet": unet(False, *cross, 32, attention_head_dim=8), "vae": vae(),
                 "text_encoder": clip("quick_gelu", 2)},
        "sd2": {"unet": unet(True, *cross, 32, attention_head_dim=1), "vae": vae(),
                "text_encoder": clip("gelu", 2)},
        "sdxl": {"unet": unet(True, ("DownBlock2D", "CrossAttnDownBlock2D"), ("CrossAttnUpBlock2D", "UpBlock2D"), 64,
                              attention_head_dim=1, transformer_layers_per_block=(1, 2),
                              addition_embed_type="text_time", addition_time_embed_dim=8,
                              projection_class_embeddings_input_dim=32 + 6 * 8),
                 "vae": vae(), "text_encoder": clip("quick_gelu", 2),
                 "text_encoder_2": clip("gelu", 3, projection=True)},
    }


# --- Helpers

class Recording(dict):
    """A checkpoint dict that remembers which keys were read, and which were asked for but absent."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.read, self.absent = set(), set()

    def __getitem__(self, key):
        (self.read if dict.__contains__(self, key) else self.absent).add(key)
        return dict.__getitem__(self, key)

    def get(self, key, default=None):
        (self.read if dict.__contains__(self, key) else self.absent).add(key)
        return dict.get(self, key, default)


def strip_text_model(model, converted):
    """What `create_diffusers_clip_model_from_ldm` does after converting: `CLIPTextModel` has no
    `text_model.` wrapper in transformers >= 5.6, so the converter's `text_model.` prefix goes."""
    if hasattr(model, "text_model"):
        return converted
    return {k.removeprefix("text_model."): v for k, v in converted.items()}


def open_clip_ignore(prefix, last_layer):
    """diffusers drops SD 2's last OpenCLIP block (`resblocks.23`, the penultimate-layer output is
    what SD 2 uses) and `text_projection` through SD_2_TEXT_ENCODER_KEYS_TO_IGNORE. The tiny SD 2
    encoder has 3 blocks, so its analogue is `resblocks.2`: the same list with 23 -> last_layer."""
    return [k.replace("transformer.resblocks.23.", f"transformer.resblocks.{last_layer}.")
            for k in sfu.SD_2_TEXT_ENCODER_KEYS_TO_IGNORE]


def compare(expected, converted):
    """expected: {name: shape}; converted: {name: tensor-or-None}."""
    got = {k: (None if v is None else list(v.shape)) for k, v in converted.items()}
    return {
        "missing": sorted(set(expected) - set(got)),
        "unexpected": sorted(set(got) - set(expected)),
        "none_values": sorted(k for k, v in got.items() if v is None and k in expected),
        "shape": sorted(f"{k}: ours {got[k]} vs diffusers {expected[k]}"
                        for k in set(expected) & set(got) if got[k] is not None and got[k] != expected[k]),
    }


def strict_load(model, converted):
    try:
        model.load_state_dict({k: v for k, v in converted.items() if v is not None}, strict=True)
        return "ok"
    except Exception as e:  # noqa: BLE001 - reported, not raised
        return f"FAIL: {str(e).splitlines()[0][:300]}"


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    meta = [k for k, v in sb.items() if v.is_meta]
    if meta:
        return f"FAIL: {len(meta)} tensors left unloaded (meta), e.g. {meta[:3]}"
    if sa.keys() != sb.keys():
        return f"FAIL: names differ ({len(set(sa) ^ set(sb))})"
    bad = [k for k in sa if sa[k].shape != sb[k].shape or not torch.equal(sa[k], sb[k])]
    return "ok" if not bad else f"FAIL: {len(bad)} tensors differ, e.g. {bad[:3]}"


def convert_text(family, part, model, ckpt):
    """The converter `create_diffusers_clip_model_from_ldm` picks for this encoder, run directly."""
    if part == "text_encoder" and family in ("sd15", "sdxl"):
        # SD1: cond_stage_model.transformer.*, SDXL: conditioner.embedders.0.transformer.*
        # (both in LDM_CLIP_PREFIX_TO_REMOVE); the names are transformers' own.
        return "convert_ldm_clip_checkpoint", strip_text_model(model, sfu.convert_ldm_clip_checkpoint(ckpt))
    prefix = "cond_stage_model.model." if family == "sd2" else "conditioner.embedders.1.model."
    return "convert_open_clip_checkpoint", strip_text_model(
        model, sfu.convert_open_clip_checkpoint(model, ckpt, prefix=prefix))


def entry_point(cls_name, model, path, ckpt, tmp, part):
    """The public loaders, offline, with the tiny model's config saved to a local folder."""
    folder = os.path.join(tmp, part)
    if cls_name in ("UNet2DConditionModel", "AutoencoderKL"):
        model.save_config(folder)
        loaded = type(model).from_single_file(path, config=folder, local_files_only=True)
    else:
        model.config.save_pretrained(folder)
        if part.endswith("sdxl-text_encoder_2"):
            # create_diffusers_clip_model_from_ldm tells SDXL's two encoders apart by width (CLIP-L 768,
            # OpenCLIP bigG 1280); both are 32 wide in the tiny file, so it would take CLIP-L for the
            # second. Hide CLIP-L from it, as the real widths would.
            ckpt = {k: v for k, v in ckpt.items() if not k.startswith("conditioner.embedders.0.")}
        loaded = sfu.create_diffusers_clip_model_from_ldm(type(model), ckpt, config=folder, local_files_only=True)
    return loaded


# Deliberate layout errors, to show the check would catch them (--negative): each must fail.
U, V = "model.diffusion_model.", "first_stage_model."
MUTATIONS = {
    # SD 1 keeps proj_in/proj_out as 1x1 convs; a linear [C, C] would be wrong there
    "sd15 proj_in as linear": ("sd15", lambda sd: sd.update(
        {k: v[:, :, 0, 0] for k, v in sd.items() if k.endswith("proj_in.weight")})),
    # SD 2 / SDXL use linear projections; a 1x1 conv would be wrong there
    "sd2 proj_out as 1x1 conv": ("sd2", lambda sd: sd.update(
        {k: v[:, :, None, None] for k, v in sd.items() if k.startswith(U) and k.endswith("proj_out.weight")})),
    "sdxl ff.net.2 transposed": ("sdxl", lambda sd: sd.update(
        {k: v.T.contiguous() for k, v in sd.items() if k.endswith("ff.net.2.weight")})),
    "sdxl label_emb named add_embedding": ("sdxl", lambda sd: [
        sd.__setitem__(k.replace("label_emb.0.0", "add_embedding.linear_1"), sd.pop(k))
        for k in list(sd) if "label_emb.0.0" in k]),
    "vae decoder up blocks in diffusers order": ("sd15", lambda sd: sd.update(
        {k.replace(f"decoder.up.{i}.", f"decoder.up.{3 - i}."): sd.pop(k)
         for k in list(sd) for i in range(4) if k.startswith(f"{V}decoder.up.{i}.")})),
    # the converter accepts linear [C, C] here too; real LDM VAEs store 1x1 convs (see vae_attn_4d)
    "vae attention as linear": ("sd2", lambda sd: sd.update(
        {k: v[:, :, 0, 0] for k, v in sd.items() if ".mid.attn_1." in k and v.ndim == 4})),
    "vae norm_out named conv_norm_out": ("sd2", lambda sd: [
        sd.__setitem__(k.replace("norm_out", "conv_norm_out"), sd.pop(k)) for k in list(sd) if "norm_out" in k]),
    "sdxl OpenCLIP without text_projection": ("sdxl", lambda sd: sd.pop(
        "conditioner.embedders.1.model.text_projection")),
    "sd15 CLIP missing final_layer_norm": ("sd15", lambda sd: [
        sd.pop(k) for k in list(sd) if "final_layer_norm" in k]),
}


def run(args, mutation=None):
    tmp = tempfile.mkdtemp(prefix="ldm-names-")
    rows, report, ok = [], {"diffusers": diffusers.__version__, "transformers": transformers.__version__,
                             "torch": torch.__version__, "families": {}}, True
    for family, parts in pipelines().items():
        path = os.path.join(tmp, f"{family}.safetensors")
        out = subprocess.run([args.horde, "model", "tiny", "--arch", family, "--out", path],
                             check=True, capture_output=True, text=True)
        if mutation is None:
            print(out.stdout.strip(), file=sys.stderr)
        raw = load_file(path)
        if mutation is not None:
            if mutation[0] != family:
                continue
            mutation[1](raw)
        fixture_path = os.path.join(args.fixtures, f"diffusers_tiny_{family}_names.json")
        fixture = json.load(open(fixture_path)) if os.path.exists(fixture_path) else None

        consumed = set()  # our tensor names that ended up in some converted state dict
        by_ptr = {t.data_ptr(): k for k, t in raw.items()}
        fam = report["families"][family] = {"tensors": len(raw), "parts": {}}
        for part, model in parts.items():
            expected = {k: list(v.shape) for k, v in model.state_dict().items()}
            ckpt = Recording(raw)
            if part == "unet":
                fn = "convert_ldm_unet_checkpoint"
                converted = sfu.convert_ldm_unet_checkpoint(ckpt, dict(model.config))
            elif part == "vae":
                fn = "convert_ldm_vae_checkpoint"
                converted = sfu.convert_ldm_vae_checkpoint(ckpt, dict(model.config))
            else:
                fn, converted = convert_text(family, part, model, ckpt)
            if fn == "convert_open_clip_checkpoint":
                # splits (in_proj) and the transpose (text_projection) copy: count what was read,
                # minus the ignore list (SD 2's text_projection is read only for its shape)
                consumed |= (ckpt.read & set(raw)) - set(sfu.SD_2_TEXT_ENCODER_KEYS_TO_IGNORE)
            else:
                consumed |= {by_ptr[v.data_ptr()] for v in converted.values()
                             if v is not None and v.data_ptr() in by_ptr}
            diff = compare(expected, converted)
            load = strict_load(model, converted)
            try:
                entry = same_weights(model, entry_point(type(model).__name__, model, path, raw, tmp,
                                                        f"{family}-{part}"))
            except Exception as e:  # noqa: BLE001
                entry = f"FAIL: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
            fixture_ok = None
            if fixture is not None:
                fixture_ok = fixture.get(part) == expected
            match = not any(diff.values()) and load == "ok"
            ok &= match and entry == "ok" and fixture_ok is not False
            fam["parts"][part] = {"converter": fn, "expected": len(expected), "converted": len(converted),
                                  **diff, "strict_load": load, "entry_point": entry,
                                  "absent_keys_read": sorted(ckpt.absent), "same_as_fixture": fixture_ok}
            rows.append((family, part, fn, len(expected), len(converted), "match" if match else "MISMATCH",
                         load, entry, {None: "-", True: "same", False: "DIFFERS"}[fixture_ok]))
        fam["unconsumed"] = sorted(set(raw) - consumed)
        # convert_ldm_vae_checkpoint squeezes the VAE attention weights only when they are 4-D, so it
        # accepts either; the original LDM AttnBlock uses 1x1 Conv2d, so insist on [C, C, 1, 1].
        attn = {k: list(v.shape) for k, v in raw.items()
                if ".mid.attn_1." in k and k.endswith(("q.weight", "k.weight", "v.weight", "proj_out.weight"))}
        fam["vae_attn_4d"] = bad = sorted(f"{k} {s}" for k, s in attn.items() if len(s) != 4 or s[2:] != [1, 1])
        if bad or len(attn) != 8:
            ok = False
            rows.append((family, "vae attn", "(1x1 conv shapes)", 8, len(attn), "MISMATCH", "-", "-", "-"))
    return rows, report, ok


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--horde", default=os.environ.get("HORDE_BIN", "/root/.cache/horde-target/debug/horde"))
    p.add_argument("--fixtures", default=os.path.join(ROOT, "crates/horde-diffusion/tests/fixtures"))
    p.add_argument("--json", help="write the full report (every differing key) here")
    p.add_argument("--negative", action="store_true",
                   help="also check that deliberate layout errors (MUTATIONS) are caught")
    args = p.parse_args()
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    transformers.logging.set_verbosity_error()

    # The tiny SD 2 OpenCLIP has 3 blocks (real: 24); scale the ignore list down to match. The
    # module global is read at call time by convert_open_clip_checkpoint.
    sfu.SD_2_TEXT_ENCODER_KEYS_TO_IGNORE = open_clip_ignore("cond_stage_model.model.", 2)

    rows, report, ok = run(args)
    head = ("family", "part", "converter", "diffusers", "converted", "names+shapes", "strict load",
            "from_single_file", "fixture")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    for r in [head] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    for family, fam in report["families"].items():
        for part, d in fam["parts"].items():
            for what in ("missing", "unexpected", "none_values", "shape", "absent_keys_read"):
                if d[what]:
                    print(f"{family}/{part} {what} ({len(d[what])}): {d[what][:12]}")
        if fam["vae_attn_4d"]:
            print(f"{family}/vae attention not [C, C, 1, 1]: {fam['vae_attn_4d']}")
        print(f"{family}: {fam['tensors']} tensors in our file, not consumed by any converter "
              f"({len(fam['unconsumed'])}): {fam['unconsumed']}")
    print(f"diffusers {report['diffusers']}, transformers {report['transformers']}, torch {report['torch']}")
    print("ALL MATCH" if ok else "DIFFERENCES FOUND")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, sort_keys=True)
    if args.negative:
        for name, mutation in MUTATIONS.items():
            try:
                rows, _, caught_ok = run(args, mutation)
                caught = not caught_ok
                how = "; ".join(f"{r[1]}: {r[5]}, load {r[6][:60]}" for r in rows if r[5] != "match" or r[6] != "ok")
            except Exception as e:  # noqa: BLE001 - a converter crashing also catches it
                caught, how = True, f"converter raised {type(e).__name__}: {str(e)[:80]}"
            print(f"negative check {name!r}: {'caught' if caught else 'NOT CAUGHT'} ({how})")
            ok &= caught
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
