"""scikit-learn's handwritten digits: 1,797 real 8×8 grey images of 10 classes, shipped in the wheel.

Pixels (0..16) are divided by 16 into [0, 1]. The split is scikit-learn's
``train_test_split(test_size=0.2, stratify=y, random_state=0)``: 1,437 train and 360 test images, the same
on every machine, so anyone can reproduce the test set.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from igdm_kit.interfaces import DatasetInfo, DatasetPlugin, Options


class Digits(DatasetPlugin):
    description = "scikit-learn's 8×8 handwritten digits (shipped, no download)"

    class Options(Options):
        test_size: float = Field(0.2, gt=0, lt=1, description="fraction held out as the test split")
        random_state: int = Field(0, ge=0, le=2**32 - 1, description="seed of the stratified split (scikit-learn "
                                  "takes 0 to 2³² − 1)")

    def info(self) -> DatasetInfo:
        return DatasetInfo(num_classes=10, in_channels=1, image_size=8, crop_padding=0, hflip=False,
                           class_names=tuple(str(i) for i in range(10)))

    def load(self, split: Literal["train", "test"]) -> tuple[torch.Tensor, torch.Tensor]:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        data = load_digits()
        x_tr, x_te, y_tr, y_te = train_test_split(
            data.images, data.target, test_size=self.options.test_size, stratify=data.target,
            random_state=self.options.random_state,
        )
        x, y = (x_tr, y_tr) if split == "train" else (x_te, y_te)
        images = torch.as_tensor(x, dtype=torch.float32).unsqueeze(1) / 16.0
        return images, torch.as_tensor(y, dtype=torch.long)
