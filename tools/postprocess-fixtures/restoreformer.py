#!/usr/bin/env python3
"""Reference fixtures for RestoreFormer (horde-postprocess `face::restoreformer`): a tiny random
RestoreFormer in the key layout of the published RestoreFormer.pth, what spandrel's
RestoreFormer computes from it, the chosen code indices, and the face pre/post-processing of
GFPGAN's inference (which runs RestoreFormer) on a 32x32 crop.

spandrel's RestoreFormerArch.load reads every size from the tensors except `resolution` (512)
and `attn_resolutions` ((16,)): attention sits where the map is 16 wide counting from 512, i.e.
only at the sixth level. A tiny two-level network must say resolution=32 for its 16-wide level to
have attention, so it is built with spandrel's RestoreFormer class directly (same modules, same
forward). spandrel has no RestoreFormer++.

Run from the repository root:
    ~/.cache/horde/postprocess-fixtures-venv/bin/python tools/postprocess-fixtures/restoreformer.py
Writes crates/horde-postprocess/tests/fixtures/restoreformer/.
"""

import contextlib
import importlib
import json
import os
import sys

import numpy as np
import torch
from safetensors.numpy import save_file as save_np

import codeformer_common as C
from spandrel.architectures.RestoreFormer import RestoreFormer, RestoreFormerArch

ARCH = importlib.import_module("spandrel.architectures.RestoreFormer.__arch.restoreformer_arch")
OUT = os.path.join(C.FIXTURES, "restoreformer")
SEED = 401
HP = dict(n_embed=64, embed_dim=32, ch=32, out_ch=3, ch_mult=(1, 1), num_res_blocks=1,
          attn_resolutions=(16,), dropout=0.0, in_channels=3, resolution=32, z_channels=32,
          double_z=False, enable_mid=True, head_size=8)
PUBLISHED = dict(n_embed=1024, embed_dim=256, ch=64, ch_mult=(1, 2, 2, 4, 4, 8),
                 num_res_blocks=2, resolution=512, z_channels=256, head_size=8)


def build(sd=None, **overrides):
    net = RestoreFormer(**{**HP, **overrides}).eval()
    if sd is not None:
        net.load_state_dict(sd, strict=True)
    return net


def run(net, x):
    """The output and the chosen codes (nearest codebook entry of each latent position), and
    the smallest gap between the nearest and second-nearest squared distances."""
    with torch.no_grad():
        quant, _, info, _ = net.encode(torch.from_numpy(x))
        y = net(torch.from_numpy(x))[0]
    d = info[3]
    two = torch.topk(d, 2, dim=1, largest=False).values
    margin = float((two[:, 1] - two[:, 0]).min())
    codes = info[2].view(x.shape[0], -1).numpy().astype(np.int64)
    return y.numpy(), codes, margin


