//! Face detection with RetinaFace, as facexlib's `detect_faces` runs it for GFPGAN's
//! `FaceRestoreHelper`: the image at its own size (`use_origin_size`), in OpenCV's BGR order
//! minus the mean `(104, 117, 123)`, through the network ([`net`]), the offsets decoded
//! against the priors, scores above the threshold sorted from the best and overlaps removed
//! by NMS ([`decode`]).
//!
//! The checkpoint is facexlib's `detection_Resnet50_Final.pth` (keys `body.*`, `fpn.*`,
//! `ssh1..3.*`, `ClassHead.*`, `BboxHead.*`, `LandmarkHead.*`, with or without DataParallel's
//! `module.` prefix) or its `detection_mobilenet0.25_Final.pth` (the body as
//! `body.stage1..3.*`), recognised and sized from its tensors, so tiny random checkpoints of
//! the same layouts load too.

mod decode;
mod mobilenet;
mod net;
mod tiny;

pub use decode::{decode, nms, priors, select};
pub use net::{Activation, RawOutputs};
pub use tiny::write_tiny_checkpoint;

use crate::tensors::read_checkpoint;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use image::RgbImage;
use std::collections::HashMap;
use std::path::Path;

/// One detected face, in pixels of the image it was found in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Face {
    /// The face probability, in `(threshold, 1]`.
    pub score: f32,
    /// `[x1, y1, x2, y2]`.
    pub bbox: [f32; 4],
    /// Left eye, right eye, nose, left and right mouth corners, `[x, y]` each.
    pub landmarks: [[f32; 2]; 5],
}

/// The body of the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backbone {
    /// torchvision's ResNet (`body.conv1`, `body.layer1..4`): `retinaface_resnet50`.
    Resnet,
    /// facexlib's MobileNetV1 (`body.stage1..3`): `retinaface_mobile0.25`.
    Mobilenet,
}

/// What the tensors say about the network.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    pub backbone: Backbone,
    /// Channels out of the stem (ResNet-50: 64 from a 7×7; mobilenet0.25: 8 from a 3×3).
    pub stem: usize,
    /// Blocks a stage: Bottlenecks in `layer1..4` (ResNet-50: 3, 4, 6, 3), or MobileNet's in
    /// `stage1..3`, the stem counted (6, 6, 2).
    pub blocks: Vec<usize>,
    /// Channels into the FPN (ResNet-50: 512, 1024, 2048; mobilenet0.25: 64, 128, 256).
    pub fpn_in: [usize; 3],
    /// The FPN and SSH width (ResNet-50: 256).
    pub out_channels: usize,
    /// Leaky ReLU 0.1 at widths up to 64, ReLU above (facexlib's rule).
    pub activation: Activation,
}

/// A loaded RetinaFace and the thresholds it detects with.
pub struct RetinaFace {
    pub shape: Shape,
    /// Faces must score above this: 0.97, what `FaceRestoreHelper` asks of `detect_faces`.
    pub conf_threshold: f32,
    /// Intersection over union above which the lower-scoring box goes: 0.4.
    pub nms_threshold: f32,
    network: net::Network,
    device: Device,
}

impl RetinaFace {
    /// Loads a RetinaFace checkpoint (`.pth` or `.safetensors`) in facexlib's ResNet-50 or
    /// mobilenet0.25 layout.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let unsupported = |reason: String| Error::Unsupported {
            path: path.display().to_string(),
            reason,
        };
        let tensors = without_module_prefix(read_checkpoint(path, device)?);
        let shape = shape_of(&tensors).map_err(unsupported)?;
        let weights = net::Weights {
            tensors: &tensors,
            device,
        };
        let mobilenet = shape.backbone == Backbone::Mobilenet;
        let network = net::Network::new(&weights, mobilenet, shape.activation)
            .map_err(|e| unsupported(format!("a RetinaFace tensor does not fit: {e}")))?;
        Ok(RetinaFace {
            shape,
            conf_threshold: 0.97,
            nms_threshold: 0.4,
            network,
            device: device.clone(),
        })
    }

    /// The network on a prepared input (`[1, 3, H, W]`, BGR minus the mean: see
    /// [`network_input`]).
    pub fn forward(&self, x: &Tensor) -> Result<RawOutputs> {
        Ok(self.network.forward(x)?)
    }

    /// The faces in `image`, best first, as facexlib's `detect_faces` finds them.
    pub fn detect(&self, image: &RgbImage) -> Result<Vec<Face>> {
        let (width, height) = (image.width() as usize, image.height() as usize);
        if width == 0 || height == 0 {
            return Err(Error::Run(candle_core::Error::Msg(format!(
                "face detection on an empty image ({width}×{height})"
            ))));
        }
        let raw = self.forward(&network_input(image, &self.device)?)?;
        let (boxes, landmarks, scores) = decode(&raw, height, width)?;
        Ok(select(
            &boxes,
            &landmarks,
            &scores,
            self.conf_threshold,
            self.nms_threshold,
        )?)
    }
}

