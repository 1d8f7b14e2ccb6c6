//! RetinaFace's network in facexlib's layout: a torchvision ResNet body (`body.conv1`,
//! `body.layer1..4`, Bottleneck blocks with the stride on the 3×3, as torchvision's v1.5) or
//! facexlib's MobileNetV1 ([`super::mobilenet`]), an FPN over the last three stages (`fpn.output1..3`, `fpn.merge1..2`), one SSH context module a level
//! (`ssh1..3`) and three 1×1 heads a level (`ClassHead`, `BboxHead`, `LandmarkHead`).
//!
//! Every convolution is followed by a BatchNorm in eval mode; the two are folded into one
//! convolution with a bias at load time, so running costs only the convolutions. Widths and
//! block counts come from the tensors; the activation of the FPN and SSH is facexlib's rule:
//! leaky ReLU 0.1 when their width is at most 64 (mobilenet0.25's), plain ReLU otherwise
//! (ResNet-50's 256).

use crate::tensors::leaky_relu;
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use horde_diffusion::nn::{conv, Conv2d};
use std::collections::HashMap;

/// BatchNorm's epsilon in PyTorch (facexlib keeps the default).
const BN_EPS: f64 = 1e-5;

/// The tensors of a checkpoint, by name, with the lookups the builders need.
pub(super) struct Weights<'a> {
    pub tensors: &'a HashMap<String, Tensor>,
    pub device: &'a Device,
}

impl Weights<'_> {
    fn get(&self, key: &str) -> Result<&Tensor> {
        self.tensors
            .get(key)
            .ok_or_else(|| candle_core::Error::Msg(format!("no tensor `{key}`")))
    }

    /// The convolution `conv_key` (no bias) followed by the BatchNorm `bn_key`, folded into one
    /// convolution: `w·γ/√(σ²+ε)` and bias `β − μ·γ/√(σ²+ε)`.
    pub(super) fn conv_bn(&self, conv_key: &str, bn_key: &str, stride: usize) -> Result<Conv2d> {
        let weight = self.get(&format!("{conv_key}.weight"))?;
        let (out_c, in_c, k, k_w) = weight.dims4()?;
        if k != k_w {
            candle_core::bail!("`{conv_key}.weight`: a square kernel was expected");
        }
        let (folded, bias) = self.fold_bn(weight, bn_key)?;
        self.conv_from(folded, bias, in_c, out_c, k, stride)
    }

    /// A depthwise 3×3 kernel (`[C, 1, 3, 3]`) and the bias of its folded BatchNorm.
    pub(super) fn depthwise_bn(&self, conv_key: &str, bn_key: &str) -> Result<(Tensor, Tensor)> {
        let weight = self.get(&format!("{conv_key}.weight"))?;
        match weight.dims4()? {
            (_, 1, 3, 3) => self.fold_bn(weight, bn_key),
            dims => candle_core::bail!(
                "`{conv_key}.weight` is {dims:?}: a depthwise kernel `[C, 1, 3, 3]` was expected"
            ),
        }
    }

    /// `weight` and the BatchNorm `bn_key` as one convolution's weight and bias.
    fn fold_bn(&self, weight: &Tensor, bn_key: &str) -> Result<(Tensor, Tensor)> {
        let out_c = weight.dim(0)?;
        let gamma = self.get(&format!("{bn_key}.weight"))?;
        let beta = self.get(&format!("{bn_key}.bias"))?;
        let mean = self.get(&format!("{bn_key}.running_mean"))?;
        let var = self.get(&format!("{bn_key}.running_var"))?;
        let scale = (gamma / (var + BN_EPS)?.sqrt()?)?;
        let folded = weight.broadcast_mul(&scale.reshape((out_c, 1, 1, 1))?)?;
        let bias = (beta - (mean * &scale)?)?;
        Ok((folded, bias))
    }

    /// A plain convolution with its bias (the heads).
    pub(super) fn conv_biased(&self, key: &str) -> Result<Conv2d> {
        let weight = self.get(&format!("{key}.weight"))?.clone();
        let bias = self.get(&format!("{key}.bias"))?.clone();
        let (out_c, in_c, k, _) = weight.dims4()?;
        self.conv_from(weight, bias, in_c, out_c, k, 1)
    }

    fn conv_from(
        &self,
        weight: Tensor,
        bias: Tensor,
        in_c: usize,
        out_c: usize,
        k: usize,
        stride: usize,
    ) -> Result<Conv2d> {
        let map = HashMap::from([("weight".to_string(), weight), ("bias".to_string(), bias)]);
        let vb = VarBuilder::from_tensors(map, DType::F32, self.device);
        conv(in_c, out_c, k, stride, k / 2, vb)
    }
}

