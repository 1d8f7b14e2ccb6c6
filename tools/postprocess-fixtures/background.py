#!/usr/bin/env python3
"""Reference fixtures for `strip_background` (horde-postprocess `background`): tiny random
U2NET, U2NETP and ISNetDIS checkpoints in the published key layouts, the networks' outputs for a
fixed input, and rembg's whole pipeline (resize, normalise, network, min-max, 8 bits, resize back,
naive cutout) on a small image.

For each kind (u2net, u2netp, isnet):
1. build the published class at tiny widths (background_ref.build) and fill every tensor of
   its state dict from a seeded numpy generator (running statistics and num_batches_tracked too);
2. write the state dict as <kind>.safetensors (u2netp also as a plain torch.save'd .pth, the
   form u2netp.pth is published in);
3. run the fixed input [1, 3, 37, 45] (odd sides: ceil-mode pooling and uneven bilinear
   upsampling are exercised) and write input and every output to <kind>.expected.safetensors;
4. run the mis-wired variants (background_ref.miswired_runs) and record how far each misses.
Then rembg's pipeline for u2netp (320²) and isnet (1024²) on pipeline.image.png (400×300), written
as PNGs (the 8-bit mask at the network's size, the mask at the image's size, the cutout), and
PIL's Lanczos resize alone on that image and on a mask, both ways. Everything else goes to manifest.json.

Run from the repository root:
    /root/.cache/horde/postprocess-fixtures-venv/bin/python tools/postprocess-fixtures/background.py
Output: crates/horde-postprocess/tests/fixtures/background/ (or --out DIR).
"""

import argparse
import hashlib
import json
import os
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.numpy import save_file as save_np
from safetensors.torch import save_file as save_pt

import background_ref as R

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "..", "..", "crates", "horde-postprocess", "tests", "fixtures",
                           "background")
INPUT_SEED = 20260201
INPUT_SHAPE = (1, 3, 37, 45)
TOLERANCE = 3e-5  # max |ours - reference| over every output (sigmoids), float32
SEEDS = {"u2net": 301, "u2netp": 302, "isnet": 303}
ORIGINALS = {
    "u2net": "u2net.pth (U2NET, 44.0M parameters; rembg's u2net.onnx)",
    "u2netp": "u2netp.pth (U2NETP, 1.13M parameters; rembg's u2netp.onnx)",
    "isnet": "isnet-general-use.pth (ISNetDIS, 44.0M parameters; rembg's isnet-general-use.onnx)",
}


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def make_input():
    """Values in [-2, 2), about the range of a normalised image."""
    return (np.random.default_rng(INPUT_SEED).random(INPUT_SHAPE, dtype=np.float32) * 4 - 2)


