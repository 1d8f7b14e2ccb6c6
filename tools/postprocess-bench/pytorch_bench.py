"""PyTorch side of the post-processor benchmark (BENCHMARKS.md, issue 22 point 8).

Writes a full-size network of the published architecture with random weights for the Rust side
to load, then times PyTorch on the same work, on --threads threads, after one warm-up:

  esrgan   RealESRGAN_x4plus (RRDBNet, 64 features, 23 blocks, 32 growth channels, spandrel's
           class) on a random --size² image; with --tile, in tiles of that many input pixels
           overlapping by 32 (the Rust side's default tiling), blended linearly.
  gfpgan   GFPGANv1Clean at the published hyper-parameters (512², 512-wide latents, channel
           multiplier 2) on one 512² face tensor, through tools/postprocess-fixtures/gfpgan.py's
           builder (the gfpgan package's class, as spandrel ships it).
  u2net    U²-Net (backgroundremover's u2net.py, the architecture of rembg's u2net) through
           rembg's pipeline on a --size² image: Lanczos to 320², normalise, the network, min-max,
           Lanczos back, cutout (tools/postprocess-fixtures/background_ref.py).

Run with the venv of tools/postprocess-fixtures, e.g.
  ~/.cache/horde/postprocess-fixtures-venv/bin/python tools/postprocess-bench/pytorch_bench.py \
      esrgan --out /tmp/x4plus.safetensors --size 128 --threads 2 --runs 3
Prints one JSON line: the median seconds and the peak resident size of the process.
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time

import numpy as np
import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "postprocess-fixtures"))


def esrgan(args):
    from spandrel import ModelLoader
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(0)
    net = ESRGAN(in_nc=3, out_nc=3, num_filters=64, num_blocks=23, scale=4)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.02)
    # spandrel's ESRGAN keeps the old layout's names; the Rust loader reads either.
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, args.out)
    model = ModelLoader().load_from_file(args.out).model.eval()
    x = torch.rand(1, 3, args.size, args.size)
    if args.tile:
        return lambda: tiled(model, x, args.tile, 32, 4)
    return lambda: model(x)


def tiles_along(length, tile, overlap):
    """Tile starts along a side: every tile `tile` long, the last ending at `length`."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, tile - overlap))
    return starts + [length - tile]


def tiled(model, x, tile, overlap, scale):
    """The network on overlapping tiles, each pasted with weights that ramp across the overlap
    (accumulated and divided), as the Rust side does."""
    _, c, h, w = x.shape
    out = torch.zeros(1, c, h * scale, w * scale)
    weight = torch.zeros(1, 1, h * scale, w * scale)
    for top in tiles_along(h, tile, overlap):
        for left in tiles_along(w, tile, overlap):
            th, tw = min(tile, h), min(tile, w)
            y = model(x[:, :, top:top + th, left:left + tw])
            ramp_y = ramp(th * scale, overlap * scale, top > 0, top + th < h)
            ramp_x = ramp(tw * scale, overlap * scale, left > 0, left + tw < w)
            m = ramp_y[:, None] * ramp_x[None, :]
            out[:, :, top * scale:(top + th) * scale, left * scale:(left + tw) * scale] += y * m
            weight[:, :, top * scale:(top + th) * scale, left * scale:(left + tw) * scale] += m
    return out / weight


def ramp(n, overlap, before, after):
    r = torch.ones(n)
    edge = torch.linspace(1.0 / (overlap + 1), 1.0, overlap)
    if before:
        r[:overlap] = edge
    if after:
        r[n - overlap:] = edge.flip(0)
    return r


def gfpgan(args):
    import gfpgan as G

    args.size = 512  # one face at the published size, whatever --size says
    full = dict(G.HP, out_size=512, num_style_feat=512, channel_multiplier=2, narrow=1)
    net = G.build(full)
    sd = G.randomize(net, G.WEIGHT_SEED, std_floor=0.0)
    torch.save({"params_ema": sd}, args.out)
    x = np.random.default_rng(G.INPUT_SEED).random((1, 3, 512, 512), dtype=np.float32) * 2 - 1
    return lambda: G.run(net, x)


def u2net(args):
    from PIL import Image

    import background_ref as B
    from backgroundremover.u2net import u2net as U2

    torch.manual_seed(0)
    net = U2.U2NET().eval()  # PyTorch's default initialisation: random convolutions
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(torch.rand_like(t) * 1.5 + 0.5)
            elif t.is_floating_point():
                t.add_(torch.randn_like(t) * 0.05)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, args.out)
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8))

    def pipeline():
        mask, _, _ = B.rembg_mask(net, "u2net", image)
        return B.naive_cutout(image, mask)

    return pipeline


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("network", choices=["esrgan", "gfpgan", "u2net"])
    ap.add_argument("--out", required=True, help="where the random checkpoint is written")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--tile", type=int, default=0, help="esrgan: tile side in input pixels")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = {"esrgan": esrgan, "gfpgan": gfpgan, "u2net": u2net}[args.network](args)
    times = []
    with torch.inference_mode():
        work()  # warm-up
        for _ in range(args.runs):
            start = time.perf_counter()
            work()
            times.append(time.perf_counter() - start)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"impl": "pytorch", "network": args.network, "size": args.size,
                      "tile": args.tile, "threads": args.threads,
                      "median_s": round(statistics.median(times), 3),
                      "peak_rss_mib": round(peak_mib, 1), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