/// One torchvision Bottleneck: 1×1, 3×3 (carrying the stride), 1×1 to 4× the planes, plus the
/// input (through a strided 1×1 `downsample` when the shape changes), then ReLU.
struct Bottleneck {
    conv1: Conv2d,
    conv2: Conv2d,
    conv3: Conv2d,
    downsample: Option<Downsample>,
}

/// The shortcut's 1×1 convolution, strided or not. A strided 1×1 only reads every other
/// pixel, so it is run as a subsampling and a plain 1×1 (the fast kernel): candle's generic
/// strided convolution took 55 ms where this takes 4 at ResNet-50's `layer3` on a 512² image.
struct Downsample {
    conv: Conv2d,
    stride: usize,
}

impl Downsample {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.stride == 1 {
            return self.conv.forward(x);
        }
        let (b, c, h, w) = x.dims4()?;
        let s = self.stride;
        let (out_h, out_w) = (h.div_ceil(s), w.div_ceil(s));
        let every_other = x
            .pad_with_zeros(2, 0, out_h * s - h)?
            .pad_with_zeros(3, 0, out_w * s - w)?
            .reshape((b, c, out_h, s, out_w, s))?
            .narrow(3, 0, 1)?
            .narrow(5, 0, 1)?
            .reshape((b, c, out_h, out_w))?;
        self.conv.forward(&every_other)
    }
}

impl Bottleneck {
    fn new(w: &Weights<'_>, prefix: &str, stride: usize) -> Result<Self> {
        let p = |name: &str| format!("{prefix}.{name}");
        let downsample = if w.tensors.contains_key(&p("downsample.0.weight")) {
            Some(Downsample {
                conv: w.conv_bn(&p("downsample.0"), &p("downsample.1"), 1)?,
                stride,
            })
        } else {
            None
        };
        Ok(Bottleneck {
            conv1: w.conv_bn(&p("conv1"), &p("bn1"), 1)?,
            conv2: w.conv_bn(&p("conv2"), &p("bn2"), stride)?,
            conv3: w.conv_bn(&p("conv3"), &p("bn3"), 1)?,
            downsample,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let out = self.conv1.forward(x)?.relu()?;
        let out = self.conv2.forward(&out)?.relu()?;
        let out = self.conv3.forward(&out)?;
        let identity = match &self.downsample {
            Some(down) => down.forward(x)?,
            None => x.clone(),
        };
        (out + identity)?.relu()
    }
}

/// The ResNet body up to `layer4`, returning the outputs of `layer2`, `layer3`, `layer4`.
pub(super) struct ResnetBody {
    stem: Conv2d,
    stages: Vec<Vec<Bottleneck>>,
}

impl ResnetBody {
    pub(super) fn new(w: &Weights<'_>) -> Result<Self> {
        let stem = w.conv_bn("body.conv1", "body.bn1", 2)?;
        let stages = (1..=4)
            .map(|stage| {
                let blocks = blocks_in(w.tensors, stage);
                if blocks == 0 {
                    candle_core::bail!("no tensor `body.layer{stage}.0.conv1.weight`");
                }
                (0..blocks)
                    .map(|i| {
                        let stride = if stage > 1 && i == 0 { 2 } else { 1 };
                        Bottleneck::new(w, &format!("body.layer{stage}.{i}"), stride)
                    })
                    .collect()
            })
            .collect::<Result<_>>()?;
        Ok(ResnetBody { stem, stages })
    }

    pub(super) fn forward(&self, x: &Tensor) -> Result<[Tensor; 3]> {
        let x = self.stem.forward(x)?.relu()?;
        // 3×3 max pool, stride 2, padding 1: after the ReLU every value is ≥ 0, so padding with
        // zeros gives the same maxima as PyTorch's −∞ padding.
        let mut x = x
            .pad_with_zeros(2, 1, 1)?
            .pad_with_zeros(3, 1, 1)?
            .max_pool2d_with_stride(3, 2)?;
        let mut outs = Vec::with_capacity(3);
        for (i, stage) in self.stages.iter().enumerate() {
            for block in stage {
                x = block.forward(&x)?;
            }
            if i > 0 {
                outs.push(x.clone());
            }
        }
        let [c2, c3, c4]: [Tensor; 3] = outs.try_into().expect("three stages after the first");
        Ok([c2, c3, c4])
    }
}

/// Bottleneck blocks in `body.layer{stage}`.
pub(super) fn blocks_in(tensors: &HashMap<String, Tensor>, stage: usize) -> usize {
    (0..)
        .take_while(|i| tensors.contains_key(&format!("body.layer{stage}.{i}.conv1.weight")))
        .count()
}

/// The FPN/SSH activation: leaky ReLU (slope 0.1) at widths up to 64, ReLU above.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Activation {
    pub slope: f64,
}

impl Activation {
    pub fn for_width(out_channels: usize) -> Self {
        Activation {
            slope: if out_channels <= 64 { 0.1 } else { 0.0 },
        }
    }

    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        if self.slope == 0.0 {
            x.relu()
        } else {
            leaky_relu(x, self.slope)
        }
    }
}