def make_image(width=400, height=300):
    """A smooth synthetic photo: a lit ellipse (the 'object') on a graded background, so it
    compresses well as PNG and has an edge for the mask to find."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    bg = np.stack([40 + 120 * x / width, 90 + 60 * np.sin(y / 23.0), 160 - 100 * y / height], -1)
    inside = ((x - 0.55 * width) / (0.27 * width)) ** 2 + ((y - 0.5 * height) / (0.33 * height)) ** 2
    obj = np.stack([220 - 60 * np.cos(x / 17.0), 120 + 50 * np.sin((x + y) / 29.0), 60 + 0 * x], -1)
    alpha = np.clip((1.0 - inside) * 8.0, 0.0, 1.0)[..., None]
    img = bg * (1 - alpha) + obj * alpha
    return Image.fromarray(np.clip(np.round(img), 0, 255).astype(np.uint8), mode="RGB")


def stats(a):
    return {"min": float(a.min()), "max": float(a.max()), "mean": float(a.mean()), "std": float(a.std())}


def network_fixture(kind, x, out):
    net = R.build(kind)
    sd = R.randomize(net, SEEDS[kind])
    for k, v in sd.items():
        assert v.numel() == 1 or not (torch.all(v == 0) or torch.all(v == 1)), k
    ckpt = os.path.join(out, f"{kind}.safetensors")
    save_pt({k: v.contiguous() for k, v in sd.items()}, ckpt)
    files = [ckpt]
    if kind == "u2netp":
        pth = os.path.join(out, f"{kind}.pth")
        torch.save({k: v.contiguous() for k, v in sd.items()}, pth)
        files.append(pth)

    outputs = R.run(net, x)
    for o in outputs:
        assert o.shape == (1, 1) + INPUT_SHAPE[2:], o.shape
        assert np.isfinite(o).all()
    stacked = np.concatenate(outputs, 0).astype(np.float32)
    exp = os.path.join(out, f"{kind}.expected.safetensors")
    save_np({"input": x, "outputs": stacked}, exp)
    files.append(exp)

    mis, ok = [], True
    for what, bad in R.miswired_runs(kind, sd, x):
        if isinstance(bad, str):  # the variant cannot run at all: caught
            mis.append({"change": what, "max_abs_diff": None, "result": bad, "over_100x_tolerance": True})
            continue
        d = max(float(np.abs(b - o).max()) for b, o in zip(bad, outputs))
        mis.append({"change": what, "max_abs_diff": d, "over_100x_tolerance": d > 100 * TOLERANCE})
        ok &= d > 100 * TOLERANCE

    entry = {
        "name": kind,
        "checkpoint": os.path.basename(ckpt),
        "expected": os.path.basename(exp),
        "modelled_on": ORIGINALS[kind],
        "reference_class": {"u2net": "backgroundremover.u2net.u2net.U2NET",
                            "u2netp": "backgroundremover.u2net.u2net.U2NETP",
                            "isnet": "dis_inference/models/isnet.py ISNetDIS"}[kind],
        "widths": R.WIDTHS[kind],
        "init_seed": SEEDS[kind],
        "num_tensors": len(sd),
        "num_params": int(sum(v.numel() for v in sd.values())),
        "keys": {k: "x".join(map(str, v.shape)) or "scalar" for k, v in sd.items()},
        "outputs": len(outputs),
        "output_stats": [stats(o) for o in outputs],
        "miswired": mis,
        "sha256": {os.path.basename(f): sha256(f) for f in files},
    }
    print(f"{kind:7s} params={entry['num_params']:6d} ckpt={os.path.getsize(ckpt):7d}B outputs={len(outputs)} "
          f"first=[{outputs[0].min():.3f},{outputs[0].max():.3f}] std={outputs[0].std():.3f}")
    for m in mis:
        print(f"    mis-wired: {m['change']}: " + (f"max|diff| {m['max_abs_diff']:.3e}"
                                                    if m["max_abs_diff"] is not None else m["result"]))
    return net, entry, ok


def pipeline_fixture(kind, net, img, out):
    mask, small, (mi, ma) = R.rembg_mask(net, kind, img)
    cutout = R.naive_cutout(img, mask)
    files = {}
    for what, im in (("mask", mask), ("cutout", cutout), ("network_mask", small)):
        path = os.path.join(out, f"pipeline.{kind}.{what}.png")
        im.save(path, optimize=True)
        files[what] = path
    small_arr = np.asarray(small)
    return {
        "kind": kind,
        "session": {"mean": R.SESSIONS[kind][0], "std": R.SESSIONS[kind][1],
                    "size": list(R.SESSIONS[kind][2]), "clip_before_255": R.SESSIONS[kind][3]},
        "mask": os.path.basename(files["mask"]),
        "cutout": os.path.basename(files["cutout"]),
        "network_mask": os.path.basename(files["network_mask"]),
        "prediction_range": [mi, ma],
        "network_mask_stats": stats(small_arr.astype(np.float64)),
        "mask_stats": stats(np.asarray(mask).astype(np.float64)),
        "sha256": {os.path.basename(p): sha256(p) for p in files.values()},
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(1)
    torch.manual_seed(0)

    x = make_input()
    manifest = {
        "format_version": 1,
        "generator": "tools/postprocess-fixtures/background.py",
        "versions": R.VERSIONS,
        "isnet_source": R.DIS_PATH.split("site-packages/")[-1],
        "input": {"shape": list(INPUT_SHAPE), "dtype": "float32",
                  "source": f"numpy.random.default_rng({INPUT_SEED}).random(shape, float32) * 4 - 2"},
        "tolerance_abs": TOLERANCE,
        "fixtures": [],
        "pipeline": {"image": "pipeline.image.png", "runs": []},
    }
    ok = True
    nets = {}
    for kind in ("u2net", "u2netp", "isnet"):
        net, entry, good = network_fixture(kind, x, out)
        nets[kind] = net
        manifest["fixtures"].append(entry)
        ok &= good

    img = make_image()
    img_path = os.path.join(out, "pipeline.image.png")
    img.save(img_path, optimize=True)
    manifest["pipeline"]["size"] = list(img.size)
    manifest["pipeline"]["sha256"] = sha256(img_path)
    # PIL's Lanczos alone, both ways, for the Rust resampler to match to the bit.
    resized = {}
    for w, h in ((320, 320), (171, 129)):
        path = os.path.join(out, f"pipeline.image.lanczos{w}x{h}.png")
        img.resize((w, h), Image.Resampling.LANCZOS).save(path, optimize=True)
        resized[f"{w}x{h}"] = {"file": os.path.basename(path), "sha256": sha256(path)}
    manifest["pipeline"]["pil_lanczos"] = resized
    for kind in ("u2netp", "isnet"):
        run = pipeline_fixture(kind, nets[kind], img, out)
        manifest["pipeline"]["runs"].append(run)
    # And on a one-channel image (the mask's way back): shrinking, enlarging, and two sizes that
    # Pillow 13 resizes vertically first (the height loses over twice the pixels the width
    # does): widening while shrinking in height, and shrinking mostly in height.
    mask = Image.open(os.path.join(out, "pipeline.u2netp.mask.png"))
    for w, h in ((133, 101), (512, 384), (520, 250), (380, 100)):
        path = os.path.join(out, f"pipeline.u2netp.mask.lanczos{w}x{h}.png")
        mask.resize((w, h), Image.Resampling.LANCZOS).save(path, optimize=True)
        resized[f"mask {w}x{h}"] = {"file": os.path.basename(path), "sha256": sha256(path)}
        print(f"pipeline {kind}: prediction in [{run['prediction_range'][0]:.4f}, "
              f"{run['prediction_range'][1]:.4f}], mask mean {run['mask_stats']['mean']:.1f}")

    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(out, n)) for n in os.listdir(out))
    print(f"total {total} bytes in {out}")
    if not ok:
        print("FAIL: a mis-wired variant stays within 100x tolerance", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
