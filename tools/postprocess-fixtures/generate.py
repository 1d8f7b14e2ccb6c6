#!/usr/bin/env python3
"""Generate reference fixtures for the post-processing upscalers (ESRGAN family) of
horde-diffusion: tiny random checkpoints in the published key layouts, and what spandrel
computes from them for a fixed input.

For every fixture in spandrel_ref.FIXTURES:
1. build the network with spandrel's own architecture class (ESRGAN = old-arch RRDBNet,
   Compact = SRVGGNetCompact) at a tiny size;
2. fill every tensor with seeded random values;
3. write the state dict as safetensors in the key layout of the published checkpoints;
4. load that file back through spandrel.ModelLoader (which detects architecture, scale,
   channels and blocks from the tensors alone) and run the fixed 1x3x16x16 input through it;
5. write input and output to <name>.expected.safetensors and everything else to manifest.json.

Run through generate.sh, which builds the pinned virtual environment. Output goes to
crates/horde-postprocess/tests/fixtures/upscalers/ (or --out DIR).
"""

import argparse
import hashlib
import json
import os
import sys
import tempfile

import numpy as np
import torch
from safetensors.numpy import save_file as save_np
from safetensors.torch import save_file as save_pt

import spandrel_ref as R
from spandrel.architectures.ESRGAN import _to_old_arch

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "..", "..", "crates", "horde-postprocess", "tests", "fixtures",
                           "upscalers")
FORMAT_VERSION = 1


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def check_gc_patch_is_noop_at_32(x):
    """The growth-channel patch must not change anything for gc = 32 (all published models)."""
    fx = dict(R.FIXTURES[0], gc=32, hp=dict(R.FIXTURES[0]["hp"], num_filters=4, num_blocks=1))
    net = R.build_reference(fx)
    sd = R.to_layout(fx, R.randomize(net, 7))
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "gc32.safetensors")
        save_pt(sd, path)
        _, y_stock = R.load_and_run(path, x, patch=False)
        _, y_patched = R.load_and_run(path, x, patch=True)
    assert np.array_equal(y_stock, y_patched), "gc patch changes a gc=32 model"
    return float(np.abs(y_stock).max())


def stock_spandrel_rejects(path):
    try:
        R.load_and_run(path, R.make_input(), patch=False)
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(1)
    torch.manual_seed(0)

    x = R.make_input()
    gc32 = check_gc_patch_is_noop_at_32(x)
    print(f"gc patch: identical output with and without it for a gc=32 model (max |y| {gc32:.3f})")

    manifest = {
        "format_version": FORMAT_VERSION,
        "generator": "tools/postprocess-fixtures/generate.py",
        "versions": R.VERSIONS,
        "input": {"shape": list(R.INPUT_SHAPE), "dtype": "float32",
                  "source": f"numpy.random.default_rng({R.INPUT_SEED}).random(shape, float32)"},
        "tolerance_abs": R.TOLERANCE,
        "gc_patch": "spandrel hard-codes the RRDB growth channels gc=32; these fixtures use gc=4 and "
                    "are loaded with spandrel_ref.gc_patch, which reads gc from "
                    "conv1's output channels (checked to be a no-op at gc=32)",
        "fixtures": [],
    }
    ok = True
    for fx in R.FIXTURES:
        net = R.build_reference(fx)
        net.eval()
        old_sd = R.randomize(net, fx["seed"])
        sd = R.to_layout(fx, old_sd)
        if fx["layout"] == "new":
            back = _to_old_arch(dict(sd))
            assert list(back) == list(old_sd) and all(torch.equal(back[k], old_sd[k]) for k in back), \
                "old_to_new is not the inverse of spandrel's _new_to_old_arch"
        for k, v in sd.items():
            assert not torch.all(v == 0) and not torch.all(v == 1), k
        ckpt = os.path.join(out, f"{fx['name']}.safetensors")
        save_pt({k: v.contiguous() for k, v in sd.items()}, ckpt)
        if fx["name"] == "realesrgan_x2plus":
            # Also as Real-ESRGAN's releases ship it: torch.save({"params_ema": state_dict}).
            torch.save({"params_ema": {k: v.contiguous() for k, v in sd.items()}},
                       os.path.join(out, f"{fx['name']}.pth"))

        desc, y = R.load_and_run(ckpt, x)
        with torch.no_grad():
            y_direct = net(torch.from_numpy(x)).numpy()
        direct_diff = float(np.abs(y - y_direct).max())
        assert direct_diff == 0.0, f"{fx['name']}: loaded model differs from built one ({direct_diff})"
        expected_scale = fx["hp"].get("upscale") or fx["hp"]["scale"] // (fx["hp"]["shuffle_factor"] or 1)
        assert desc.scale == expected_scale, (desc.scale, expected_scale)
        assert y.shape == (1, 3, 16 * desc.scale, 16 * desc.scale), y.shape
        assert np.isfinite(y).all()

        exp = os.path.join(out, f"{fx['name']}.expected.safetensors")
        save_np({"input": x, "output": y.astype(np.float32)}, exp)

        mis = []
        for what, bad in R.miswirings(fx, sd):
            d = float(np.abs(R.run_state_dict(bad, x) - y).max())
            mis.append({"change": what, "max_abs_diff": d, "fails": d > R.TOLERANCE})
            ok &= d > 100 * R.TOLERANCE

        rejected = stock_spandrel_rejects(ckpt) if fx["kind"] == "rrdb" else None
        entry = {
            "name": fx["name"],
            "checkpoint": os.path.basename(ckpt),
            "expected": os.path.basename(exp),
            "modelled_on": fx["original"],
            "key_layout": fx["layout"],
            "spandrel_architecture": desc.architecture.id,
            "spandrel_architecture_name": desc.architecture.name,
            "scale": desc.scale,
            "input_channels": desc.input_channels,
            "output_channels": desc.output_channels,
            "spandrel_hyperparameters": {k: v for k, v in desc.model.hyperparameters.items()},
            "growth_channels": fx["gc"],
            "tags": list(desc.tags),
            "size_requirements": {"minimum": desc.size_requirements.minimum,
                                  "multiple_of": desc.size_requirements.multiple_of},
            "init_seed": fx["seed"],
            "num_tensors": len(sd),
            "num_params": int(sum(v.numel() for v in sd.values())),
            "keys": {k: list(v.shape) for k, v in sd.items()},
            "output_shape": list(y.shape),
            "output_stats": {"min": float(y.min()), "max": float(y.max()), "mean": float(y.mean()),
                             "std": float(y.std())},
            "miswired": mis,
            "stock_spandrel_load_error": rejected,
            "sha256": {os.path.basename(ckpt): sha256(ckpt), os.path.basename(exp): sha256(exp)},
        }
        manifest["fixtures"].append(entry)
        print(f"{fx['name']:28s} {desc.architecture.id:8s} x{desc.scale} layout={fx['layout']:7s} "
              f"params={entry['num_params']:6d} ckpt={os.path.getsize(ckpt):6d}B "
              f"out=[{y.min():+.3f},{y.max():+.3f}] std={y.std():.3f}")
        for m in mis:
            print(f"    mis-wired: {m['change']}: max|diff| {m['max_abs_diff']:.3e}")
        if rejected:
            print(f"    stock spandrel (no gc patch): {rejected}")

    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=False)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(out, n)) for n in os.listdir(out))
    print(f"total {total} bytes in {out}")
    if not ok:
        print("FAIL: a mis-wired variant stays within 100x tolerance", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
