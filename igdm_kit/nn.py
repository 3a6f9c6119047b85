"""The layers every model shares, applied by the host: normalization inside the model; and uint8 data as
the [0, 1] floats a model takes (``to_float_images``).

Attacks, ε and every analysis work on [0, 1] images, so a dataset's mean/std must be part of the model,
never of the data. ``igdm_kit.create_model`` wraps each registered architecture once in ``Classifier``;
teacher loaders replace its ``normalize`` layer with the one a checkpoint carries.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def to_float_images(x: torch.Tensor) -> torch.Tensor:
    """Images as a model takes them: uint8 pixels k become float32 k/255 (on the tensor's device, one batch at
    a time, so a dataset is held as uint8 — 4× smaller); float images, already in [0, 1], are returned as they
    are. k/255 is the same float32 number whichever side of a copy it is computed on."""
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    return x


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
    """``net(normalize(x))``: what ``create_model`` returns for every registered architecture."""

    def __init__(self, net: nn.Module, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std) if mean is not None and std is not None else nn.Identity()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))
