#!/usr/bin/env python3
"""Reference fixtures for face detection (facexlib's RetinaFace), alignment and paste-back.

1. Two tiny random RetinaFaces (face_detection_net.py): `r50_wide` in the key layout of
   facexlib's `detection_Resnet50_Final.pth` with an FPN/SSH width of 68 (> 64: plain ReLU,
   as the published width 256), written as safetensors; `mnet` in the layout of
   `detection_mobilenet0.25_Final.pth`, widths / 4, FPN/SSH width 16 (<= 64: leaky ReLU 0.1,
   facexlib's rule), written as a torch.save'd state dict with DataParallel's `module.`
   prefix, as facexlib's loader accepts.
2. A fixed 76x60 image through facexlib's `detect_faces` (BGR from OpenCV, mean subtraction,
   priors, decode, threshold, NMS): the raw head outputs and the detections. Random weights give
   arbitrary scores, so the threshold is set between two well separated scores.
3. Mis-wired variants of the network and their max diffs on the raw outputs.
4. Alignment and paste-back through facexlib's FaceRestoreHelper (face_detection_align.py).

Run from the repository root:
    /root/.cache/horde/postprocess-fixtures-venv/bin/python tools/postprocess-fixtures/face_detection.py
Writes crates/horde-postprocess/tests/fixtures/face_detection/.
"""

import hashlib
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

torch.set_num_threads(1)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cv2  # noqa: E402
import facexlib  # noqa: E402
import torchvision  # noqa: E402
from facexlib.detection import retinaface_net  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

import face_detection_align as A  # noqa: E402
import face_detection_net as N  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "crates", "horde-postprocess", "tests", "fixtures", "face_detection")
TOLERANCE_RAW = 1e-5  # raw head outputs (softmax scores, offsets in prior units); measured 5.5e-7
TOLERANCE_PIXELS = 1e-3  # decoded boxes and landmarks, in pixels of a 76x60 image
STEM_GAIN = 1.0 / 60.0  # 0..255 inputs minus the mean: keeps activations O(1)

NETS = {
    "r50_wide": dict(seed=11, out_channels=68, file="retinaface_r50_wide.safetensors"),
    # facexlib's mobilenet0.25 layout, widths / 4 (stages 2..64 channels), FPN/SSH 16 (leaky)
    "mnet": dict(seed=13, out_channels=16, mobilenet_first=2, file="retinaface_mnet_tiny_dp.pth"),
}


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def network_input(image_rgb):
    """What detect_faces feeds the network: BGR float32 minus (104, 117, 123), NCHW."""
    bgr = image_rgb[:, :, ::-1].astype(np.float32)
    return torch.from_numpy(bgr.transpose(2, 0, 1).copy())[None] - torch.tensor([104., 117., 123.]).view(1, 3, 1, 1)


def run(net, x):
    with torch.no_grad():
        return [t.numpy() for t in net(x)]


def max_diff(a, b):
    return float(max(np.abs(p - q).max() for p, q in zip(a, b)))


def ssh_forward_swapped(self, input):
    """Mis-wired SSH: the 3x3 and 5x5 branches concatenated in the wrong order."""
    conv3X3 = self.conv3X3(input)
    conv5X5_1 = self.conv5X5_1(input)
    conv5X5 = self.conv5X5_2(conv5X5_1)
    conv7X7 = self.conv7x7_3(self.conv7X7_2(conv5X5_1))
    return F.relu(torch.cat([conv5X5, conv3X3, conv7X7], dim=1))


def fpn_forward_no_top_down(self, input):
    """Mis-wired FPN: no nearest-upsampled coarser level added before the merges."""
    o1, o2, o3 = self.output1(input[0]), self.output2(input[1]), self.output3(input[2])
    return [self.merge1(o1), self.merge2(o2), o3]


def miswired(spec, sd, image, reference):
    """Each variant: the same weights, one thing wired differently; max diff on raw outputs."""
    out = {}

    def fresh(**kw):
        net = N.build(out_channels=spec["out_channels"], mobilenet_first=spec.get("mobilenet_first"), **kw)
        net.load_state_dict(sd, strict=True)
        return net

    x = network_input(image)
    net = fresh()
    out["rgb_instead_of_bgr"] = max_diff(run(net, x.flip(1)), reference)
    out["no_mean_subtraction"] = max_diff(
        run(net, x + torch.tensor([104., 117., 123.]).view(1, 3, 1, 1)), reference)
    if "mobilenet_first" not in spec:
        out["stride_on_bottleneck_conv1"] = max_diff(run(fresh(stride_on_conv1=True), x), reference)
    saved = retinaface_net.SSH.forward
    retinaface_net.SSH.forward = ssh_forward_swapped
    out["ssh_branches_swapped"] = max_diff(run(net, x), reference)
    retinaface_net.SSH.forward = saved
    saved = retinaface_net.FPN.forward
    retinaface_net.FPN.forward = fpn_forward_no_top_down
    out["fpn_without_top_down"] = max_diff(run(net, x), reference)
    retinaface_net.FPN.forward = saved
    slope = 0.0 if spec["out_channels"] <= 64 else 0.1
    wrong = fresh()
    for name, m in wrong.named_modules():
        if isinstance(m, torch.nn.LeakyReLU) and not name.startswith("body"):
            m.negative_slope = slope
    out[f"leaky_slope_{slope}_in_fpn_ssh"] = max_diff(run(wrong, x), reference)
    eps = fresh()
    for m in eps.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eps = 1e-3
    out["batchnorm_eps_1e-3"] = max_diff(run(eps, x), reference)
    return out


