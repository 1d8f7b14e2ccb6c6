#!/usr/bin/env python3
"""A full-size check and timing, not a committed fixture: facexlib's own
`RetinaFace('resnet50')` (torchvision's ResNet-50, FPN/SSH width 256: the published network's
shapes, 27.4 M values) and `RetinaFace('mobile0.25')` with random weights, run on a 512²
image; and facexlib's alignment and paste-back of one face on a 1024² image.

Writes to DIR (default /tmp/horde-facedet-full): `retinaface_full_dp.pth` (105 MB, keys with
DataParallel's `module.` prefix), `retinaface_mnet_full.safetensors`, `expected.safetensors` (image, raw outputs, paste inputs and
result) and `timing.json` (best of 3, torch at the thread count given, default 2). The ignored
Rust test `full_size_retinaface_matches_facexlib_and_is_timed` reads them:

    /root/.cache/horde/postprocess-fixtures-venv/bin/python tools/postprocess-fixtures/face_detection_fullsize.py
    HORDE_FACEDET_FULL=/tmp/horde-facedet-full cargo test --release -p horde-postprocess \
        --test face_detection -- --ignored --nocapture
"""

import json
import os
import sys
import time
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
warnings.filterwarnings("ignore")

import face_detection_align as A  # noqa: E402
import face_detection_net as N  # noqa: E402
from facexlib.detection.retinaface import RetinaFace  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402


def best_of(n, f):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        out = f()
        times.append(time.perf_counter() - t)
    return min(times), out


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "/tmp/horde-facedet-full"
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    torch.set_num_threads(threads)
    os.makedirs(out_dir, exist_ok=True)
    net = RetinaFace(network_name="resnet50", half=False, device=torch.device("cpu"))
    sd = N.randomize(net, 21, 1.0 / 60.0)
    torch.save({"module." + k: v.contiguous().clone() for k, v in sd.items()},
               os.path.join(out_dir, "retinaface_full_dp.pth"))
    rng = np.random.default_rng(7)
    image = A.smooth_image(rng, 512, 512, cells=16)
    x = torch.from_numpy(image[:, :, ::-1].astype(np.float32).transpose(2, 0, 1).copy())[None]
    x = x - net.mean_tensor
    with torch.no_grad():
        loc, conf, landms = [t.numpy() for t in net(x)]
        detect_s, _ = best_of(3, lambda: net.detect_faces(image[:, :, ::-1].copy(), 0.97))

    # facexlib's own mobilenet0.25 RetinaFace (the published shapes, 0.4 M values)
    mnet = RetinaFace(network_name="mobile0.25", half=False, device=torch.device("cpu"))
    msd = N.randomize(mnet, 22, 1.0)
    from safetensors.torch import save_file as save_pt
    save_pt({k: v.float().contiguous() for k, v in msd.items()}, os.path.join(out_dir, "retinaface_mnet_full.safetensors"))
    with torch.no_grad():
        mloc, mconf, mlandms = [t.numpy() for t in mnet(x)]
        mnet_s, _ = best_of(3, lambda: mnet.detect_faces(image[:, :, ::-1].copy(), 0.97))

    # alignment and paste-back of one face on a 1024² image
    big = A.smooth_image(rng, 1024, 1024, cells=24)
    face = A.landmarks_of(rng, 0.8, 8.0, (500.0, 480.0), 0.7)
    helper = A.helper_for(big[:, :, ::-1].copy())

    def chain():
        helper.clean_all()
        helper.all_landmarks_5 = [face.astype(np.float64)]
        helper.align_warp_face()
        helper.get_inverse_affine(None)
        helper.add_restored_face(255 - helper.cropped_faces[0])
        return helper.paste_faces_to_input_image()

    paste_s, pasted = best_of(3, chain)
    save_file({
        "image": image, "loc": loc, "conf": conf, "landms": landms,
        "mnet.loc": mloc, "mnet.conf": mconf, "mnet.landms": mlandms,
        "big": big, "big_landmarks": face, "big_pasted": np.ascontiguousarray(pasted[:, :, ::-1]),
    }, os.path.join(out_dir, "expected.safetensors"))
    timing = {"torch_threads": threads, "torch": torch.__version__,
              "detect_faces_512_s": detect_s, "mnet_detect_faces_512_s": mnet_s,
              "align_and_paste_1024_s": paste_s,
              "params": int(sum(v.numel() for k, v in sd.items() if not k.endswith("num_batches_tracked")))}
    with open(os.path.join(out_dir, "timing.json"), "w") as f:
        json.dump(timing, f, indent=1)
    print(timing)


if __name__ == "__main__":
    main()
