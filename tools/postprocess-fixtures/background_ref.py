"""Shared helpers of background.py: the reference networks of rembg's U²-Net family at tiny widths,
their random weights, their deliberately mis-wired variants and rembg's pre/post-processing.

References (all from PyPI, architecture code only):
* U2NET and U2NETP: backgroundremover 0.4.5, `backgroundremover/u2net/u2net.py`, the published
  U²-Net code (same modules and state-dict keys as `u2net.pth` / `u2netp.pth`, from which
  rembg's `u2net.onnx` / `u2netp.onnx` were exported).
* ISNetDIS: dis-inference 1.1.3, `dis_inference/models/isnet.py` (Xuebin Qin's DIS code, the
  class `isnet-general-use.pth` loads into; rembg's `isnet-general-use.onnx` is its export).
  The package's `__init__` imports gdown and a CLI, so only that file is loaded, by path.
* rembg 2.0.86: `sessions/base.py` (`BaseSession.normalize`), `sessions/u2net.py`,
  `sessions/u2netp.py`, `sessions/dis_general_use.py` (`predict`), `bg.py` (`naive_cutout`).
  rembg itself needs onnxruntime and downloads its models, so its few lines are restated here
  (`rembg_mask`, `naive_cutout`) with the ONNX session replaced by the PyTorch network.

The tiny networks are the published classes with their stage modules replaced by narrower ones
of the same classes (the class hard-codes the widths): the key names, the block types (RSU7 …
RSU4F), the forward code and the wiring are the published ones.
"""

import contextlib
import importlib.metadata
import importlib.util
import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from backgroundremover.u2net import u2net as U2


