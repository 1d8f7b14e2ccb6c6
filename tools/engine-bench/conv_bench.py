#!/usr/bin/env python3
"""PyTorch's side of `engine --part conv --dtype bf16`: the SD 1.5 UNet's 3x3 convolution
shapes at 512x512 (batch 2, padding 1, a bias) through `torch.nn.functional.conv2d` in
bfloat16 on the CPU (oneDNN; eager mode reorders the weights for it at each call), the
fastest of --repeats calls after one untimed, in milliseconds, one line per shape in the
format of our side's bf16 column.

    python conv_bench.py [--threads 1] [--repeats 5]

Run it with the venv of `tools/sd-fixtures`. See README.md in this directory.
"""

import argparse
import time

import torch

SHAPES = [
    ("unet 64x64", 2, 320, 320, 64),
    ("unet 32x32", 2, 640, 640, 32),
    ("unet 16x16", 2, 1280, 1280, 16),
    ("unet 8x8", 2, 1280, 1280, 8),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print("shape                 bf16 ms")
    for name, batch, c_in, c_out, size in SHAPES:
        x = torch.randn(batch, c_in, size, size).bfloat16()
        w = (torch.randn(c_out, c_in, 3, 3) * 0.05).bfloat16()
        bias = torch.randn(c_out).bfloat16()
        best = float("inf")
        with torch.no_grad():
            torch.nn.functional.conv2d(x, w, bias, padding=1)
            for _ in range(args.repeats):
                started = time.perf_counter()
                torch.nn.functional.conv2d(x, w, bias, padding=1)
                best = min(best, time.perf_counter() - started)
        print(f"{name:<20} {best * 1e3:>9.2f}")


if __name__ == "__main__":
    main()
