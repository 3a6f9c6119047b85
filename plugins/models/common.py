"""Pieces every model shares: the normalization layer that keeps attacks in [0, 1] pixel space."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    """(x − mean) / std per channel, as buffers so they travel with the weights."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError("mean and std need one value per channel")
        if any(s <= 0 for s in std):
            raise ValueError("std must be positive")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """``net(normalize(x))``: what every built-in factory returns."""

    def __init__(self, net: nn.Module, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std) if mean is not None and std is not None else nn.Identity()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))


def make_activation(name: str) -> nn.Module:
    """``relu`` or ``silu`` (SiLU is the "Swish" of DeepMind's and RobustBench's newer WideResNets)."""
    if name == "relu":
        return nn.ReLU()
    if name == "silu":
        return nn.SiLU()
    raise ValueError(f"unknown activation {name!r}")



def pool_grid(image_size: int) -> int:
    """Side of the final average-pooling grid: the AT codebases' convention for inputs beyond 32×32.

    The CIFAR networks of those codebases (pytorch-cifar, Bag-of-Tricks-for-AT, RiFT's Tiny-ImageNet
    models) keep their final pooling window fixed — 4×4 for the ResNets and MobileNetV2, 8×8 for the
    WideResNets — so an input of side s leaves an (s/32)×(s/32) grid and the linear head takes
    channels·(s/32)² features (64×64 Tiny-ImageNet: a 2×2 grid). Pooling adaptively to that grid gives
    exactly those numbers for multiples of 32 and plain global pooling below 64 pixels.
    """
    return max(1, image_size // 32)
