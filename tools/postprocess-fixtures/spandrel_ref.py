"""Shared helpers for generate.py and check_fixtures.py: the fixture list, the key-layout
converters and the one patch applied to spandrel (the RRDB growth-channel count, see README.md).
"""

import contextlib
import importlib
import re

import numpy as np
import torch

import spandrel
from spandrel import ModelLoader
from spandrel.architectures.Compact import Compact
from spandrel.architectures.ESRGAN import ESRGAN, ESRGANArch

# spandrel's RRDBNet.__init__ builds every block as `B.RRDB(..., gc=32, ...)`: the growth
# channel count (basicsr's num_grow_ch) is hard-coded to the value of every published
# checkpoint, and ESRGANArch.load never reads it from the tensors. Tiny fixtures need gc = 4
# (gc = 32 alone makes one RRDB block ~0.2M parameters). The patch below swaps the module-level
# `B` seen by RRDB.py for a proxy whose RRDB() uses the gc read from the state dict
# (conv1's output channels) and wraps ESRGANArch.load to read it. With gc = 32 it is a no-op;
# generate.py proves that by loading a gc = 32 model with and without the patch.
_RRDB_MOD = importlib.import_module("spandrel.architectures.ESRGAN.__arch.RRDB")
_REAL_B = _RRDB_MOD.B
_ORIG_LOAD = ESRGANArch.load
_STATE = {"enabled": False, "gc": None}


class _BProxy:
    def __getattr__(self, name):
        return getattr(_REAL_B, name)

    @staticmethod
    def RRDB(*args, **kwargs):  # noqa: N802 (mirrors block.RRDB)
        if _STATE["enabled"] and _STATE["gc"] is not None:
            kwargs["gc"] = _STATE["gc"]
        return _REAL_B.RRDB(*args, **kwargs)


def _infer_gc(state):
    for key in ("model.1.sub.0.RDB1.conv1.0.weight", "body.0.rdb1.conv1.weight",
                "RRDB_trunk.0.RDB1.conv1.weight"):
        if key in state:
            return int(state[key].shape[0])
    return None


def _patched_load(self, state_dict):
    if not _STATE["enabled"]:
        return _ORIG_LOAD(self, state_dict)
    _STATE["gc"] = _infer_gc(state_dict)
    try:
        return _ORIG_LOAD(self, state_dict)
    finally:
        _STATE["gc"] = None


_RRDB_MOD.B = _BProxy()
ESRGANArch.load = _patched_load


@contextlib.contextmanager
def gc_patch(enabled=True, gc=None):
    """Enable the growth-channel patch; `gc` forces it for direct RRDBNet construction."""
    old = dict(_STATE)
    _STATE["enabled"], _STATE["gc"] = enabled, gc
    try:
        yield
    finally:
        _STATE.update(old)


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------
INPUT_SEED = 20260101
INPUT_SHAPE = (1, 3, 16, 16)
TOLERANCE = 1e-4  # max |output - expected| a float32 port must meet

FIXTURES = [
    # name, kind, layout, hyperparameters (of spandrel's classes), seed, published original
    dict(name="realesrgan_x4plus", kind="rrdb", layout="new",
         hp=dict(in_nc=3, out_nc=3, num_filters=8, num_blocks=2, scale=4, shuffle_factor=None),
         gc=4, seed=101, original="RealESRGAN_x4plus.pth (nf 64, nb 23, gc 32, params_ema)"),
    dict(name="realesrgan_x2plus", kind="rrdb", layout="new",
         hp=dict(in_nc=12, out_nc=3, num_filters=8, num_blocks=2, scale=4, shuffle_factor=2),
         gc=4, seed=102, original="RealESRGAN_x2plus.pth (pixel-unshuffle 2, conv_first 12 in, "
                                  "nf 64, nb 23, gc 32, params_ema)"),
    dict(name="realesrgan_x4plus_anime_6b", kind="rrdb", layout="new",
         hp=dict(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=4, shuffle_factor=None),
         gc=4, seed=103, original="RealESRGAN_x4plus_anime_6B.pth (nf 64, nb 6, gc 32, params_ema); "
                                  "tiny: 1 block"),
    dict(name="esrgan_old_x4", kind="rrdb", layout="old",
         hp=dict(in_nc=3, out_nc=3, num_filters=8, num_blocks=2, scale=4, shuffle_factor=None),
         gc=4, seed=104, original="old-arch ESRGAN, e.g. 4x_NMKD-Siax_200k.pth / 4x-AnimeSharp.pth "
                                  "(nf 64, nb 23, gc 32)"),
    dict(name="realesr_general_x4v3", kind="compact", layout="compact",
         hp=dict(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=4, act_type="prelu"),
         gc=None, seed=105, original="realesr-general-x4v3.pth (SRVGGNetCompact, nf 64, nc 32, "
                                     "prelu, params)"),
]


