#!/usr/bin/env python3
"""A full-size random GFPGAN (the published v1.3/v1.4 hyper-parameters: 512², 512-wide
latents, channel multiplier 2) for the loader and the speed comparison; nothing is committed.

Writes DIR/gfpgan_full.pth (as published: torch.save({"params_ema": state_dict}), every
tensor random as in gfpgan.py but with
convolutions at N(0, 1/fan_in) without the tiny network's floor, so that activations stay finite
through the 512² network) and DIR/gfpgan_full.expected.safetensors (input, output with the
stored noise), then times PyTorch's forward at batch 1 on --threads threads. The Rust side is
the ignored test `a_full_size_checkpoint_loads_matches_pytorch_and_is_timed` in
crates/horde-postprocess/tests/gfpgan.rs:

    python tools/postprocess-fixtures/gfpgan_bench.py --dir /tmp/gfpgan-bench --threads 2
    HORDE_GFPGAN_FULL=/tmp/gfpgan-bench cargo test --release -p horde-postprocess \
        --test gfpgan -- --ignored --nocapture
"""

import argparse
import os
import resource
import time

import numpy as np
import torch
from safetensors.numpy import save_file as save_np

import gfpgan as G

FULL = dict(G.HP, out_size=512, num_style_feat=512, channel_multiplier=2, narrow=1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/gfpgan-bench")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--time-only", action="store_true", help="reuse the written files")
    args = ap.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    torch.set_num_threads(args.threads)
    pth = os.path.join(args.dir, "gfpgan_full.pth")
    net = G.build(FULL)
    if args.time_only:
        net.load_state_dict(torch.load(pth)["params_ema"], strict=True)
    else:
        sd = G.randomize(net, G.WEIGHT_SEED, std_floor=0.0)
        torch.save({"params_ema": sd}, pth)
    x = np.random.default_rng(G.INPUT_SEED).random((1, 3, 512, 512), dtype=np.float32) * 2 - 1
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        y = G.run(net, x)
        times.append(time.perf_counter() - start)
    if not args.time_only:
        save_np({"input": x, "output": y}, os.path.join(args.dir, "gfpgan_full.expected.safetensors"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"PyTorch {torch.__version__}, {args.threads} threads: forward "
          f"{', '.join(f'{t:.3f}' for t in times)} s (best {min(times):.3f}); peak RSS {peak:.0f} MiB; "
          f"output [{y.min():+.3f}, {y.max():+.3f}] std {y.std():.3f}")


if __name__ == "__main__":
    main()
