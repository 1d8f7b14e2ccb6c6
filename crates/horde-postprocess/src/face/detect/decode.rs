//! From RetinaFace's raw outputs to faces, as facexlib's `detect_faces` does it: the priors
//! (anchors) of the three levels, the offsets decoded with the variances `(0.1, 0.2)`, scaled
//! to pixels, the scores above the confidence threshold sorted from the highest, and
//! torchvision's NMS.
//!
//! The arithmetic follows facexlib's order of operations in f32 (the priors in f64 rounded to
//! f32, as `torch.Tensor(list_of_floats)` does), so the boxes agree with it to float rounding.

use super::net::RawOutputs;
use super::Face;
use candle_core::{DType, Device, Result, Tensor};

/// facexlib's `cfg_re50` (the same for mobilenet0.25): anchor sizes and strides by level.
const MIN_SIZES: [[f64; 2]; 3] = [[16.0, 32.0], [64.0, 128.0], [256.0, 512.0]];
const STEPS: [usize; 3] = [8, 16, 32];
const VARIANCE: [f64; 2] = [0.1, 0.2];

/// The priors for an image of `height × width`: `[N, 4]` as `(cx, cy, w, h)` relative to the
/// image, level by level, then row, column and anchor size.
pub fn priors(height: usize, width: usize, device: &Device) -> Result<Tensor> {
    let (h, w) = (height as f64, width as f64);
    let levels = STEPS
        .iter()
        .zip(MIN_SIZES)
        .map(|(&step, sizes)| {
            let (rows, cols) = (height.div_ceil(step), width.div_ceil(step));
            let centres = |n: usize, side: f64| -> Result<Tensor> {
                // (j + 0.5) · step / side, in f64 as Python computes it
                ((Tensor::arange(0u32, n as u32, device)?.to_dtype(DType::F64)? + 0.5)?
                    * step as f64)?
                    / side
            };
            let cx = centres(cols, w)?.reshape((1, cols, 1, 1))?;
            let cy = centres(rows, h)?.reshape((rows, 1, 1, 1))?;
            let sx = Tensor::new(&[sizes[0] / w, sizes[1] / w], device)?.reshape((1, 1, 2, 1))?;
            let sy = Tensor::new(&[sizes[0] / h, sizes[1] / h], device)?.reshape((1, 1, 2, 1))?;
            let shape = (rows, cols, 2, 1);
            Tensor::cat(
                &[
                    cx.broadcast_as(shape)?,
                    cy.broadcast_as(shape)?,
                    sx.broadcast_as(shape)?,
                    sy.broadcast_as(shape)?,
                ],
                3,
            )?
            .reshape((rows * cols * 2, 4))
        })
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&levels, 0)?.to_dtype(DType::F32)
}

/// Boxes `[N, 4]` (x1, y1, x2, y2) and landmarks `[N, 10]` (x, y five times) in pixels, and
/// face scores `[N]`, decoded from `raw` for an image of `height × width`.
pub fn decode(raw: &RawOutputs, height: usize, width: usize) -> Result<(Tensor, Tensor, Tensor)> {
    let device = raw.loc.device();
    let priors = priors(height, width, device)?;
    let n = priors.dim(0)?;
    for (name, t, cols) in [
        ("box offsets", &raw.loc, 4),
        ("scores", &raw.conf, 2),
        ("landmark offsets", &raw.landmarks, 10),
    ] {
        if t.dims() != [n, cols] {
            candle_core::bail!("{name}: {:?} where [{n}, {cols}] was expected", t.dims());
        }
    }
    let (p_xy, p_wh) = (priors.narrow(1, 0, 2)?, priors.narrow(1, 2, 2)?);
    let (w, h) = (width as f32, height as f32);
    let offset = (raw.loc.narrow(1, 0, 2)? * VARIANCE[0])?;
    let centre = (&p_xy + (offset * &p_wh)?)?;
    let size = (&p_wh * (raw.loc.narrow(1, 2, 2)? * VARIANCE[1])?.exp()?)?;
    let top_left = (centre - (&size / 2.0)?)?;
    let bottom_right = (size + &top_left)?;
    let scale = Tensor::new(&[w, h, w, h], device)?.reshape((1, 4))?;
    let boxes = Tensor::cat(&[top_left, bottom_right], 1)?.broadcast_mul(&scale)?;

    let points = (raw.landmarks.reshape((n, 5, 2))? * VARIANCE[0])?;
    let points = points
        .broadcast_mul(&p_wh.unsqueeze(1)?)?
        .broadcast_add(&p_xy.unsqueeze(1)?)?;
    let scale = Tensor::new(&[w, h], device)?.reshape((1, 1, 2))?;
    let landmarks = points.broadcast_mul(&scale)?.reshape((n, 10))?;
    let scores = raw.conf.narrow(1, 1, 1)?.squeeze(1)?;
    Ok((boxes, landmarks, scores))
}

/// The faces scoring above `conf_threshold`, from the highest score, without those overlapping
/// a better one by more than `nms_threshold` (intersection over union).
pub fn select(
    boxes: &Tensor,
    landmarks: &Tensor,
    scores: &Tensor,
    conf_threshold: f32,
    nms_threshold: f32,
) -> Result<Vec<Face>> {
    let scores = scores.to_vec1::<f32>()?;
    let mut order: Vec<usize> = (0..scores.len())
        .filter(|&i| scores[i] > conf_threshold)
        .collect();
    // stable: equal scores keep the priors' order
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    if order.is_empty() {
        return Ok(Vec::new());
    }
    let index = Tensor::new(
        order.iter().map(|&i| i as u32).collect::<Vec<_>>(),
        boxes.device(),
    )?;
    let kept_boxes = boxes.index_select(&index, 0)?.to_vec2::<f32>()?;
    let kept_points = landmarks.index_select(&index, 0)?.to_vec2::<f32>()?;
    let faces: Vec<Face> = order
        .iter()
        .zip(kept_boxes.iter().zip(&kept_points))
        .map(|(&i, (b, p))| Face {
            score: scores[i],
            bbox: [b[0], b[1], b[2], b[3]],
            landmarks: std::array::from_fn(|k| [p[2 * k], p[2 * k + 1]]),
        })
        .collect();
    let keep = nms(&faces, nms_threshold);
    Ok(keep.into_iter().map(|i| faces[i]).collect())
}

/// torchvision's `nms` on faces already sorted by score: the indices kept, in that order.
pub fn nms(faces: &[Face], iou_threshold: f32) -> Vec<usize> {
    let area = |b: &[f32; 4]| (b[2] - b[0]) * (b[3] - b[1]);
    let mut suppressed = vec![false; faces.len()];
    let mut keep = Vec::new();
    for i in 0..faces.len() {
        if suppressed[i] {
            continue;
        }
        keep.push(i);
        let a = &faces[i].bbox;
        for j in i + 1..faces.len() {
            if suppressed[j] {
                continue;
            }
            let b = &faces[j].bbox;
            let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
            let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
            let inter = iw * ih;
            if inter / (area(a) + area(b) - inter) > iou_threshold {
                suppressed[j] = true;
            }
        }
    }
    keep
}
