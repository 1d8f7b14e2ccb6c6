#!/usr/bin/env python3
"""Re-check the strip_background fixtures from the files alone.

For each network fixture of manifest.json: the sha256 of its files; the stored input against its
seed; the checkpoint loaded (strict) into the reference class at the widths the manifest records,
from the .safetensors and, for u2netp, the .pth; the stored outputs reproduced (|diff| <=
tolerance); every mis-wired variant more than 100x the tolerance away. Then rembg's pipeline on
the stored image, from the stored checkpoints, against the stored masks and cutouts (exact),
and PIL's resizes against the stored ones (exact). Exits non-zero on any failure.

Run from the repository root:
    /root/.cache/horde/postprocess-fixtures-venv/bin/python tools/postprocess-fixtures/background_check.py
"""

import hashlib
import json
import os
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.numpy import load_file as load_np
from safetensors.torch import load_file as load_pt

import background as G
import background_ref as R

DIR = sys.argv[1] if len(sys.argv) > 1 else G.DEFAULT_OUT


def main():
    torch.set_num_threads(1)
    with open(os.path.join(DIR, "manifest.json")) as f:
        manifest = json.load(f)
    tol = manifest["tolerance_abs"]
    passed = failed = 0

    def check(cond, what):
        nonlocal passed, failed
        if cond:
            passed += 1
        else:
            failed += 1
            print(f"FAIL {what}")

    def same_file_hash(name, digest):
        with open(os.path.join(DIR, name), "rb") as f:
            check(hashlib.sha256(f.read()).hexdigest() == digest, f"sha256 of {name}")

    nets = {}
    for entry in manifest["fixtures"]:
        kind = entry["name"]
        for name, digest in entry["sha256"].items():
            same_file_hash(name, digest)
        io = load_np(os.path.join(DIR, entry["expected"]))
        x, y = io["input"], io["outputs"]
        check(np.array_equal(x, G.make_input()), f"{kind}: stored input is the seeded input")
        check(entry["widths"] == R.WIDTHS[kind], f"{kind}: widths")
        sources = [entry["checkpoint"]] + ([f"{kind}.pth"] if kind == "u2netp" else [])
        for source in sources:
            path = os.path.join(DIR, source)
            sd = load_pt(path) if source.endswith(".safetensors") else torch.load(path, weights_only=True)
            net = R.build(kind)
            net.load_state_dict(sd, strict=True)
            ours = np.concatenate(R.run(net, x), 0)
            diff = float(np.abs(ours - y).max())
            check(diff <= tol, f"{kind} ({source}): outputs max|diff| {diff:.3e} > {tol}")
            print(f"{kind:7s} {source:22s} reproduced, max|diff| {diff:.1e}")
        nets[kind] = net
        outputs = list(y[:, None])
        for what, bad in R.miswired_runs(kind, sd, x):
            if isinstance(bad, str):
                print(f"    mis-wired, caught: {what}: {bad}")
                passed += 1
                continue
            d = max(float(np.abs(b - o).max()) for b, o in zip(bad, outputs))
            check(d > 100 * tol, f"{kind}: mis-wired '{what}' only moves the outputs by {d:.3e}")
            print(f"    mis-wired, caught: {what}: max|diff| {d:.3e}")

    pipe = manifest["pipeline"]
    same_file_hash(pipe["image"], pipe["sha256"])
    img = Image.open(os.path.join(DIR, pipe["image"])).convert("RGB")
    check(np.array_equal(np.asarray(img), np.asarray(G.make_image())), "pipeline image regenerates")
    for run in pipe["runs"]:
        kind = run["kind"]
        mask, small, _ = R.rembg_mask(nets[kind], kind, img)
        cutout = R.naive_cutout(img, mask)
        for what, im in (("network_mask", small), ("mask", mask), ("cutout", cutout)):
            stored = np.asarray(Image.open(os.path.join(DIR, run[what])))
            check(np.array_equal(stored, np.asarray(im)), f"pipeline {kind}: {what} reproduced")
        print(f"pipeline {kind}: network mask, mask and cutout reproduced")
    stored_mask = Image.open(os.path.join(DIR, "pipeline.u2netp.mask.png"))
    for size, entry in pipe["pil_lanczos"].items():
        source = stored_mask if size.startswith("mask") else img
        stored = Image.open(os.path.join(DIR, entry["file"]))
        ours = source.resize(stored.size, Image.Resampling.LANCZOS)
        check(np.array_equal(np.asarray(stored), np.asarray(ours)), f"PIL resize {size} reproduced")

    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
