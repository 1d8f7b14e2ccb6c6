#!/usr/bin/env python3
"""Reload every post-processing fixture and re-run it through spandrel.

For each entry of manifest.json: check the files' sha256; load the checkpoint through
spandrel.ModelLoader (architecture, scale and sizes detected from the tensors alone) and check
what it detects; run the stored input and compare with the stored output (|diff| <= tolerance);
then run every deliberately mis-wired variant of the checkpoint (spandrel_ref.miswirings) and
require it to miss the stored output by more than 100x the tolerance, i.e. that the fixture would
catch such a wiring mistake in a port. Exits non-zero on any failure.

Run: <venv>/bin/python check_fixtures.py [FIXTURE_DIR]
"""

import hashlib
import json
import os
import sys

import numpy as np
from safetensors.numpy import load_file as load_np
from safetensors.torch import load_file as load_pt

import spandrel_ref as R

HERE = os.path.dirname(os.path.abspath(__file__))
DIR = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "..", "crates", "horde-postprocess",
                                                           "tests", "fixtures", "upscalers")


def main():
    with open(os.path.join(DIR, "manifest.json")) as f:
        manifest = json.load(f)
    tol = manifest["tolerance_abs"]
    by_name = {fx["name"]: fx for fx in R.FIXTURES}
    passed = failed = 0

    def check(cond, what):
        nonlocal passed, failed
        if cond:
            passed += 1
        else:
            failed += 1
            print(f"FAIL {what}")

    for entry in manifest["fixtures"]:
        name = entry["name"]
        for fname, digest in entry["sha256"].items():
            with open(os.path.join(DIR, fname), "rb") as f:
                check(hashlib.sha256(f.read()).hexdigest() == digest, f"{name}: sha256 of {fname}")
        ckpt = os.path.join(DIR, entry["checkpoint"])
        io = load_np(os.path.join(DIR, entry["expected"]))
        x, y_exp = io["input"], io["output"]
        check(np.array_equal(x, R.make_input()), f"{name}: stored input is the seeded input")

        desc, y = R.load_and_run(ckpt, x)
        check(desc.architecture.id == entry["spandrel_architecture"], f"{name}: architecture")
        check(desc.scale == entry["scale"], f"{name}: scale")
        check(y.shape == y_exp.shape, f"{name}: output shape")
        diff = float(np.abs(y - y_exp).max())
        check(diff <= tol, f"{name}: output max|diff| {diff:.3e} > {tol}")
        print(f"{name:28s} {desc.architecture.id:8s} x{desc.scale} reproduced, max|diff| {diff:.1e}")

        sd = load_pt(ckpt)
        for what, bad in R.miswirings(by_name[name], sd):
            d = float(np.abs(R.run_state_dict(bad, x) - y_exp).max())
            check(d > 100 * tol, f"{name}: mis-wired '{what}' only moves the output by {d:.3e}")
            print(f"    mis-wired, caught: {what}: max|diff| {d:.3e}")

    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