/// What facexlib feeds the network: the image in BGR order (OpenCV's), as floats, minus the
/// per-channel mean `(104, 117, 123)` (B, G, R), `[1, 3, H, W]`.
pub fn network_input(image: &RgbImage, device: &Device) -> candle_core::Result<Tensor> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let rgb = Tensor::from_vec(image.as_raw().clone(), (h, w, 3), device)?.to_dtype(DType::F32)?;
    let bgr = rgb.index_select(&Tensor::new(&[2u32, 1, 0], device)?, 2)?;
    let mean = Tensor::new(&[104f32, 117.0, 123.0], device)?;
    bgr.broadcast_sub(&mean)?
        .permute((2, 0, 1))?
        .contiguous()?
        .unsqueeze(0)
}

/// A checkpoint saved from `nn.DataParallel` names every key `module.…`; facexlib strips it.
fn without_module_prefix(tensors: HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    tensors
        .into_iter()
        .map(|(k, v)| match k.strip_prefix("module.") {
            Some(stripped) => (stripped.to_string(), v),
            None => (k, v),
        })
        .collect()
}

/// Recognises facexlib's RetinaFace (ResNet-50 or mobilenet0.25 body) and reads its sizes.
pub fn shape_of(tensors: &HashMap<String, Tensor>) -> std::result::Result<Shape, String> {
    let backbone = if tensors.contains_key("body.stage1.0.0.weight") {
        Backbone::Mobilenet
    } else {
        Backbone::Resnet
    };
    let body_key = match backbone {
        Backbone::Resnet => "body.conv1.weight",
        Backbone::Mobilenet => "body.stage1.0.0.weight",
    };
    let required = [
        body_key,
        "fpn.output1.0.weight",
        "ssh1.conv3X3.0.weight",
        "ClassHead.0.conv1x1.weight",
        "BboxHead.0.conv1x1.weight",
        "LandmarkHead.0.conv1x1.weight",
    ];
    if let Some(missing) = required.iter().find(|k| !tensors.contains_key(**k)) {
        return Err(format!(
            "not a RetinaFace face detector in facexlib's layout (ResNet-50 or mobilenet0.25): \
             no tensor `{missing}`"
        ));
    }
    let out_dim = |key: &str| -> std::result::Result<usize, String> {
        let t = tensors.get(key).ok_or(format!("no tensor `{key}`"))?;
        match t.dims() {
            [out, ..] if t.dims().len() == 4 => Ok(*out),
            dims => Err(format!(
                "`{key}` has shape {dims:?}, a convolution was expected"
            )),
        }
    };
    let (blocks, fpn_in) = match backbone {
        Backbone::Resnet => {
            let blocks: Vec<usize> = (1..=4).map(|s| net::blocks_in(tensors, s)).collect();
            let mut fpn_in = [0; 3];
            for (i, stage) in [2, 3, 4].into_iter().enumerate() {
                fpn_in[i] = out_dim(&format!("body.layer{stage}.0.conv3.weight"))?;
            }
            (blocks, fpn_in)
        }
        Backbone::Mobilenet => {
            let blocks: Vec<usize> = (1..=3).map(|s| mobilenet::blocks_in(tensors, s)).collect();
            let mut fpn_in = [0; 3];
            for (i, &n) in blocks.iter().enumerate() {
                let last = n
                    .checked_sub(1)
                    .ok_or(format!("no block in `body.stage{}`", i + 1))?;
                fpn_in[i] = out_dim(&format!("body.stage{}.{last}.3.weight", i + 1))?;
            }
            (blocks, fpn_in)
        }
    };
    let out_channels = out_dim("fpn.output1.0.weight")?;
    for (head, values) in [("ClassHead", 2), ("BboxHead", 4), ("LandmarkHead", 10)] {
        let found = out_dim(&format!("{head}.0.conv1x1.weight"))?;
        if found != 2 * values {
            return Err(format!(
                "`{head}.0.conv1x1` gives {found} channels where 2 anchors × {values} were expected"
            ));
        }
    }
    if !out_channels.is_multiple_of(4) {
        return Err(format!(
            "an FPN width of {out_channels}: SSH needs a multiple of 4"
        ));
    }
    Ok(Shape {
        backbone,
        stem: out_dim(body_key)?,
        blocks,
        fpn_in,
        out_channels,
        activation: Activation::for_width(out_channels),
    })
}
