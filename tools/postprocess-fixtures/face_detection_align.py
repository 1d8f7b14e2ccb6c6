"""Alignment and paste-back reference: facexlib's `FaceRestoreHelper` as GFPGANer drives it
(`face_size=512`, `crop_ratio=(1, 1)`, `upscale_factor=1`, `use_parse=False`), on a fixed image
with fixed landmarks and fixed "restored" faces, so that no detector is involved.

The helper is built without its `__init__` (which would download and load the detection and
parsing networks); every method called is facexlib's own.
"""

import cv2
import numpy as np

from facexlib.utils.face_restoration_helper import FaceRestoreHelper

SOFT_BOX = None  # set by make()
TEMPLATE = np.array([[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935],
                     [201.26117, 371.41043], [313.08905, 371.15118]])


def helper_for(image_bgr):
    h = FaceRestoreHelper.__new__(FaceRestoreHelper)
    h.template_3points = False
    h.upscale_factor = 1
    h.crop_ratio = (1, 1)
    h.face_size = (512, 512)
    h.face_template = TEMPLATE * (512 / 512.0)
    h.save_ext = "png"
    h.pad_blur = False
    h.use_parse = False
    h.all_landmarks_5, h.det_faces, h.affine_matrices = [], [], []
    h.inverse_affine_matrices, h.cropped_faces, h.restored_faces, h.pad_input_imgs = [], [], [], []
    h.input_img = image_bgr
    return h


def smooth_image(rng, h, w, cells=8, noise=1.0):
    """A smooth random RGB image (coarse noise enlarged bilinearly, plus fine noise)."""
    coarse = rng.integers(0, 256, (cells, cells, 3)).astype(np.float32)
    big = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR)
    big += rng.normal(0, noise, big.shape).astype(np.float32)
    return np.clip(np.rint(big), 0, 255).astype(np.uint8)


def landmarks_of(rng, scale, degrees, shift, noise):
    """The template moved by a similarity, plus Gaussian noise (pixels)."""
    t = np.deg2rad(degrees)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]) * scale
    pts = (TEMPLATE - 256.0) @ rot.T + np.array(shift)
    return (pts + rng.normal(0, noise, pts.shape)).astype(np.float32)


def least_squares_similarity(src, dst):
    """[[a, -b, tx], [b, a, ty]] minimising the squared distances from src to dst."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    ms, md = src.mean(0), dst.mean(0)
    s, d = src - ms, dst - md
    norm = (s ** 2).sum()
    a = (s[:, 0] * d[:, 0] + s[:, 1] * d[:, 1]).sum() / norm
    b = (s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum() / norm
    tx = md[0] - a * ms[0] + b * ms[1]
    ty = md[1] - b * ms[0] - a * ms[1]
    return np.array([[a, -b, tx], [b, a, ty]])


def soft_mask_of(inverse_affine, h, w):
    """The helper's soft mask for one face (its lines, kept for the fixture as an intermediate)."""
    mask = np.ones((512, 512), dtype=np.float32)
    inv_mask = cv2.warpAffine(mask, inverse_affine, (w, h))
    inv_mask_erosion = cv2.erode(inv_mask, np.ones((2, 2), np.uint8))
    total_face_area = np.sum(inv_mask_erosion)
    w_edge = int(total_face_area**0.5) // 20
    erosion_radius = w_edge * 2
    inv_mask_center = cv2.erode(inv_mask_erosion, np.ones((erosion_radius, erosion_radius), np.uint8))
    blur_size = w_edge * 2
    soft = cv2.GaussianBlur(inv_mask_center, (blur_size + 1, blur_size + 1), 0)
    return inv_mask_erosion, soft, w_edge


def make(seed=20260105):
    """Image, landmarks, the helper's matrices, crops, and paste-back of fixed restored faces."""
    rng = np.random.default_rng(seed)
    height, width = 160, 200
    image = smooth_image(rng, height, width, noise=0.0)  # smooth: the crops' PNGs stay small
    faces = [
        landmarks_of(rng, 0.22, 12.0, (70.0, 70.0), 0.7),
        # near the right edge: the crop reaches outside the image (border colour)
        landmarks_of(rng, 0.16, -25.0, (178.0, 112.0), 0.7),
    ]
    helper = helper_for(image[:, :, ::-1].copy())
    helper.all_landmarks_5 = [f.astype(np.float64) for f in faces]
    helper.align_warp_face()
    helper.get_inverse_affine(None)
    # the "restored" faces: the crops with their colours inverted (RGB), so the paste is visible
    restored = [255 - c[:, :, ::-1] for c in helper.cropped_faces]
    for r in restored:
        helper.add_restored_face(r[:, :, ::-1].copy())
    inverse = [m.copy() for m in helper.inverse_affine_matrices]
    pasted = helper.paste_faces_to_input_image()[:, :, ::-1]
    ls = [least_squares_similarity(f, TEMPLATE) for f in faces]
    masks = [soft_mask_of(m, height, width) for m in inverse]
    rows, cols = np.nonzero(masks[0][1])
    global SOFT_BOX
    SOFT_BOX = (max(rows.min() - 2, 0), rows.max() + 3, max(cols.min() - 2, 0), cols.max() + 3)
    out = {
        "image": image,
        "landmarks": np.stack(faces).astype(np.float32),
        "affine_opencv": np.stack(helper.affine_matrices).astype(np.float64),
        "affine_least_squares": np.stack(ls),
        "inverse_affine": np.stack(inverse).astype(np.float64),
        "cropped": [np.ascontiguousarray(c[:, :, ::-1]) for c in helper.cropped_faces],
        # face 0's soft mask where it can be non-zero (the rest is 0): rows y0.., columns x0..
        "soft_mask0": masks[0][1][SOFT_BOX[0]:SOFT_BOX[1], SOFT_BOX[2]:SOFT_BOX[3]].copy(),
        "soft_mask0_origin": np.array([SOFT_BOX[0], SOFT_BOX[2]], dtype=np.int64),
        "pasted": np.ascontiguousarray(pasted),
    }
    info = {
        "image_size": [height, width],
        "w_edge": [m[2] for m in masks],
        "affine_lmeds_vs_least_squares_max_abs": float(np.abs(out["affine_opencv"] - out["affine_least_squares"]).max()),
    }
    # The crop warped with the least-squares matrix instead of LMEDS's: how far apart (levels)
    ls_crops = [cv2.warpAffine(image, m, (512, 512), borderMode=cv2.BORDER_CONSTANT,
                               borderValue=(132, 133, 135)) for m in ls]
    info["crop_lmeds_vs_least_squares_max_levels"] = int(max(
        np.abs(a.astype(int) - b.astype(int)).max() for a, b in zip(ls_crops, out["cropped"])))
    # The same paste-back with no face: the image must come back unchanged.
    empty = helper_for(image[:, :, ::-1].copy())
    unchanged = empty.paste_faces_to_input_image()[:, :, ::-1]
    info["no_face_paste_is_identity"] = bool(np.array_equal(unchanged, image))
    return out, info
