#!/usr/bin/env python3
"""Reference fixtures for GFPGAN v1.3 / v1.4 (the "clean" architecture, GFPGANv1Clean) in
horde-postprocess: a tiny random network in the published key layout, what PyTorch computes
from it for a fixed input, the per-face restore path of GFPGANer, and mis-wired variants that
a port must not match.

Reference: spandrel's copy of the gfpgan package's GFPGANv1Clean (identical code;
`spandrel/architectures/GFPGAN/__arch/gfpganv1_clean_arch.py`). spandrel's *loader* hard-codes
out_size 512, num_style_feat 512 and channel_multiplier 2, so it cannot load a tiny network: the
class is built directly here, and the file is loaded back into a fresh instance with
`load_state_dict(strict=True)` (what GFPGANer does with the published .pth).

Run from the repository root:
    /root/.cache/horde/postprocess-fixtures-venv/bin/python tools/postprocess-fixtures/gfpgan.py
Writes crates/horde-postprocess/tests/fixtures/gfpgan/ (see README-gfpgan.md).
"""

import argparse
import contextlib
import hashlib
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.numpy import save_file as save_np
from safetensors.torch import save_file as save_pt

import spandrel
from spandrel.architectures.GFPGAN import GFPGAN, GFPGANArch
from spandrel.architectures.GFPGAN.__arch import stylegan2_clean_arch as sg2

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "..", "..", "crates", "horde-postprocess", "tests", "fixtures",
                           "gfpgan")

# The tiny network: the published structure (U-Net, SFT on half the channels, 8-layer style
# MLP, a different latent per layer) with fewer channels and a 64² face. narrow 1/32 gives the
# decoder 16 channels at 4²…32² and 256·cm/32 = 8 at 64² (channel_multiplier 1, so the 64²
# level differs from the rest as in the real 512² network); the U-Net has half of those.
HP = dict(out_size=64, num_style_feat=16, channel_multiplier=1, decoder_load_path=None,
          fix_decoder=False, num_mlp=8, input_is_latent=True, different_w=True,
          narrow=1 / 32, sft_half=True)
# The other settings of the constructor, which no published checkpoint uses but which the Rust
# loader reads from the tensors (one latent for all layers, SFT on all channels), at 32².
HP_ALTERNATE = dict(HP, out_size=32, different_w=False, sft_half=False)
WEIGHT_SEED = 20260301
ALTERNATE_SEED = 20260305
INPUT_SEED = 20260302
FACE_SEED = 20260303
FRESH_NOISE_SEED = 20260304
TOLERANCE = 1e-4  # max |ours − reference| on the network output, float32
FORMAT_VERSION = 1


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def build(hp=HP):
    net = GFPGAN(**hp)
    net.eval()
    return net


def randomize(net, seed, std_floor=0.05):
    """Every tensor of the state dict random, none 0 or 1, scaled so activations stay O(1).
    Convolutions and linear layers get N(0, 1/fan_in) with the spread kept within
    [std_floor, 0.5] (the floor keeps the tiny network's few-channel layers lively)."""
    rng = np.random.default_rng(seed)
    sd = net.state_dict()
    out = {}
    for name, t in sd.items():
        shape = tuple(t.shape)
        if name.endswith("constant_input.weight") or ".noises.noise" in name:
            v = rng.standard_normal(shape)
        elif name.endswith("modulation.bias"):
            v = 1.0 + 0.1 * rng.standard_normal(shape)  # trained styles sit around 1
        elif name.endswith("modulated_conv.weight"):  # [1, out, in, k, k]
            v = rng.standard_normal(shape) / math.sqrt(shape[2] * shape[3] * shape[4])
        elif name.startswith("stylegan_decoder.") and name.endswith(".weight") and len(shape) == 1:
            v = 0.3 * rng.standard_normal(shape)  # the StyleConv's noise strength
        elif name.endswith(".bias"):
            v = 0.05 * rng.standard_normal(shape)
        elif name.endswith(".weight"):  # convolutions and linear layers
            fan_in = int(np.prod(shape[1:]))
            v = rng.standard_normal(shape) * np.clip(1 / math.sqrt(fan_in), std_floor, 0.5)
        else:
            raise ValueError(f"no initialisation rule for {name}")
        out[name] = torch.from_numpy(v.astype(np.float32))
    for k, v in out.items():
        assert not torch.all(v == 0) and not torch.all(v == 1), k
    net.load_state_dict(out, strict=True)
    return out


