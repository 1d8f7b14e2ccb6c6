"""PyTorch (spandrel) side of the upscaler benchmark: writes a full-size RealESRGAN_x4plus
(RRDBNet, 64 features, 23 blocks, 32 growth channels) with random weights as safetensors for
the Rust side to load, then times spandrel's network on a random image.

Run with the venv of tools/postprocess-fixtures:
  ~/.cache/horde/postprocess-fixtures-venv/bin/python tools/postprocess-bench/pytorch_bench.py \
      --out /tmp/x4plus.safetensors --size 128 --threads 2 --runs 3
Prints one JSON line: the median seconds and the peak resident size of the process.
"""
import argparse
import json
import resource
import statistics
import time

import torch
from safetensors.torch import save_file
from spandrel import ModelLoader
from spandrel.architectures.ESRGAN import ESRGAN


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    net = ESRGAN(in_nc=3, out_nc=3, num_filters=64, num_blocks=23, scale=4)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.02)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    # spandrel's ESRGAN keeps the old layout's names; the Rust loader reads either.
    save_file(state, args.out)
    model = ModelLoader().load_from_file(args.out).model.eval()
    x = torch.rand(1, 3, args.size, args.size)
    times = []
    with torch.inference_mode():
        model(x)  # warm-up
        for _ in range(args.runs):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"impl": "pytorch", "size": args.size, "threads": args.threads,
                      "median_s": statistics.median(times), "peak_rss_mib": round(peak_mib, 1),
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