/// The feature pyramid: 1×1 lateral convolutions, the coarser level added by nearest
/// upsampling, a 3×3 merge on the two finer levels.
pub(super) struct Fpn {
    outputs: [Conv2d; 3],
    merge1: Conv2d,
    merge2: Conv2d,
    act: Activation,
}

impl Fpn {
    pub(super) fn new(w: &Weights<'_>, act: Activation) -> Result<Self> {
        let lateral =
            |i: usize| w.conv_bn(&format!("fpn.output{i}.0"), &format!("fpn.output{i}.1"), 1);
        Ok(Fpn {
            outputs: [lateral(1)?, lateral(2)?, lateral(3)?],
            merge1: w.conv_bn("fpn.merge1.0", "fpn.merge1.1", 1)?,
            merge2: w.conv_bn("fpn.merge2.0", "fpn.merge2.1", 1)?,
            act,
        })
    }

    pub(super) fn forward(&self, [c2, c3, c4]: &[Tensor; 3]) -> Result<[Tensor; 3]> {
        let act = |conv: &Conv2d, x: &Tensor| self.act.apply(&conv.forward(x)?);
        let o1 = act(&self.outputs[0], c2)?;
        let o2 = act(&self.outputs[1], c3)?;
        let o3 = act(&self.outputs[2], c4)?;
        let o2 = act(&self.merge2, &(&o2 + upsample_to(&o3, &o2)?)?)?;
        let o1 = act(&self.merge1, &(&o1 + upsample_to(&o2, &o1)?)?)?;
        Ok([o1, o2, o3])
    }
}

/// `x` enlarged by nearest neighbour to the height and width of `like` (PyTorch's `nearest`).
fn upsample_to(x: &Tensor, like: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = like.dims4()?;
    x.upsample_nearest2d(h, w)
}

/// SSH: a 3×3 branch (half the width) and 5×5 and 7×7 receptive fields built from stacked
/// 3×3s (a quarter each), concatenated in that order, then ReLU.
pub(super) struct Ssh {
    conv3x3: Conv2d,
    conv5x5_1: Conv2d,
    conv5x5_2: Conv2d,
    conv7x7_2: Conv2d,
    conv7x7_3: Conv2d,
    act: Activation,
}

