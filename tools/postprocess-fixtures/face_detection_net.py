"""A tiny RetinaFace in the key layout of facexlib's `detection_Resnet50_Final.pth`.

facexlib builds its ResNet-50 body with `torchvision.models.resnet50` and keeps `layer2..4`
through `IntermediateLayerGetter`; the FPN, SSH and heads are facexlib's own modules. The
published network is 100 MB, so the body here is made of torchvision's own `Bottleneck` blocks
(one a stage, narrow planes), under the same attribute names, and everything after the body is
facexlib's code with the FPN/SSH width chosen here. The instance is a real `facexlib RetinaFace`
(built without its `__init__`, which would build the full ResNet-50), so `forward` and
`detect_faces` are facexlib's.
"""

import numpy as np
import torch
import torch.nn as nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import Bottleneck

from facexlib.detection.retinaface import RetinaFace, generate_config
from facexlib.detection.retinaface_net import (FPN, SSH, conv_bn, conv_dw, make_bbox_head, make_class_head,
                                               make_landmark_head)


class TinyResNet(nn.Module):
    """torchvision's ResNet-50 stem and stages, one Bottleneck a stage, `planes[i]` wide."""

    def __init__(self, stem, planes, stride_on_conv1=False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, stem, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = stem
        for i, p in enumerate(planes):
            stride = 1 if i == 0 else 2
            downsample = nn.Sequential(
                nn.Conv2d(inplanes, p * 4, 1, stride, bias=False), nn.BatchNorm2d(p * 4))
            block = Bottleneck(inplanes, p, stride, downsample)
            if stride_on_conv1 and stride == 2:
                # mis-wired variant: ResNet v1 (stride on the 1x1) instead of torchvision's v1.5
                block.conv1.stride, block.conv2.stride = (2, 2), (1, 1)
            setattr(self, f"layer{i + 1}", nn.Sequential(block))
            inplanes = p * 4


class TinyMobileNet(nn.Module):
    """facexlib's MobileNetV1 (its own conv_bn / conv_dw, the same blocks and strides) with
    every width divided by 8 / `first` (mobilenet0.25 starts at 8 channels)."""

    def __init__(self, first=2):
        super().__init__()
        w = [first * m for m in (1, 2, 4, 8, 16, 32)]
        self.stage1 = nn.Sequential(
            conv_bn(3, w[0], 2, leaky=0.1),
            conv_dw(w[0], w[1], 1),
            conv_dw(w[1], w[2], 2),
            conv_dw(w[2], w[2], 1),
            conv_dw(w[2], w[3], 2),
            conv_dw(w[3], w[3], 1),
        )
        self.stage2 = nn.Sequential(conv_dw(w[3], w[4], 2), *[conv_dw(w[4], w[4], 1) for _ in range(5)])
        self.stage3 = nn.Sequential(conv_dw(w[4], w[5], 2), conv_dw(w[5], w[5], 1))


def build(stem=4, planes=(4, 8, 16, 32), out_channels=68, stride_on_conv1=False, mobilenet_first=None):
    """facexlib's RetinaFace around a TinyResNet body (or a TinyMobileNet one when
    `mobilenet_first` is given); FPN/SSH width `out_channels`."""
    net = RetinaFace.__new__(RetinaFace)
    nn.Module.__init__(net)
    cfg = generate_config("resnet50" if mobilenet_first is None else "mobile0.25")
    net.device = torch.device("cpu")
    net.half_inference = False
    net.backbone = cfg["name"]
    net.model_name = "retinaface_resnet50" if mobilenet_first is None else "retinaface_mobile0.25"
    net.cfg = cfg
    net.phase = "test"
    net.target_size, net.max_size = 1600, 2150
    net.resize, net.scale, net.scale1 = 1.0, None, None
    net.mean_tensor = torch.tensor([[[[104.]], [[117.]], [[123.]]]])
    if mobilenet_first is None:
        net.body = IntermediateLayerGetter(TinyResNet(stem, planes, stride_on_conv1), cfg["return_layers"])
        ins = [p * 4 for p in planes[1:]]
    else:
        net.body = IntermediateLayerGetter(TinyMobileNet(mobilenet_first), cfg["return_layers"])
        ins = [mobilenet_first * m for m in (8, 16, 32)]
    net.fpn = FPN(ins, out_channels)
    net.ssh1 = SSH(out_channels, out_channels)
    net.ssh2 = SSH(out_channels, out_channels)
    net.ssh3 = SSH(out_channels, out_channels)
    net.ClassHead = make_class_head(fpn_num=3, inchannels=out_channels)
    net.BboxHead = make_bbox_head(fpn_num=3, inchannels=out_channels)
    net.LandmarkHead = make_landmark_head(fpn_num=3, inchannels=out_channels)
    net.eval()
    return net


def randomize(net, seed, stem_gain):
    """Every state-dict tensor random (numpy seeded), in state-dict order.

    Convolutions N(0, gain/sqrt(fan_in)) (the stem's gain scaled down for 0..255 inputs), biases
    N(0, 0.1), BN weight N(1, 0.2), bias N(0, 0.1), running mean N(0, 0.1), running var
    U(0.5, 1.5), num_batches_tracked a random integer.
    """
    rng = np.random.default_rng(seed)
    sd = net.state_dict()
    out = {}
    for name, t in sd.items():
        shape = tuple(t.shape)
        if name.endswith("num_batches_tracked"):
            v = np.array(rng.integers(1000, 100000), dtype=np.int64)
        elif name.endswith("running_var"):
            v = rng.uniform(0.5, 1.5, shape)
        elif name.endswith("running_mean"):
            v = rng.normal(0.0, 0.1, shape)
        elif len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            gain = stem_gain if name == "body.conv1.weight" else 1.0  # ResNet stem only: see README
            v = rng.normal(0.0, gain / np.sqrt(fan_in), shape)
        elif name.endswith(".weight"):  # BatchNorm scale
            v = rng.normal(1.0, 0.2, shape)
        else:  # BatchNorm shift, conv bias
            v = rng.normal(0.0, 0.1, shape)
        out[name] = torch.from_numpy(np.asarray(v)).to(t.dtype).reshape(t.shape)
    net.load_state_dict(out, strict=True)
    return out
