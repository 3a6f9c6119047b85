"""ResNet-18 (He et al., 2016a), the paper's main student on CIFAR-10/100 and SVHN (Section 4.1).

CIFAR-style stem, as in the adversarial-distillation codebases the paper builds on (ARD, IAD, RSLAD,
AdaAD): one 3×3 stride-1 convolution and no max-pool, then four stages of two basic blocks (64, 128, 256,
512 channels; stages 2–4 stride 2), 4×4 average pooling and a linear head. For 64×64 inputs
(Tiny-ImageNet) the common AT codebases' convention is kept (pytorch-cifar, Bag-of-Tricks-for-AT, RiFT):
the same 3×3 stride-1 stem and the same 4×4 pooling window, which leaves a 2×2 grid, so the head takes
512·(64/32)² = 2048 features (``common.pool_grid``); at 32×32 the pooling is global.

Layer names follow the widely used ``pytorch-cifar`` layout (``conv1``, ``bn1``, ``layer1``…``layer4``,
``linear``; blocks ``conv1``/``bn1``/``conv2``/``bn2``/``shortcut``) so state dicts from those codebases
load with the ``state-dict`` teacher loader.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from igdm_kit.interfaces import Options

from .common import pool_grid


class BasicBlock(nn.Module):
    """Two 3×3 conv–BN layers with an identity (or 1×1 conv–BN projection) shortcut; post-activation."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, num_blocks: tuple[int, ...], num_classes: int, in_channels: int,
                 image_size: int = 32) -> None:
        super().__init__()
        self.grid = pool_grid(image_size)
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_planes = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), num_blocks, strict=True)):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride=2 if (i > 0 and j == 0) else 1))
                in_planes = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.linear = nn.Linear(512 * self.grid ** 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, self.grid).flatten(1)
        return self.linear(out)


class ResNet18:
    description = "ResNet-18 with a CIFAR-style 3×3 stem (the paper's student on CIFAR and SVHN)"

    class Options(Options):
        pass

    @classmethod
    def build(cls, options: Options, *, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
        return ResNet((2, 2, 2, 2), num_classes, in_channels, image_size)