impl Ssh {
    pub(super) fn new(w: &Weights<'_>, prefix: &str, act: Activation) -> Result<Self> {
        let cb = |name: &str| {
            w.conv_bn(
                &format!("{prefix}.{name}.0"),
                &format!("{prefix}.{name}.1"),
                1,
            )
        };
        Ok(Ssh {
            conv3x3: cb("conv3X3")?,
            conv5x5_1: cb("conv5X5_1")?,
            conv5x5_2: cb("conv5X5_2")?,
            conv7x7_2: cb("conv7X7_2")?,
            conv7x7_3: cb("conv7x7_3")?,
            act,
        })
    }

    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let branch3 = self.conv3x3.forward(x)?;
        let first5 = self.act.apply(&self.conv5x5_1.forward(x)?)?;
        let branch5 = self.conv5x5_2.forward(&first5)?;
        let second7 = self.act.apply(&self.conv7x7_2.forward(&first5)?)?;
        let branch7 = self.conv7x7_3.forward(&second7)?;
        Tensor::cat(&[branch3, branch5, branch7], 1)?.relu()
    }
}

/// The 1×1 heads of one kind on the three levels, `values` numbers per anchor.
pub(super) struct Heads {
    convs: Vec<Conv2d>,
    values: usize,
}

impl Heads {
    pub(super) fn new(w: &Weights<'_>, name: &str, values: usize) -> Result<Self> {
        let convs = (0..3)
            .map(|i| w.conv_biased(&format!("{name}.{i}.conv1x1")))
            .collect::<Result<_>>()?;
        Ok(Heads { convs, values })
    }

    /// `[1, priors, values]`, the levels one after the other and, within a level, row by row,
    /// column by column, anchor by anchor (the priors' order).
    pub(super) fn forward(&self, features: &[Tensor; 3]) -> Result<Tensor> {
        let per_level = self
            .convs
            .iter()
            .zip(features)
            .map(|(conv, f)| {
                let out = conv.forward(f)?.permute((0, 2, 3, 1))?;
                let b = out.dim(0)?;
                out.reshape((b, (), self.values))
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&per_level, 1)
    }
}

/// The raw outputs of the network for one image: box offsets `[priors, 4]`, class
/// probabilities (background, face) `[priors, 2]`, landmark offsets `[priors, 10]`.
pub struct RawOutputs {
    pub loc: Tensor,
    pub conf: Tensor,
    pub landmarks: Tensor,
}

/// The backbone: torchvision's ResNet or facexlib's MobileNetV1.
pub(super) enum Body {
    Resnet(ResnetBody),
    Mobilenet(super::mobilenet::MobilenetBody),
}

impl Body {
    fn forward(&self, x: &Tensor) -> Result<[Tensor; 3]> {
        match self {
            Body::Resnet(body) => body.forward(x),
            Body::Mobilenet(body) => body.forward(x),
        }
    }
}

/// The whole network.
pub(super) struct Network {
    body: Body,
    fpn: Fpn,
    ssh: [Ssh; 3],
    class: Heads,
    bbox: Heads,
    landmark: Heads,
}

impl Network {
    pub(super) fn new(w: &Weights<'_>, mobilenet: bool, act: Activation) -> Result<Self> {
        let body = if mobilenet {
            Body::Mobilenet(super::mobilenet::MobilenetBody::new(w)?)
        } else {
            Body::Resnet(ResnetBody::new(w)?)
        };
        Ok(Network {
            body,
            fpn: Fpn::new(w, act)?,
            ssh: [
                Ssh::new(w, "ssh1", act)?,
                Ssh::new(w, "ssh2", act)?,
                Ssh::new(w, "ssh3", act)?,
            ],
            class: Heads::new(w, "ClassHead", 2)?,
            bbox: Heads::new(w, "BboxHead", 4)?,
            landmark: Heads::new(w, "LandmarkHead", 10)?,
        })
    }

    /// `x`: `[1, 3, H, W]`, BGR minus the mean. Softmax is applied to the classes, as
    /// facexlib's test phase does.
    pub(super) fn forward(&self, x: &Tensor) -> Result<RawOutputs> {
        let levels = self.fpn.forward(&self.body.forward(x)?)?;
        let features = [
            self.ssh[0].forward(&levels[0])?,
            self.ssh[1].forward(&levels[1])?,
            self.ssh[2].forward(&levels[2])?,
        ];
        let logits = self.class.forward(&features)?;
        Ok(RawOutputs {
            loc: self.bbox.forward(&features)?.squeeze(0)?,
            conf: candle_nn::ops::softmax_last_dim(&logits)?.squeeze(0)?,
            landmarks: self.landmark.forward(&features)?.squeeze(0)?,
        })
    }
}
