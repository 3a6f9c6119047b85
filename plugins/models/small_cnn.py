"""A small CNN for tests, the quickstart and low-resolution data (digits' 8×8 images).

Two 3×3 conv–BN–ReLU stages (the second strided), global average pooling and a linear head. ``width`` sets
the channels of the first stage (the second has twice as many).
"""

from __future__ import annotations

from pydantic import Field
from torch import nn

from igdm_kit.interfaces import Options


class SmallCNN:
    description = "small conv net (2 conv stages + linear), for tests and the quickstart"

    class Options(Options):
        width: int = Field(32, gt=0, le=1024, description="channels of the first conv stage")

    @classmethod
    def build(cls, options: Options, *, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
        w = options.width
        net = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
            nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * w),
            nn.ReLU(inplace=True),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * w, num_classes),
        )
        return net