def hyperparameters(spec):
    leaky = 0.1 if spec["out_channels"] <= 64 else 0.0
    if "mobilenet_first" in spec:
        f = spec["mobilenet_first"]
        return {"backbone": "mobilenet0.25", "stem": f, "blocks_per_stage": [6, 6, 2],
                "fpn_in": [8 * f, 16 * f, 32 * f], "out_channels": spec["out_channels"], "leaky": leaky}
    return {"backbone": "resnet50", "stem": 4, "planes": [4, 8, 16, 32], "expansion": 4,
            "blocks_per_stage": [1, 1, 1, 1], "fpn_in": [32, 64, 128],
            "out_channels": spec["out_channels"], "leaky": leaky}


def threshold_between(scores, wanted):
    """A confidence threshold with about `wanted` scores above it, at the widest gap nearby."""
    s = np.sort(scores)[::-1]
    gaps = [(s[i] - s[i + 1], i) for i in range(max(wanted - 8, 1), min(wanted + 8, len(s) - 1))]
    gap, i = max(gaps)
    assert gap > 1e-3, gap
    return float((s[i] + s[i + 1]) / 2), int(i + 1), float(gap)


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(20260104)
    image = A.smooth_image(rng, 60, 76, cells=5)
    manifest = {
        "format_version": 1,
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__,
                     "facexlib": facexlib.__version__, "opencv": cv2.__version__,
                     "numpy": np.__version__},
        "tolerance_raw": TOLERANCE_RAW,
        "tolerance_pixels": TOLERANCE_PIXELS,
        "nms_threshold": 0.4,
        "image": "image [60, 76, 3] uint8 RGB, the same for both networks",
        "networks": [],
    }
    expected = {"image": image}
    for name, spec in NETS.items():
        net = N.build(out_channels=spec["out_channels"], mobilenet_first=spec.get("mobilenet_first"))
        sd = N.randomize(net, spec["seed"], STEM_GAIN)
        path = os.path.join(OUT, spec["file"])
        if path.endswith(".pth"):
            torch.save({"module." + k: v.contiguous().clone() for k, v in sd.items()}, path)
        else:
            from safetensors.torch import save_file as save_pt
            save_pt({k: v.float().contiguous() for k, v in sd.items()}, path)
        # load back the way facexlib's init_detection_model does (strip `module.`, strict)
        loaded = torch.load(path, map_location="cpu") if path.endswith(".pth") else None
        if loaded is not None:
            loaded = {k[7:] if k.startswith("module.") else k: v for k, v in loaded.items()}
            check = N.build(out_channels=spec["out_channels"], mobilenet_first=spec.get("mobilenet_first"))
            check.load_state_dict(loaded, strict=True)
            net = check
        loc, conf, landms = run(net, network_input(image))
        threshold, count, gap = threshold_between(conf[0, :, 1], 24)
        with torch.no_grad():
            dets = net.detect_faces(image[:, :, ::-1].copy(), conf_threshold=threshold, nms_threshold=0.4)
        expected[f"{name}.loc"] = loc
        expected[f"{name}.conf"] = conf
        expected[f"{name}.landms"] = landms
        expected[f"{name}.detections"] = dets.astype(np.float32)
        mis = miswired(spec, sd, image, [loc, conf, landms])
        manifest["networks"].append({
            "name": name,
            "checkpoint": spec["file"],
            "seed": spec["seed"],
            "key_prefix": "module." if path.endswith(".pth") else "",
            "hyperparameters": hyperparameters(spec),
            "params": int(sum(v.numel() for k, v in sd.items() if not k.endswith("num_batches_tracked"))),
            "key_shapes": {k: list(v.shape) for k, v in sd.items()},
            "priors": int(loc.shape[1]),
            "conf_threshold": threshold,
            "scores_above_threshold": count,
            "score_gap_at_threshold": gap,
            "detections_after_nms": int(dets.shape[0]),
            "raw_abs_max": {"loc": float(np.abs(loc).max()), "landms": float(np.abs(landms).max())},
            "miswired_max_abs_diff": mis,
            "sha256": sha256(path),
        })
    exp_path = os.path.join(OUT, "detection.expected.safetensors")
    save_file({k: np.ascontiguousarray(v) for k, v in expected.items()}, exp_path)
    manifest["detection_expected_sha256"] = sha256(exp_path)

    align, info = A.make()
    pngs = {"image": align.pop("image"), "pasted": align.pop("pasted")}
    for i, crop in enumerate(align.pop("cropped")):
        pngs[f"cropped{i}"] = crop
    for name, rgb in pngs.items():
        Image.fromarray(rgb).save(os.path.join(OUT, f"alignment.{name}.png"), optimize=True)
    align_path = os.path.join(OUT, "alignment.expected.safetensors")
    save_file({k: np.ascontiguousarray(v) for k, v in align.items()}, align_path)
    manifest["alignment"] = dict(info, file="alignment.expected.safetensors", sha256=sha256(align_path),
                                 png_sha256={n: sha256(os.path.join(OUT, f"alignment.{n}.png")) for n in pngs},
                                 restored_face="255 - cropped (every RGB channel), computed by the test",
                                 border_value_rgb=[132, 133, 135],
                                 template=A.TEMPLATE.tolist())
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    for n in manifest["networks"]:
        print(n["name"], n["params"], "params;", n["detections_after_nms"], "of",
              n["scores_above_threshold"], "kept; mis-wired:", n["miswired_max_abs_diff"])
    print("alignment:", info)
    worst = min(v for n in manifest["networks"] for v in n["miswired_max_abs_diff"].values())
    print(f"smallest mis-wired diff {worst:.3e} = {worst / TOLERANCE_RAW:.0f} x tolerance")


if __name__ == "__main__":
    main()