def run(net, x, randomize_noise=False):
    """GFPGANv1Clean.forward as GFPGANer calls it (return_rgb=False), the image only."""
    with torch.no_grad():
        return net(torch.from_numpy(x), return_rgb=False, randomize_noise=randomize_noise)[0].numpy()


def intermediates(net, x):
    """The style code (final_linear, per-layer latents) and the SFT conditions."""
    seen = {}
    orig = net.stylegan_decoder.forward

    def spy(styles, conditions, **kw):
        seen["style_code"] = styles[0].detach().numpy().copy()
        for i, c in enumerate(conditions):
            seen[f"conditions.{i}"] = c.detach().numpy().copy()
        return orig(styles, conditions, **kw)

    net.stylegan_decoder.forward = spy
    try:
        run(net, x)
    finally:
        net.stylegan_decoder.forward = orig
    return seen


def restore(net, face_rgb):
    """GFPGANer.enhance's per-face steps on an aligned RGB uint8 face (GFPGANer receives BGR
    and converts to RGB first): /255, normalise (0.5, 0.5), forward, tensor2img with
    min_max (-1, 1): clamp, rescale to [0, 1], ×255, round, uint8."""
    t = torch.from_numpy((face_rgb / 255.0).astype(np.float32)).permute(2, 0, 1).contiguous()
    t = (t - 0.5) / 0.5
    with torch.no_grad():
        y = net(t[None], return_rgb=False, randomize_noise=False)[0]
    y = y.squeeze(0).float().clamp_(-1, 1)
    y = (y - (-1)) / (1 - (-1))
    img = y.permute(1, 2, 0).numpy()
    # astype keeps the permuted (channel-first) memory order: make it row-major HWC.
    return np.ascontiguousarray((img * 255.0).round().astype(np.uint8))


@contextlib.contextmanager
def demodulation_left_out(net):
    convs = [m for m in net.modules() if isinstance(m, sg2.ModulatedConv2d) and m.demodulate]
    for m in convs:
        m.demodulate = False
    try:
        yield
    finally:
        for m in convs:
            m.demodulate = True


@contextlib.contextmanager
def nearest_instead_of_bilinear():
    real = F.interpolate

    def nearest(x, *a, **kw):
        if kw.get("scale_factor") == 2:
            kw["mode"] = "nearest"
            kw.pop("align_corners", None)
        return real(x, *a, **kw)

    F.interpolate = nearest
    try:
        yield
    finally:
        F.interpolate = real


def swapped(sd, pairs):
    bad = dict(sd)
    for a, b in pairs:
        bad[a], bad[b] = sd[b], sd[a]
    return bad


def miswirings(sd):
    """(description, state dict, patch) for each mis-wired variant; `patch(net)` is a context
    manager that changes the code path while the variant runs."""
    scale_shift = [(k, k.replace("condition_scale", "condition_shift"))
                   for k in sd if k.startswith("condition_scale.")]
    noise = "stylegan_decoder.noises.noise"
    no_noise = dict(sd)
    for k in sd:
        if k.startswith(noise):
            no_noise[k] = torch.zeros_like(sd[k])
    unchanged = lambda net: contextlib.nullcontext()  # noqa: E731
    return [
        ("demodulation left out of the StyleConvs' modulated convolutions", sd,
         demodulation_left_out),
        ("SFT scale and shift swapped (condition_scale.* <-> condition_shift.*)",
         swapped(sd, scale_shift), unchanged),
        ("noise buffers noise1 <-> noise2 swapped (both 8x8)",
         swapped(sd, [(noise + "1", noise + "2")]), unchanged),
        ("stored noise not injected (noise buffers zero)", no_noise, unchanged),
        ("nearest instead of bilinear x2 upsampling (U-Net, StyleConvs, toRGB skips)", sd,
         lambda net: nearest_instead_of_bilinear()),
    ]