def make_input():
    return np.random.default_rng(INPUT_SEED).random(INPUT_SHAPE, dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# Key layouts
# ---------------------------------------------------------------------------------------------
def old_to_new(old):
    """spandrel's (old ESRGAN) keys -> Real-ESRGAN / basicsr RRDBNet keys. Inverse of
    spandrel.architectures.ESRGAN._new_to_old_arch, which generate.py checks."""
    seq = sorted({int(k.split(".")[1]) for k in old if k.startswith("model.")})
    last = max(seq)
    hr = last - 2
    nb = max(int(k.split(".")[3]) for k in old if k.startswith("model.1.sub."))
    new = {}
    for k, v in old.items():
        m = re.fullmatch(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)", k)
        if m:
            new[f"body.{m[1]}.rdb{m[2]}.conv{m[3]}.{m[4]}"] = v
            continue
        m = re.fullmatch(r"model\.1\.sub\.(\d+)\.(weight|bias)", k)
        if m:
            assert int(m[1]) == nb
            new[f"conv_body.{m[2]}"] = v
            continue
        m = re.fullmatch(r"model\.(\d+)\.(weight|bias)", k)
        assert m, k
        i = int(m[1])
        if i == 0:
            name = "conv_first"
        elif i == last:
            name = "conv_last"
        elif i == hr:
            name = "conv_hr"
        else:
            assert i % 3 == 0, k
            name = f"conv_up{i // 3}"
        new[f"{name}.{m[2]}"] = v
    return new


def build_reference(fx):
    """The network built directly from spandrel's architecture classes (random init)."""
    if fx["kind"] == "rrdb":
        with gc_patch(True, fx["gc"]):
            return ESRGAN(**fx["hp"])
    return Compact(**fx["hp"])


def randomize(module, seed):
    """Fill every parameter with seeded normal values (numpy generator, in state-dict order).
    Conv weights: N(0, clamp(1/sqrt(fan_in), 0.05, 0.2)); conv biases: N(0, 0.05);
    PReLU slopes: N(0.2, 0.05)."""
    rng = np.random.default_rng(seed)
    sd = module.state_dict()
    out = {}
    for k, t in sd.items():
        if t.ndim == 4:
            fan_in = t.shape[1] * t.shape[2] * t.shape[3]
            std = min(0.2, max(0.05, 1.0 / np.sqrt(fan_in)))
            v = rng.normal(0.0, std, t.shape)
        elif t.ndim == 1 and k.endswith(".bias"):
            v = rng.normal(0.0, 0.05, t.shape)
        elif t.ndim == 1:  # PReLU weight
            v = rng.normal(0.2, 0.05, t.shape)
        else:
            raise AssertionError(f"unexpected tensor {k} {tuple(t.shape)}")
        out[k] = torch.from_numpy(v.astype(np.float32))
    module.load_state_dict(out, strict=True)
    return out


def to_layout(fx, sd):
    if fx["layout"] == "new":
        return old_to_new(sd)
    return dict(sd)


def load_and_run(path, x, patch=True):
    """Load a checkpoint file through spandrel's ModelLoader and run x through it."""
    with gc_patch(patch):
        desc = ModelLoader().load_from_file(str(path))
    desc.model.eval()
    with torch.no_grad():
        y = desc.model(torch.from_numpy(x)).numpy()
    return desc, y


def run_state_dict(sd, x):
    with gc_patch(True):
        desc = ModelLoader().load_from_state_dict({k: v.clone() for k, v in sd.items()})
    desc.model.eval()
    with torch.no_grad():
        return desc.model(torch.from_numpy(x)).numpy()


def miswirings(fx, sd):
    """Deliberately mis-wired variants of a checkpoint (same keys and shapes): each must move
    the output well beyond TOLERANCE. Yields (description, state dict)."""
    def variant(**changes):
        d = dict(sd)
        d.update(changes)
        return d

    if fx["kind"] == "rrdb":
        p = "body.0." if fx["layout"] == "new" else "model.1.sub.0."
        c1a = p + ("rdb1.conv1.weight" if fx["layout"] == "new" else "RDB1.conv1.0.weight")
        c1b = p + ("rdb2.conv1.weight" if fx["layout"] == "new" else "RDB2.conv1.0.weight")
        yield f"swap {c1a} <-> {c1b}", variant(**{c1a: sd[c1b], c1b: sd[c1a]})
        first = "conv_first.weight" if fx["layout"] == "new" else "model.0.weight"
        if fx["hp"]["shuffle_factor"]:
            # pixel_unshuffle orders channels c*4 + (dy*2 + dx); a port that orders them
            # (dy*2 + dx)*3 + c reads conv_first's input channels permuted.
            w = sd[first]
            perm = [c * 4 + s for s in range(4) for c in range(3)]
            yield f"{first}: unshuffle channel order (s*3+c instead of c*4+s)", \
                variant(**{first: w[:, perm].contiguous()})
    else:
        yield "swap body.2.weight <-> body.4.weight", \
            variant(**{"body.2.weight": sd["body.4.weight"], "body.4.weight": sd["body.2.weight"]})
        yield "PReLU body.1.weight replaced by its mean (shared slope)", \
            variant(**{"body.1.weight": sd["body.1.weight"].mean().expand_as(sd["body.1.weight"]).clone()})
    flipped = {k: (v.flip(-1, -2).contiguous() if v.ndim == 4 else v) for k, v in sd.items()}
    yield "every 3x3 kernel flipped (convolution instead of cross-correlation)", flipped


VERSIONS = {"spandrel": spandrel.__version__, "torch": torch.__version__, "numpy": np.__version__}
