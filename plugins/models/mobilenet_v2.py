"""MobileNetV2 (Sandler et al., 2018), the paper's second student on CIFAR-10/100 (Appendix A.1).

The CIFAR variant the adversarial-distillation codebases use (RSLAD, AdaAD; ``pytorch-cifar`` layout): a
3×3 stride-1 stem of 32 channels, inverted-residual stages (expansion, channels, blocks, stride) =
(1,16,1,1) (6,24,2,1) (6,32,3,2) (6,64,4,2) (6,96,3,1) (6,160,3,2) (6,320,1,1) — the second stage keeps
stride 1 where ImageNet's has 2 — then a 1×1 conv to 1280 channels, 4×4 average pooling and a linear
head. Activations are ReLU (as in those codebases, not ReLU6). For 64×64 inputs the AT codebases'
convention is kept: same stem and pooling window, a 2×2 grid, a head on 1280·4 features
(``common.pool_grid``); at 32×32 the pooling is global.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from igdm_kit.interfaces import Options

from .common import pool_grid

#: (expansion, out_planes, num_blocks, stride) of each stage, CIFAR variant.
CIFAR_CFG = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
             (6, 320, 1, 1))


class InvertedResidual(nn.Module):
    """1×1 expand – 3×3 depthwise – 1×1 linear projection; a residual only where the stride is 1."""

    def __init__(self, in_planes: int, out_planes: int, expansion: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        planes = expansion * in_planes
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, groups=planes, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride == 1 and in_planes != out_planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, bias=False),
                                          nn.BatchNorm2d(out_planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + self.shortcut(x) if self.stride == 1 else out


class MobileNetV2Net(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, image_size: int = 32) -> None:
        super().__init__()
        self.grid = pool_grid(image_size)
        self.conv1 = nn.Conv2d(in_channels, 32, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        blocks, in_planes = [], 32
        for expansion, out_planes, n, stride in CIFAR_CFG:
            for j in range(n):
                blocks.append(InvertedResidual(in_planes, out_planes, expansion, stride if j == 0 else 1))
                in_planes = out_planes
        self.layers = nn.Sequential(*blocks)
        self.conv2 = nn.Conv2d(320, 1280, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(1280)
        self.linear = nn.Linear(1280 * self.grid ** 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = F.relu(self.bn2(self.conv2(out)))
        out = F.adaptive_avg_pool2d(out, self.grid).flatten(1)
        return self.linear(out)


class MobileNetV2:
    description = "MobileNetV2, CIFAR variant (3×3 stride-1 stem; the paper's second student)"

    class Options(Options):
        pass

    @classmethod
    def build(cls, options: Options, *, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
        return MobileNetV2Net(num_classes, in_channels, image_size)