def alternate(out):
    """The alternate settings' checkpoint and its input and output (stored noise)."""
    net = build(HP_ALTERNATE)
    sd = randomize(net, ALTERNATE_SEED)
    ckpt = os.path.join(out, "gfpgan_tiny_alternate.safetensors")
    save_pt({k: v.contiguous() for k, v in sd.items()}, ckpt)
    from safetensors.torch import load_file
    ref = build(HP_ALTERNATE)
    ref.load_state_dict(load_file(ckpt), strict=True)
    size = HP_ALTERNATE["out_size"]
    x = (np.random.default_rng(INPUT_SEED).random((1, 3, size, size), dtype=np.float32) * 2 - 1)
    y = run(ref, x)
    assert np.isfinite(y).all()
    expected = os.path.join(out, "gfpgan_tiny_alternate.expected.safetensors")
    save_np({"input": x, "output": y, **intermediates(ref, x)}, expected)
    no_sft = [(k, k.replace("condition_scale", "condition_shift"))
              for k in sd if k.startswith("condition_scale.")]
    bad = build(HP_ALTERNATE)
    bad.load_state_dict(swapped(sd, no_sft), strict=True)
    d = float(np.abs(run(bad, x) - y).max())
    assert d > 100 * TOLERANCE, d
    return {
        "hyperparameters": dict(HP_ALTERNATE),
        "init_seed": ALTERNATE_SEED,
        "num_tensors": len(sd),
        "num_params": int(sum(v.numel() for v in sd.values())),
        "output_stats": {"min": float(y.min()), "max": float(y.max()), "std": float(y.std())},
        "miswired": [{"change": "SFT scale and shift swapped", "max_abs_diff": d}],
        "files": {os.path.basename(p): {"bytes": os.path.getsize(p), "sha256": sha256(p)}
                  for p in (ckpt, expected)},
    }


