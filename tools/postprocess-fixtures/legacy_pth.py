#!/usr/bin/env python3
"""Fixtures for reading PyTorch's legacy (pre-zip) checkpoint format.

Some published post-processor checkpoints (facexlib's `detection_Resnet50_Final.pth`, rembg's
`u2net.pth`) were written before torch 1.6 made zip archives the default: a sequence of
pickles followed by raw storages. This writes, with `_use_new_zipfile_serialization=False`:

1. `tiny.pth`: a small `nn.Module.state_dict()` (an OrderedDict carrying `_metadata`) of two
   convolutions and a BatchNorm (with its int64 `num_batches_tracked`), plus an f16 tensor, an
   f64 tensor and two strided views (a transpose and an offset narrow) of one shared storage.
2. `tiny_params_ema.pth`: `{"params": <other values>, "params_ema": <the same state dict>}`, as
   Real-ESRGAN wraps its weights (the reader must prefer `params_ema`).
3. `tiny_params.pth`: `{"params": <the same state dict>}`.
4. `tiny.expected.safetensors`: every tensor of the state dict in f32, contiguous.
5. `old_view.pth`: a tensor on a storage *view* (`view_metadata` in its persistent id), which
   torch before 1.6 wrote for tensors on `storage[a:b]` slices; written by hand here (today's
   torch no longer makes such views) and checked by loading it back through torch.
6. `retinaface_mnet_tiny_dp_legacy.pth`: the tiny RetinaFace of the face detection fixtures
   (`../face_detection/retinaface_mnet_tiny_dp.pth`, zip format) re-saved in the legacy format.
7. `manifest.json`: where the first storage's element count lies in `tiny.pth`, so a test can
   corrupt it.

Run from the repository root:
    /root/.cache/horde/postprocess-fixtures-venv/bin/python tools/postprocess-fixtures/legacy_pth.py
"""

import json
import os
import pickle
from collections import OrderedDict

import numpy as np
import torch
from torch import nn
from safetensors.torch import save_file

torch.set_num_threads(1)
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
FIXTURES = os.path.join(ROOT, "crates", "horde-postprocess", "tests", "fixtures")
OUT = os.path.join(FIXTURES, "legacy_pth")


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 2, 1)


def random_like(rng, t):
    return torch.from_numpy(rng.standard_normal(tuple(t.shape)).astype(np.float32))


def state_dict(rng):
    model = Tiny()
    with torch.no_grad():
        for p in list(model.parameters()) + [model.bn.running_mean, model.bn.running_var]:
            p.copy_(random_like(rng, p))
        model.bn.num_batches_tracked.fill_(7)
    sd = model.state_dict()
    assert hasattr(sd, "_metadata"), "state_dict() carries _metadata"
    sd["half.weight"] = torch.from_numpy(rng.standard_normal((5, 3)).astype(np.float16))
    sd["double.weight"] = torch.from_numpy(rng.standard_normal((2, 3)))
    shared = torch.from_numpy(rng.standard_normal((6, 8)).astype(np.float32))
    sd["view.transposed"] = shared.t()
    sd["view.narrowed"] = shared[1:4, 2:7]
    assert not sd["view.transposed"].is_contiguous()
    assert sd["view.narrowed"].storage_offset() == 10
    return sd


def save_legacy(obj, name):
    path = os.path.join(OUT, name)
    torch.save(obj, path, _use_new_zipfile_serialization=False)
    with open(path, "rb") as f:
        assert not f.read(2) == b"PK", "legacy, not zip"
    return path


class _Storage:
    """Stands for a storage in a hand-written pickle: pickled as its persistent id."""

    def __init__(self, pid):
        self.pid = pid


class _Rebuild:
    def __init__(self, *args):
        self.args = args

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, self.args)


def save_old_view(rng):
    """`{"view.old": t}` with t of size (2, 3), stride (3, 1), offset 1 in a view of elements
    3..11 of a 12-element root storage; returns t's expected values."""
    root = rng.standard_normal(12).astype(np.float32)
    pid = ("storage", torch.FloatStorage, "1", "cpu", 12, ("2", 3, 8))
    obj = {"view.old": _Rebuild(_Storage(pid), 1, (2, 3), (3, 1), False, OrderedDict())}

    class Pickler(pickle.Pickler):
        def persistent_id(self, o):
            return o.pid if isinstance(o, _Storage) else None

    path = os.path.join(OUT, "old_view.pth")
    with open(path, "wb") as f:
        for header in (
            torch.serialization.MAGIC_NUMBER,
            torch.serialization.PROTOCOL_VERSION,
            {"protocol_version": 1001, "little_endian": True,
             "type_sizes": {"short": 2, "int": 4, "long": 4}},
        ):
            pickle.dump(header, f, protocol=2)
        Pickler(f, protocol=2).dump(obj)
        pickle.dump(["1"], f, protocol=2)
        f.write((12).to_bytes(8, "little"))
        f.write(root.astype("<f4").tobytes())
    expected = torch.from_numpy(root[3:11][1:7].reshape(2, 3).copy())
    back = torch.load(path, weights_only=False)["view.old"]
    assert torch.equal(back, expected), (back, expected)
    return expected


def first_count_offset(path):
    """The byte offset of the first storage's element count: after the five pickles."""

    class Anything(dict):
        pass

    class Skip(pickle.Unpickler):
        def persistent_load(self, pid):
            return None

        def find_class(self, module, name):
            return lambda *args, **kwargs: Anything()

    with open(path, "rb") as f:
        for _ in range(5):
            Skip(f).load()
        return f.tell()


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(20261205)
    sd = state_dict(rng)
    other = {k: v * 0 + 1 for k, v in sd.items()}
    tiny = save_legacy(sd, "tiny.pth")
    save_legacy({"params": other, "params_ema": sd}, "tiny_params_ema.pth")
    save_legacy({"params": sd}, "tiny_params.pth")
    expected = {k: v.to(torch.float32).contiguous() for k, v in sd.items()}
    save_file(expected, os.path.join(OUT, "tiny.expected.safetensors"))
    old_view = save_old_view(rng)
    save_file({"view.old": old_view}, os.path.join(OUT, "old_view.expected.safetensors"))

    # Check the files read back in torch as written.
    back = torch.load(tiny, weights_only=True)
    for k, v in sd.items():
        assert torch.equal(back[k], v), k

    retina = torch.load(
        os.path.join(FIXTURES, "face_detection", "retinaface_mnet_tiny_dp.pth"),
        weights_only=True,
    )
    save_legacy(retina, "retinaface_mnet_tiny_dp_legacy.pth")

    offset = first_count_offset(tiny)
    with open(tiny, "rb") as f:
        f.seek(offset)
        count = int.from_bytes(f.read(8), "little")
    manifest = {"tiny.pth": {"first_count_offset": offset, "first_count": count}}
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    print(json.dumps(manifest))


if __name__ == "__main__":
    main()
