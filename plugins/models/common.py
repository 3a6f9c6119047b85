"""Pieces the built-in architectures share (normalization is the host's: ``igdm_kit.nn``)."""

from __future__ import annotations

from torch import nn


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