def _load_isnet_module():
    spec = importlib.util.find_spec("dis_inference")
    if spec is None:
        raise SystemExit("dis-inference is missing: pip install --no-deps dis-inference==1.1.3")
    path = os.path.join(spec.submodule_search_locations[0], "models", "isnet.py")
    mod_spec = importlib.util.spec_from_file_location("dis_isnet", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module, path


DIS, DIS_PATH = _load_isnet_module()

# ---------------------------------------------------------------------------------------------
# Tiny widths. Encoder stages 1..6, decoder stages 5d..1d: (block class, mid, out); the input
# widths follow from the wiring (stage k takes stage k-1's output; stage kd takes
# cat(upsampled stage (k+1)d or 6, stage k)). The published widths are in the comments.
# ---------------------------------------------------------------------------------------------
ENCODER = ["stage1", "stage2", "stage3", "stage4", "stage5", "stage6"]
DECODER = ["stage5d", "stage4d", "stage3d", "stage2d", "stage1d"]
BLOCKS = {"stage1": "RSU7", "stage2": "RSU6", "stage3": "RSU5", "stage4": "RSU4", "stage5": "RSU4F",
          "stage6": "RSU4F", "stage5d": "RSU4F", "stage4d": "RSU4", "stage3d": "RSU5",
          "stage2d": "RSU6", "stage1d": "RSU7"}

WIDTHS = {
    # u2net: mids 32 32 64 128 256 256 | 256 128 64 32 16, outs 64 128 256 512 512 512 | 512 256 128 64 64
    "u2net": dict(mid=[2, 2, 3, 4, 6, 6, 6, 4, 3, 2, 2], out=[4, 6, 8, 12, 12, 12, 12, 8, 6, 4, 4]),
    # u2netp: mids 16 everywhere, outs 64 everywhere
    "u2netp": dict(mid=[2] * 11, out=[5] * 11),
    # isnet-general-use: conv_in 3->64 (stride 2), then u2net's widths with stage1 = RSU7(64, 32, 64)
    "isnet": dict(stem=4, mid=[2, 2, 3, 4, 6, 6, 6, 4, 3, 2, 2], out=[4, 6, 8, 12, 12, 12, 12, 8, 6, 4, 4]),
}


def build(kind):
    """The published class (U2NET, U2NETP or ISNetDIS) at the tiny widths of WIDTHS[kind]."""
    w = WIDTHS[kind]
    if kind == "isnet":
        net, mod, first_in = DIS.ISNetDIS(), DIS, w["stem"]
        net.conv_in = torch.nn.Conv2d(3, w["stem"], 3, stride=2, padding=1)
    else:
        net, mod, first_in = (U2.U2NET() if kind == "u2net" else U2.U2NETP()), U2, 3
    names = ENCODER + DECODER
    out = dict(zip(names, w["out"]))
    mid = dict(zip(names, w["mid"]))
    ins = {"stage1": first_in}
    for prev, name in zip(ENCODER, ENCODER[1:]):
        ins[name] = out[prev]
    below = "stage6"
    for name in DECODER:
        skip = name[:-1]  # stage5d -> stage5
        ins[name] = out[below] + out[skip]
        below = name
    for name in names:
        setattr(net, name, getattr(mod, BLOCKS[name])(ins[name], mid[name], out[name]))
    sides = {"side1": "stage1d", "side2": "stage2d", "side3": "stage3d", "side4": "stage4d",
             "side5": "stage5d", "side6": "stage6"}
    for side, stage in sides.items():
        setattr(net, side, torch.nn.Conv2d(out[stage], 1, 3, padding=1))
    return net.eval()


def randomize(module, seed):
    """Every tensor of the state dict from a seeded numpy generator, in state-dict order.
    Conv weights N(0, sqrt(2/fan_in)) (side and fusing convolutions N(0, 1/sqrt(fan_in)), so
    that the sigmoids are not saturated), biases
    N(0, 0.1); batch norms: weight N(1, 0.2), bias N(0, 0.2), running_mean N(0, 0.2),
    running_var U(0.5, 2), num_batches_tracked a random count."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, t in module.state_dict().items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(int(rng.integers(1, 100000)), dtype=torch.int64)
            continue
        if t.ndim == 4:
            fan_in = t.shape[1] * t.shape[2] * t.shape[3]
            gain = 1.0 if k.startswith("side") or k.startswith("outconv") else np.sqrt(2.0)
            v = rng.normal(0.0, gain / np.sqrt(fan_in), t.shape)
        elif k.endswith("running_var"):
            v = rng.uniform(0.5, 2.0, t.shape)
        elif k.endswith("running_mean"):
            v = rng.normal(0.0, 0.2, t.shape)
        elif ".bn" in k and k.endswith(".weight"):
            v = rng.normal(1.0, 0.2, t.shape)
        elif ".bn" in k and k.endswith(".bias"):
            v = rng.normal(0.0, 0.2, t.shape)
        elif k.endswith(".bias"):
            v = rng.normal(0.0, 0.1, t.shape)
        else:
            raise AssertionError(f"unexpected tensor {k} {tuple(t.shape)}")
        out[k] = torch.from_numpy(v.astype(np.float32))
    module.load_state_dict(out, strict=True)
    return out


def run(net, x):
    """The network's outputs (the list rembg's ONNX export returns, first = the mask), as numpy."""
    with torch.no_grad():
        outs = net(torch.from_numpy(x))
    if isinstance(outs, tuple) and len(outs) == 2 and isinstance(outs[0], list):  # ISNetDIS
        outs = outs[0]
    return [o.numpy() for o in outs]


# ---------------------------------------------------------------------------------------------
# Mis-wirings: each yields (description, network) and must move the outputs far past tolerance.
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _patched(module, name, value):
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


def _nearest_like(src, tar):
    return F.interpolate(src, size=tar.shape[2:], mode="nearest")


def _align_corners_like(src, tar):
    return F.interpolate(src, size=tar.shape[2:], mode="bilinear", align_corners=True)


def miswired_runs(kind, sd, x):
    """(description, outputs) of mis-wired variants: weight swaps, and code changes a port could
    make (no dilation, nearest or align_corners upsampling, floor pooling, BN without its running
    statistics, kernels flipped)."""
    mod = DIS if kind == "isnet" else U2

    def with_sd(d):
        net = build(kind)
        net.load_state_dict(d, strict=True)
        return run(net, x)

    def variant(**changes):
        d = dict(sd)
        d.update(changes)
        return with_sd(d)

    a, b = "stage1.rebnconv2.conv_s1.weight", "stage1.rebnconv3.conv_s1.weight"
    yield f"swap {a} <-> {b}", variant(**{a: sd[b], b: sd[a]})
    # A decoder RSU4F's dilation-2 and dilation-4 convolutions. At the fixture's 37x45 the
    # encoder's RSU4Fs see 3x3 and 2x2 maps (ISNet's, after its stride-2 stem, 2x2 and 1x1),
    # mostly padding at those dilations; stage5d's decoder convolutions move the outputs most.
    a, b = "stage5d.rebnconv2d.conv_s1.weight", "stage5d.rebnconv3d.conv_s1.weight"
    yield f"swap {a} <-> {b} (dilations 2 and 4 of an RSU4F)", variant(**{a: sd[b], b: sd[a]})
    flipped = {k: (v.flip(-1, -2).contiguous() if v.ndim == 4 else v) for k, v in sd.items()}
    yield "every 3x3 kernel flipped (convolution instead of cross-correlation)", with_sd(flipped)
    no_stats = {k: (torch.ones_like(v) if k.endswith("running_var") else
                    torch.zeros_like(v) if k.endswith("running_mean") else v) for k, v in sd.items()}
    yield "batch norms without their running statistics (mean 0, var 1)", with_sd(no_stats)

    net = build(kind)
    net.load_state_dict(sd, strict=True)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.dilation[0] > 1]
    saved = [(m.dilation, m.padding) for m in convs]
    for m in convs:
        m.dilation, m.padding = (1, 1), (1, 1)
    yield "dilation ignored (every dilated 3x3 convolution undilated)", run(net, x)
    for m, (d, p) in zip(convs, saved):
        m.dilation, m.padding = d, p

    with _patched(mod, "_upsample_like", _nearest_like):
        yield "nearest upsampling instead of bilinear", run(net, x)
    with _patched(mod, "_upsample_like", _align_corners_like):
        yield "bilinear upsampling with align_corners=True", run(net, x)
    pools = [m for m in net.modules() if isinstance(m, torch.nn.MaxPool2d)]
    for m in pools:
        m.ceil_mode = False
    try:
        floor = run(net, x)
    except RuntimeError as e:  # a map of one pixel cannot be pooled in floor mode
        floor = f"raises: {str(e).splitlines()[0][:100]}"
    yield "max pooling with floor instead of ceil mode", floor
    for m in pools:
        m.ceil_mode = True
    if kind != "isnet":
        a, b = "side1.weight", "side2.weight"
        yield f"swap {a} <-> {b}", variant(**{a: sd[b], b: sd[a]})
    else:
        conv_in = net.conv_in
        net.conv_in = torch.nn.Sequential(conv_in, net.pool_in)
        yield "ISNet's unused pool_in applied after conv_in (commented out upstream)", run(net, x)
        net.conv_in = conv_in


# ---------------------------------------------------------------------------------------------
# rembg's pre/post-processing (rembg 2.0.86), with the PyTorch network in place of ONNX.
# ---------------------------------------------------------------------------------------------
SESSIONS = {
    # kind: (mean, std, size, clip before x255) as in rembg's sessions/u2net.py, u2netp.py,
    # dis_general_use.py
    "u2net": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), (320, 320), True),
    "u2netp": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), (320, 320), False),
    "isnet": ((0.5, 0.5, 0.5), (1.0, 1.0, 1.0), (1024, 1024), False),
}


def rembg_normalize(img, mean, std, size):
    """BaseSession.normalize."""
    im = img.convert("RGB").resize(size, Image.Resampling.LANCZOS)
    im_ary = np.array(im)
    im_ary = im_ary / max(np.max(im_ary), 1e-6)
    tmp = np.zeros((im_ary.shape[0], im_ary.shape[1], 3))
    for c in range(3):
        tmp[:, :, c] = (im_ary[:, :, c] - mean[c]) / std[c]
    tmp = tmp.transpose((2, 0, 1))
    return np.expand_dims(tmp, 0).astype(np.float32)


def rembg_mask(net, kind, img):
    """The session's predict(): the first output's channel 0, min-max normalised, to 8 bits
    (truncating, as astype("uint8") does), resized back with Lanczos. Also returns the network
    input and the raw prediction's range."""
    mean, std, size, clip = SESSIONS[kind]
    x = rembg_normalize(img, mean, std, size)
    pred = run(net, x)[0][:, 0, :, :]
    ma, mi = np.max(pred), np.min(pred)
    pred = np.squeeze((pred - mi) / (ma - mi))
    if clip:
        pred = pred.clip(0, 1)
    small = Image.fromarray((pred * 255).astype("uint8"), mode="L")
    return small.resize(img.size, Image.Resampling.LANCZOS), small, (float(mi), float(ma))


def naive_cutout(img, mask):
    """bg.naive_cutout: the image composited over transparent black through the mask."""
    empty = Image.new("RGBA", img.size, 0)
    return Image.composite(img, empty, mask)


VERSIONS = {"backgroundremover": importlib.metadata.version("backgroundremover"),
            "dis-inference": importlib.metadata.version("dis-inference"), "rembg (restated)": "2.0.86", "torch": torch.__version__,
            "numpy": np.__version__, "pillow": Image.__version__}
