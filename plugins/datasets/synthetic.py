"""Random images of a real dataset's shape, for speed checks and smoke runs (no files, no download).

By default CIFAR-100's shapes: 50,000 train / 10,000 test 3×32×32 images, 100 classes, random crop with
4 pixels of padding and horizontal flips, so a recipe with ``[data] name = "synthetic"`` runs the same
engine path, batch shapes and augmentation as CIFAR-100 (``benchmarks/device_check.py`` times the engine
on it). Pixels are independent uniform 8-bit values (uint8 k, meaning k/255, as decoded image files give; held
as bytes like every file dataset's) and labels are
uniform over the classes; both come from a generator seeded by ``seed`` and the split, so every machine
gets the same data. There is nothing to learn in it: accuracies stay at chance.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from igdm_kit.interfaces import DatasetInfo, DatasetPlugin, Options

_SPLIT_STREAM = {"train": 0, "test": 1}


class Synthetic(DatasetPlugin):
    description = "random 8-bit images of CIFAR-100's shapes (or others): speed checks, no download"

    class Options(Options):
        num_classes: int = Field(100, ge=2, le=100_000, description="number of classes")
        image_size: int = Field(32, ge=4, le=1024, description="height and width in pixels")
        in_channels: Literal[1, 3] = Field(3, description="1 (grey) or 3 (RGB)")
        train_size: int = Field(50_000, gt=0, le=10_000_000, description="training images")
        test_size: int = Field(10_000, gt=0, le=10_000_000, description="test images")
        seed: int = Field(0, ge=0, description="seed of the pixels and labels")
        crop_padding: int | None = Field(None, ge=0, le=64, description="random-crop padding during "
                                                                       "training (default image_size / 8)")
        hflip: bool = Field(True, description="random horizontal flips during training")

    def info(self) -> DatasetInfo:
        o = self.options
        padding = o.image_size // 8 if o.crop_padding is None else o.crop_padding
        return DatasetInfo(num_classes=o.num_classes, in_channels=o.in_channels, image_size=o.image_size,
                           crop_padding=padding, hflip=o.hflip)

    def load(self, split: Literal["train", "test"]) -> tuple[torch.Tensor, torch.Tensor]:
        o = self.options
        n = o.train_size if split == "train" else o.test_size
        g = torch.Generator().manual_seed(2 * o.seed + _SPLIT_STREAM[split])
        pixels = torch.randint(0, 256, (n, o.in_channels, o.image_size, o.image_size), generator=g,
                               dtype=torch.uint8)
        labels = torch.randint(0, o.num_classes, (n,), generator=g)
        return pixels, labels  # uint8: the host converts each batch to k/255
