"""The diffusers + PEFT side of the LoRA benchmark (`cargo bench -p horde-diffusion --bench lora`).

The SD 1.5 UNet (the real config of pytorch_bench.py, random weights, float32, CPU), one step at
512² with classifier-free guidance (batch 2):

* without LoRAs;
* with two LoRAs of rank R (default 16) on every transformer layer (attention q, k, v, out, the
  feed-forward, the 1×1 projections: PEFT's `target_modules` as kohya's SD 1.5 trainer), active
  through PEFT's layers (the low-rank branch beside each layer, diffusers' default after
  `load_lora_weights`);
* the same two fused into the weights (`fuse_lora`), and the time of `fuse_lora`, of
  `unfuse_lora` (which subtracts the change again) and of `set_adapters` switching to two other
  loaded adapters.

    python lora_bench.py [--threads N] [--repeats R] [--rank R] > pytorch_lora.jsonl

One JSON line per measurement on stdout, as pytorch_bench.py prints them.
"""

import argparse
import json
import os
import pathlib
import resource
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from pytorch_bench import UNET_CONFIG  # noqa: E402

TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(repeats, run, before=lambda i: None):
    times = []
    for i in range(repeats):
        before(i)
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times), statistics.median(times)


def report(args, part, times, **extra):
    import diffusers
    import peft
    import torch
    line = {"impl": "pytorch", "part": part, "threads": args.threads, "min_s": round(times[0], 4),
            "median_s": round(times[1], 4), "peak_rss_mb": round(peak_rss_mb()), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "peft": peft.__version__, "dtype": "f32", **extra}
    print(json.dumps(line), flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rank", type=int, default=16)
    args = parser.parse_args()
    import torch
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**UNET_CONFIG).eval()
    latents = torch.randn(2, 4, 64, 64)
    timesteps = torch.tensor([500, 500])
    context = torch.randn(2, 77, 768)

    def step():
        with torch.inference_mode():
            unet(latents, timesteps, context)

    step()
    report(args, "unet_step_cfg_512", timed(args.repeats, step))
    names = ["a", "b", "c", "d"]
    for name in names:
        unet.add_adapter(LoraConfig(r=args.rank, lora_alpha=args.rank / 2, target_modules=TARGETS),
                         adapter_name=name)
    with torch.no_grad():
        for module in unet.modules():
            for holder in ("lora_A", "lora_B"):
                for layer in getattr(module, holder, {}).values():
                    layer.weight.normal_(0, 0.02)
    modules = sum(1 for m in unet.modules() if hasattr(m, "lora_A"))
    info = dict(rank=args.rank, modules_per_lora=modules)
    weights = [0.8, 0.5]
    unet.set_adapters(["a", "b"], weights=weights)
    step()
    report(args, "unet_step_cfg_512_2loras_peft_layers", timed(args.repeats, step), **info)
    pairs = [["c", "d"], ["a", "b"]]
    report(args, "lora_switch_2_to_2_others_set_adapters",
           timed(args.repeats, lambda: None, lambda i: unet.set_adapters(pairs[i % 2], weights=weights)), **info)
    # Fused: the change merged into the weights, then subtracted again.
    fuse = lambda: unet.fuse_lora(lora_scale=1.0, adapter_names=["a", "b"])  # noqa: E731
    unfuse = unet.unfuse_lora
    report(args, "lora_fuse_2", timed(args.repeats, fuse, lambda i: unfuse() if i else None), **info)
    step()
    report(args, "unet_step_cfg_512_2loras_fused", timed(args.repeats, step), **info)
    report(args, "lora_unfuse_2", timed(args.repeats, unfuse, lambda i: fuse() if i else None), **info)


if __name__ == "__main__":
    main()