def stock_spandrel_error(path):
    try:
        spandrel.ModelLoader().load_from_file(path)
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=DEFAULT_OUT)
    out = os.path.abspath(ap.parse_args().out)
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(1)
    torch.manual_seed(0)

    net = build()
    sd = randomize(net, WEIGHT_SEED)
    ckpt = os.path.join(out, "gfpgan_tiny.safetensors")
    save_pt({k: v.contiguous() for k, v in sd.items()}, ckpt)
    # As the published GFPGANv1.3/1.4.pth are saved: torch.save({"params_ema": state_dict}).
    pth = os.path.join(out, "gfpgan_tiny.pth")
    torch.save({"params_ema": {k: v.contiguous() for k, v in sd.items()}}, pth)

    # The reference runs on a network loaded back from the file, as GFPGANer loads (strict).
    from safetensors.torch import load_file
    ref = build()
    ref.load_state_dict(load_file(ckpt), strict=True)
    assert spandrel.ModelLoader  # the same class spandrel's GFPGANArch loads
    assert GFPGANArch().detect(load_file(ckpt)), "spandrel would not detect this as GFPGAN"

    size = HP["out_size"]
    x = (np.random.default_rng(INPUT_SEED).random((1, 3, size, size), dtype=np.float32) * 2 - 1)
    y = run(ref, x)
    assert np.array_equal(y, run(net, x)), "the loaded network differs from the built one"
    assert np.isfinite(y).all()
    inter = intermediates(ref, x)
    torch.manual_seed(FRESH_NOISE_SEED)
    fresh = run(ref, x, randomize_noise=True)
    fresh_diff = float(np.abs(fresh - y).max())

    face = np.random.default_rng(FACE_SEED).integers(0, 256, (size, size, 3), dtype=np.uint8)
    restored = restore(ref, face)

    expected = os.path.join(out, "gfpgan_tiny.expected.safetensors")
    save_np({"input": x, "output": y.astype(np.float32), **inter}, expected)
    restore_path = os.path.join(out, "gfpgan_tiny.restore.safetensors")
    save_np({"face": np.ascontiguousarray(face), "restored": restored}, restore_path)

    mis = []
    ok = True
    for what, bad_sd, patch in miswirings(sd):
        bad = build()
        bad.load_state_dict(bad_sd, strict=True)
        with patch(bad):
            yb = run(bad, x)
        d = float(np.abs(yb - y).max())
        mis.append({"change": what, "max_abs_diff": d, "ratio_to_tolerance": d / TOLERANCE})
        ok &= d > 100 * TOLERANCE

    dec = ref.stylegan_decoder
    manifest = {
        "format_version": FORMAT_VERSION,
        "generator": "tools/postprocess-fixtures/gfpgan.py",
        "versions": {"torch": torch.__version__, "spandrel": spandrel.__version__,
                     "numpy": np.__version__, "python": sys.version.split()[0]},
        "reference": "spandrel.architectures.GFPGAN.GFPGAN (= gfpgan's GFPGANv1Clean), built "
                     "directly: spandrel's GFPGANArch.load hard-codes out_size/num_style_feat 512",
        "stock_spandrel_load_error": stock_spandrel_error(ckpt),
        "hyperparameters": {k: v for k, v in HP.items()},
        "detected": {
            "out_size": size,
            "log_size": int(math.log2(size)),
            "num_style_feat": HP["num_style_feat"],
            "num_latent": dec.num_latent,
            "num_style_layers": dec.num_layers,
            "decoder_channels": {k: v for k, v in dec.channels.items() if int(k) <= size},
            "unet_channels": {"4": int(ref.final_conv.weight.shape[0]),
                              **{str(2 ** i): int(ref.condition_scale[i - 3][0].weight.shape[0])
                                 for i in range(3, int(math.log2(size)) + 1)}},
        },
        "tolerance_abs": TOLERANCE,
        "noise": "fixtures use randomize_noise=False (the stored noises.noise* buffers); "
                 "GFPGANer's default draws fresh N(0,1) noise per call",
        "fresh_noise_max_abs_diff": fresh_diff,
        "input": {"shape": list(x.shape), "source": f"numpy.random.default_rng({INPUT_SEED})"
                  ".random(shape, float32) * 2 - 1"},
        "face": {"shape": list(face.shape), "dtype": "uint8", "channel_order": "RGB",
                 "source": f"numpy.random.default_rng({FACE_SEED}).integers(0, 256, shape, uint8)"},
        "init_seed": WEIGHT_SEED,
        "num_tensors": len(sd),
        "num_params": int(sum(v.numel() for v in sd.values())),
        "keys": {k: list(v.shape) for k, v in sd.items()},
        "output_stats": {"min": float(y.min()), "max": float(y.max()), "mean": float(y.mean()),
                         "std": float(y.std())},
        "restored_stats": {"clipped_fraction": float(np.mean((restored == 0) | (restored == 255))),
                           "mean": float(restored.mean())},
        "intermediates": sorted(inter),
        "alternate": alternate(out),
        "miswired": mis,
        "files": {},
    }
    for p in (ckpt, pth, expected, restore_path):
        manifest["files"][os.path.basename(p)] = {"bytes": os.path.getsize(p), "sha256": sha256(p)}
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")

    print(f"params {manifest['num_params']}, tensors {len(sd)}; output [{y.min():+.3f}, "
          f"{y.max():+.3f}] std {y.std():.3f}; fresh-noise diff {fresh_diff:.3e}")
    print(f"restored: clipped {manifest['restored_stats']['clipped_fraction']:.3f}")
    for m in mis:
        print(f"  mis-wired: {m['change']}: {m['max_abs_diff']:.3e} ({m['ratio_to_tolerance']:.0f}x)")
    alt = manifest["alternate"]
    print(f"alternate (different_w=False, sft_half=False, 32²): params {alt['num_params']}, "
          f"SFT swap {alt['miswired'][0]['max_abs_diff']:.3e}")
    total = sum(os.path.getsize(os.path.join(out, n)) for n in os.listdir(out))
    print(f"total {total} bytes in {out}")
    if not ok:
        print("FAIL: a mis-wired variant stays within 100x tolerance", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
