"""Pickled-checkpoint fixtures for crates/horde-diffusion/tests/pickled.rs (see README.md).

Every file is written with torch.save, as the checkpoints of the AI Horde model reference were;
beside each convertible one, a .safetensors of the same tensors (contiguous, written with
safetensors.torch.save_file) is what the converter must produce, byte for byte.

    make_ckpt.py CHECKPOINTS [--out DIR]

CHECKPOINTS holds tiny_sd15.safetensors, written by the Rust test
`write_tiny_sd15_for_the_fixture_tool` (generate.sh runs it); the pickle of it is written there
too, and only its data.pkl is kept (see tiny_sd15).
"""

import argparse
import json
import os
import pathlib
import zipfile

import torch
from safetensors.torch import load_file, save_file

SEED = 30
# The command the `runs_code` fixture's pickle would run if Python unpickled it: it only creates
# a marker file in the working directory, which the Rust test checks is never created.
MARKER = "horde-pickle-ran-code"


def random(gen, shape, dtype):
    """A random tensor of `dtype`: normal floats, integers from 2 (no 0 or 1 anywhere)."""
    if dtype.is_floating_point:
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    return torch.randint(2, 250, shape, generator=gen, dtype=torch.int64).to(dtype)


def sd_layout(gen):
    """A state dict in the SD layout: every dtype torch saves, views and shared storages."""
    sd = {
        "model.diffusion_model.input_blocks.0.0.weight": random(gen, (4, 3, 3, 3), torch.float32),
        "model.diffusion_model.input_blocks.0.0.bias": random(gen, (4,), torch.float16),
        "first_stage_model.decoder.conv_in.weight": random(gen, (4, 2, 3, 3), torch.bfloat16),
        "first_stage_model.decoder.conv_in.bias": random(gen, (4,), torch.float64),
        "cond_stage_model.transformer.text_model.embeddings.position_ids": random(
            gen, (1, 77), torch.int64
        ),
        "cond_stage_model.counts": random(gen, (6,), torch.int32),
        "cond_stage_model.bytes": random(gen, (5,), torch.uint8),
        "cond_stage_model.logit_scale": random(gen, (), torch.float32),
        # An nn.Parameter is pickled through torch._utils._rebuild_parameter.
        "model.diffusion_model.out.0.weight": torch.nn.Parameter(
            random(gen, (3,), torch.float32), requires_grad=False
        ),
        # A transposed view: strides (1, 10) over a [6, 10] storage.
        "model.diffusion_model.proj_in.weight": random(gen, (6, 10), torch.float32).t(),
        # Every other column: strides (8, 2), neither row- nor column-major.
        "model.diffusion_model.proj_out.weight": random(gen, (5, 8), torch.float16)[:, ::2],
        # A channels-last convolution weight.
        "model.diffusion_model.out.2.weight": random(gen, (4, 3, 3, 2), torch.float32).permute(
            0, 3, 1, 2
        ),
    }
    # Three tensors sharing one storage, at offsets 0, 32 and 64 elements.
    qkv = random(gen, (12, 8), torch.float32)
    for i, name in enumerate("qkv"):
        sd[f"model.diffusion_model.attn.to_{name}.weight"] = qkv[4 * i : 4 * (i + 1)]
    expected = dict(sd)
    sd["model_ema.decay"] = random(gen, (), torch.float32)
    sd["model_ema.num_updates"] = random(gen, (), torch.int32)
    sd["model_ema.diffusion_modelinput_blocks00weight"] = random(gen, (4, 3, 3, 3), torch.float32)
    return {"state_dict": sd, "global_step": 123, "epoch": 4}, expected


def top_level(gen):
    """Tensors at the top level, with one entry that is not a tensor."""
    tensors = {
        "encoder.weight": random(gen, (3, 5), torch.float16),
        "encoder.bias": random(gen, (3,), torch.float32),
        "decoder.weight": random(gen, (5, 3), torch.float32).t(),
    }
    return {**tensors, "step": 5}, tensors


class RunsCode:
    """Unpickled by Python, this would run a shell command."""

    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


def save_pair(out, name, pickled, expected):
    torch.save(pickled, out / f"{name}.ckpt")
    contiguous = {k: v.detach().clone().contiguous() for k, v in expected.items()}
    save_file(contiguous, out / f"{name}.safetensors")
    print(f"wrote {name}.ckpt and {name}.safetensors ({len(expected)} tensors)")


def tiny_sd15(checkpoints, out):
    """The tiny SD 1.5 checkpoint as torch saves it, every 2-D weight a column-major view.

    The whole pickle is 12 MB (the token embedding alone is 6 MB), too big to commit; what
    torch wrote that matters, its data.pkl, is committed with the list of its storages (which
    tensor each holds, and whether transposed), and the Rust test rebuilds the archive from the
    tiny checkpoint it writes itself. Both are checked here against the archive torch wrote.
    """
    tensors = load_file(checkpoints / "tiny_sd15.safetensors")
    sd = {k: (t.t().contiguous().t() if t.dim() == 2 else t) for k, t in tensors.items()}
    assert all(torch.equal(sd[k], tensors[k]) for k in tensors)
    path = checkpoints / "tiny_sd15.ckpt"
    torch.save({"state_dict": sd, "global_step": 1}, path)
    # torch numbers storages in the order it pickles them: the state dict's order.
    storages = [[k, "transposed" if t.dim() == 2 else "contiguous"] for k, t in sd.items()]
    with zipfile.ZipFile(path) as archive:
        # The records' folder: the file's stem, for files torch writes by path.
        prefix = archive.namelist()[0].split("/")[0]
        for key, (name, layout) in enumerate(storages):
            t = tensors[name].t() if layout == "transposed" else tensors[name]
            stored = archive.read(f"{prefix}/data/{key}")
            assert stored == t.contiguous().numpy().tobytes(), (key, name)
        (out / "tiny_sd15.data.pkl").write_bytes(archive.read(f"{prefix}/data.pkl"))
    manifest = {"prefix": prefix, "global_step": 1, "storages": storages}
    (out / "tiny_sd15.storages.json").write_text(json.dumps(manifest, indent=0) + "\n")
    print(f"wrote tiny_sd15.data.pkl and tiny_sd15.storages.json ({len(storages)} storages)")


def main():
    here = pathlib.Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("checkpoints", type=pathlib.Path)
    parser.add_argument(
        "--out",
        type=pathlib.Path,
        default=here.parents[1] / "crates/horde-diffusion/tests/fixtures/pickled",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(SEED)

    save_pair(args.out, "sd_layout", *sd_layout(gen))
    pickled, expected = top_level(gen)
    save_pair(args.out, "top_level", pickled, expected)
    torch.save({"module": expected, "epoch": 2}, args.out / "wrapped.ckpt")
    print("wrote wrapped.ckpt (top_level's tensors under `module`)")
    weight = random(gen, (2, 3), torch.float32)
    save_pair(args.out, "runs_code", {"weight": weight, "payload": RunsCode()}, {"weight": weight})
    torch.save(
        {"weight": random(gen, (2, 3), torch.float32)},
        args.out / "legacy.ckpt",
        _use_new_zipfile_serialization=False,
    )
    print("wrote legacy.ckpt (pre-1.6 format)")
    tiny_sd15(args.checkpoints, args.out)


if __name__ == "__main__":
    main()
