"""PreActResNet-18 (He et al., 2016b), the paper's student on Tiny-ImageNet (Appendix A.3, Table 14).

Pre-activation blocks (BN–ReLU before each convolution), CIFAR-style 3×3 stride-1 stem without max-pool,
stages of 64/128/256/512 channels, a final BN–ReLU, 4×4 average pooling and a linear head. For 64×64
Tiny-ImageNet inputs the common AT codebases' convention is kept (pytorch-cifar, Bag-of-Tricks-for-AT,
RiFT): the same stem and pooling window, a 2×2 grid, and a head on 512·4 = 2048 features
(``common.pool_grid``); at 32×32 the pooling is global.

Layer names follow the robust-overfitting / "bag of tricks" AT codebases (``conv1``, ``layer1``…``layer4``,
``bn``, ``linear``; blocks ``bn1``/``conv1``/``bn2``/``conv2``/``shortcut``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from igdm_kit.interfaces import Options

from .common import pool_grid


class PreActBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        # The projection sees the pre-activated input, the identity the raw one (He et al., 2016b).
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    def __init__(self, num_blocks: tuple[int, ...], num_classes: int, in_channels: int,
                 image_size: int = 32) -> None:
        super().__init__()
        self.grid = pool_grid(image_size)
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        in_planes = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), num_blocks, strict=True)):
            blocks = []
            for j in range(n):
                blocks.append(PreActBlock(in_planes, planes, stride=2 if (i > 0 and j == 0) else 1))
                in_planes = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512 * self.grid ** 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, self.grid).flatten(1)
        return self.linear(out)


class PreActResNet18:
    description = "PreActResNet-18 with a CIFAR-style 3×3 stem (the paper's Tiny-ImageNet student)"

    class Options(Options):
        pass

    @classmethod
    def build(cls, options: Options, *, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
        return PreActResNet((2, 2, 2, 2), num_classes, in_channels, image_size)
