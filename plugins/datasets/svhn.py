"""SVHN (Netzer et al., 2011), cropped digits, as used in the paper (Table 3; ResNet-18 student, 50 epochs).

Files are torchvision's layout: ``train_32x32.mat`` and ``test_32x32.mat`` directly under ``root``
(73,257 train and 26,032 test 3×32×32 images); ``download = true`` lets torchvision fetch and checksum them.
The MATLAB files are read with scipy (no code can run from them); label 10 means the digit 0 and becomes 0,
as torchvision does. No augmentation by default (Appendix B.1: flipped or shifted digits change meaning).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch

from igdm_kit.errors import DataError
from igdm_kit.interfaces import DatasetInfo, DatasetPlugin

from .cache import cached_split
from .common import DownloadOptions, check_labels, make_info, removed_on_failure

FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}


class SVHN(DatasetPlugin):
    description = "SVHN cropped digits (torchvision's train_32x32.mat / test_32x32.mat under root)"
    Options = DownloadOptions

    def info(self) -> DatasetInfo:
        return make_info(self.options, num_classes=10, in_channels=3, image_size=32, crop_padding=0,
                         hflip=False, class_names=tuple(str(i) for i in range(10)))

    def check(self) -> None:
        for split in FILES:
            if not (Path(self.options.root) / FILES[split]).is_file() and not self.options.download:
                raise self._missing(split)

    def _missing(self, split: str) -> DataError:
        return DataError(
            f"SVHN not found: expected {FILES['train']} and {FILES['test']} in "
            f"{str(Path(self.options.root).resolve())!r} ({FILES[split]} is missing)",
            "set download = true in [data] on a machine with network access, or download them from "
            f"http://ufldl.stanford.edu/housenumbers/ into {self.options.root!r}")

    def _path(self, split: str) -> Path:
        path = Path(self.options.root) / FILES[split]
        if not path.is_file() and self.options.download:
            try:
                from torchvision.datasets import SVHN as TorchvisionSVHN

                with removed_on_failure(self.options.root):  # a failed download leaves nothing behind
                    TorchvisionSVHN(root=self.options.root, split=split, download=True)
            except Exception as exc:  # noqa: BLE001 - network and disk errors come in many types
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise DataError(f"downloading SVHN {split} into {self.options.root!r} failed: {first}",
                                "check the network, or place the .mat file there yourself") from None
        if not path.is_file():
            raise self._missing(split)
        return path

    def load(self, split: Literal["train", "test"]) -> tuple[torch.Tensor, torch.Tensor]:
        path = self._path(split)
        return cached_split(self.options.cache_dir, "svhn", split, {}, [path], lambda: self._read(path))

    def _read(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        import scipy.io

        try:
            mat = scipy.io.loadmat(str(path))
        except Exception as exc:  # noqa: BLE001 - scipy raises several types for bad files
            raise DataError(f"{str(path)!r} is not a readable MATLAB file ({type(exc).__name__})",
                            "re-download it (delete it and set download = true in [data])") from None
        x, y = mat.get("X"), mat.get("y")
        if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray) or x.ndim != 4 \
                or x.shape[:3] != (32, 32, 3) or x.dtype != np.uint8 or y.size != x.shape[3]:
            shape = getattr(x, "shape", None)
            raise DataError(f"{str(path)!r} does not hold SVHN arrays (X is {shape}, expected 32×32×3×N "
                            "uint8 with one label per image)", "re-download it")
        labels = y.astype(np.int64).reshape(-1)
        labels[labels == 10] = 0  # SVHN stores the digit 0 as class 10
        check_labels(labels, 10, repr(str(path)))
        return x.transpose(3, 2, 0, 1), labels  # H×W×C×N → N×C×H×W