@contextlib.contextmanager
def patched(obj, name, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def miswirings(sd, x, expected):
    results = []

    def record(what, y):
        results.append({"change": what, "max_abs_diff": C.max_diff(y, expected),
                        "must_be_caught": True})

    qk = dict(sd)
    for k in sd:
        if k.startswith("decoder.") and k.endswith((".q.weight", ".q.bias")):
            other = k[:-len("q.weight")] + "k.weight" if k.endswith("weight") \
                else k[:-len("q.bias")] + "k.bias"
            qk[k], qk[other] = sd[other], sd[k]
    record("decoder attention: q and k projections swapped (queries from its own map, keys "
           "from the encoder's)", run(build(qk), x)[0])

    net = build(sd)
    for m in net.modules():
        if isinstance(m, ARCH.MultiHeadAttnBlock):
            m.head_size, m.att_size = 1, m.in_channels
    record("attention with 1 head instead of 8", run(net, x)[0])

    net = build(sd)
    encode = net.encoder.forward

    def wrong_source(h):
        hs = encode(h)
        hs[f"block_{len(HP['ch_mult']) - 1}_atten"] = hs["mid_atten"]
        return hs

    net.encoder.forward = wrong_source
    record("decoder's level attention fed the encoder's middle output after its second "
           "block (mid_atten) instead of after its first", run(net, x)[0])

    def dot_product_quantize(self, z):
        z = z.permute(0, 2, 3, 1).contiguous()
        idx = torch.argmax(z.view(-1, self.e_dim) @ self.embedding.weight.t(), dim=1)
        z_q = self.embedding.weight[idx].view(z.shape).permute(0, 3, 1, 2).contiguous()
        d = torch.zeros(idx.shape[0], 2)
        return z_q, None, (None, None, idx.unsqueeze(1), d)

    with patched(ARCH.VectorQuantizer, "forward", dot_product_quantize):
        record("codes by the largest dot product instead of the smallest distance",
               run(build(sd), x)[0])
    flipped = {k: (v.flip(-1, -2).contiguous() if v.ndim == 4 else v) for k, v in sd.items()}
    record("every 3x3 kernel flipped (convolution instead of cross-correlation)",
           run(build(flipped), x)[0])
    return results


def main():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    os.makedirs(OUT, exist_ok=True)
    published_keys = set(RestoreFormer(**PUBLISHED).state_dict())

    net = build()
    sd = C.randomize(net, SEED, special={"quantize.embedding.weight": 0.5})
    fixed = {k for k in sd if not k.startswith(("encoder.down.", "decoder.up."))}
    assert fixed <= published_keys, fixed - published_keys
    assert {k for k in published_keys if not k.startswith(("encoder.down.", "decoder.up."))} \
        == fixed
    assert RestoreFormerArch().detect(sd), "spandrel's RestoreFormer detection refuses it"
    ckpt = os.path.join(OUT, "restoreformer_tiny.safetensors")
    C.save_checkpoint(sd, ckpt)

    x = C.make_input(HP["resolution"])
    y, codes, margin = run(net, x)
    assert np.isfinite(y).all()
    assert margin > 1e-3, f"a code is nearly tied: {margin}"
    face = C.make_face(HP["resolution"])
    with torch.no_grad():
        restored_raw = net(C.face_to_tensor(face))[0]
    restored = C.tensor_to_face(restored_raw)
    tensors = {"input": x, "output": y.astype(np.float32), "codes": codes, "face": face,
               "restored": restored, "restored_raw": restored_raw.numpy().astype(np.float32)}
    exp = os.path.join(OUT, "restoreformer_tiny.expected.safetensors")
    save_np(tensors, exp)

    mis = miswirings(sd, x, y)
    ok = all(m["max_abs_diff"] > 100 * C.TOLERANCE for m in mis)
    try:
        from spandrel import ModelLoader
        desc = ModelLoader().load_from_file(ckpt)
        stock = f"loaded as {desc.architecture.id}"
    except Exception as e:  # noqa: BLE001
        stock = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"

    manifest = {
        "format_version": C.FORMAT_VERSION,
        "generator": "tools/postprocess-fixtures/restoreformer.py",
        "versions": C.versions(),
        "tolerance_abs": C.TOLERANCE,
        "checkpoint": os.path.basename(ckpt),
        "checkpoint_dtype": "float16 (float16-exact random values; the reference runs in float32)",
        "expected": os.path.basename(exp),
        "modelled_on": "RestoreFormer.pth (GFPGAN v1.3.4 release; wzhouxiff/RestoreFormer)",
        "reference": "spandrel.architectures.RestoreFormer.RestoreFormer built directly "
                     "(resolution 32: the loader assumes 512)",
        "stock_spandrel_load_error": stock,
        "hyperparameters": {k: list(v) if isinstance(v, tuple) else v for k, v in HP.items()},
        "published_hyperparameters": {k: list(v) if isinstance(v, tuple) else v
                                      for k, v in PUBLISHED.items()},
        "head_size_note": "8 heads: not recorded by the tensors; spandrel assumes 8",
        "init_seed": SEED,
        **C.state_dict_stats(sd),
        "input": {"shape": list(x.shape), "source":
                  f"numpy.random.default_rng({C.INPUT_SEED}).random(shape, float32) * 2 - 1"},
        "output": C.stats(y),
        "codes": {"shape": list(codes.shape), "distinct": int(len(np.unique(codes))),
                  "min_distance_margin": margin},
        "restore": {"face_seed": C.FACE_SEED,
                    "steps": "img2tensor(face/255) -> normalize(0.5, 0.5) -> net(x)[0] -> "
                             "clamp(-1, 1) -> (y + 1) / 2 * 255 -> round"},
        "miswired": mis,
        "sha256": {os.path.basename(ckpt): C.sha256(ckpt), os.path.basename(exp): C.sha256(exp)},
    }
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    print(f"params {manifest['num_params']}, checkpoint {os.path.getsize(ckpt)} B, expected "
          f"{os.path.getsize(exp)} B; codes distinct {manifest['codes']['distinct']}, "
          f"min margin {margin:.3e}; output [{y.min():+.3f}, {y.max():+.3f}] std {y.std():.3f}")
    for m in mis:
        print(f"  mis-wired: {m['change']}: {m['max_abs_diff']:.3e}")
    print(f"  stock spandrel: {stock}")
    if not ok:
        print("FAIL: a mis-wired variant stays within 100x tolerance", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
