"""Shared helpers of codeformer.py and restoreformer.py: seeded random weights for every tensor
of a state dict, the fixed input image, the face pre/post-processing of the inference scripts,
and file bookkeeping. See README-codeformer.md.
"""

import hashlib
import importlib
import os

import numpy as np
import torch

import spandrel

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "..", "crates", "horde-postprocess", "tests", "fixtures")
FORMAT_VERSION = 1
INPUT_SEED = 20260201
FACE_SEED = 20260202
TOLERANCE = 1e-4  # max |output - expected| a float32 port must meet (outputs are O(1))


def versions():
    extra = importlib.metadata.version("spandrel_extra_arches")
    return {"spandrel": spandrel.__version__, "spandrel_extra_arches": extra,
            "torch": torch.__version__, "numpy": np.__version__}


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _std_for(name, t):
    """The standard deviation of a tensor's random values, by its role (see the README)."""
    if t.ndim == 4:  # convolution weight
        fan_in = t.shape[1] * t.shape[2] * t.shape[3]
        return min(0.2, max(0.05, 1.0 / np.sqrt(fan_in)))
    if t.ndim == 2:  # linear weight, codebook, position embedding
        return 1.0 / np.sqrt(t.shape[1])
    return 0.05  # biases


def randomize(module, seed, special=None):
    """Every tensor of `module`'s state dict drawn from numpy.random.default_rng(seed), in
    state-dict order: norm weights N(1, 0.1), biases N(0, 0.05), 2-D and 4-D weights N(0, std)
    with std from _std_for unless `special` (a dict name -> std) says otherwise. Every value is
    rounded to float16 (the fixtures store half precision to stay small; the network computes in
    float32 on exactly these values). Loads the values into the module and returns the state
    dict; none is left constant."""
    rng = np.random.default_rng(seed)
    special = special or {}
    out = {}
    for name, t in module.state_dict().items():
        if name in special:
            v = rng.normal(0.0, special[name], t.shape)
        elif t.ndim == 1 and name.endswith(".weight"):  # GroupNorm / LayerNorm scale
            v = rng.normal(1.0, 0.1, t.shape)
        elif t.ndim == 1:
            v = rng.normal(0.0, 0.05, t.shape)
        else:
            v = rng.normal(0.0, _std_for(name, t), t.shape)
        out[name] = torch.from_numpy(v.astype(np.float16).astype(np.float32))
        assert not torch.all(out[name] == 0) and not torch.all(out[name] == 1), name
    module.load_state_dict(out, strict=True)
    return out


def make_input(side):
    """The network's input: [1, 3, side, side] uniform in [-1, 1), as a face normalised with
    mean and std 0.5 is."""
    rng = np.random.default_rng(INPUT_SEED)
    return (rng.random((1, 3, side, side), dtype=np.float32) * 2.0 - 1.0).astype(np.float32)


def make_face(side):
    """A side x side RGB face crop (uint8, [H, W, 3]): smooth gradients plus noise, so that the
    restored image is not all clamped."""
    rng = np.random.default_rng(FACE_SEED)
    yy, xx = np.mgrid[0:side, 0:side] / max(side - 1, 1)
    base = np.stack([0.3 + 0.5 * xx, 0.2 + 0.6 * yy, 0.5 + 0.3 * (xx - yy)], axis=-1)
    face = base * 255.0 + rng.normal(0.0, 20.0, (side, side, 3))
    return np.clip(np.round(face), 0, 255).astype(np.uint8)


def face_to_tensor(face):
    """basicsr's img2tensor(face / 255.) then normalize(mean 0.5, std 0.5): the face arrives
    RGB here (the scripts read BGR with cv2 and convert, bgr2rgb=True)."""
    x = torch.from_numpy(face.astype(np.float32) / 255.0).permute(2, 0, 1).unsqueeze(0)
    return (x - 0.5) / 0.5


def tensor_to_face(y):
    """basicsr's tensor2img(y, min_max=(-1, 1)): clamp to [-1, 1], to [0, 1], times 255,
    rounded (half to even, numpy's round), cast to uint8."""
    y = y.squeeze(0).float().clamp(-1.0, 1.0)
    y = (y + 1.0) / 2.0
    img = y.permute(1, 2, 0).numpy()
    # astype keeps the permuted memory order and safetensors.numpy writes the raw buffer:
    # made C-contiguous so that the file holds [H, W, 3] in row-major order.
    return np.ascontiguousarray((img * 255.0).round().astype(np.uint8))


def save_checkpoint(sd, path):
    """The state dict as safetensors in float16: every value is float16-exact (randomize), so
    nothing is lost, and the loader widens to float32 as it does for any checkpoint."""
    from safetensors.torch import save_file
    half = {k: v.to(torch.float16).contiguous() for k, v in sd.items()}
    assert all(torch.equal(half[k].float(), sd[k]) for k in sd)
    save_file(half, path)


def state_dict_stats(sd):
    return {"num_tensors": len(sd), "num_params": int(sum(v.numel() for v in sd.values())),
            "keys": {k: list(v.shape) for k, v in sd.items()}}


def stats(y):
    y = np.asarray(y, dtype=np.float64)
    return {"min": float(y.min()), "max": float(y.max()), "mean": float(y.mean()),
            "std": float(y.std())}


def max_diff(a, b):
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())
