"""Tiny-ImageNet (Le & Yang, 2015): 200 classes of 64×64 images, the paper's Appendix A.3 (Table 14).

Layout: the extracted ``tiny-imagenet-200.zip`` under ``root``::

    tiny-imagenet-200/train/<wnid>/images/*.JPEG      (500 per class; <wnid>/*.JPEG also accepted)
    tiny-imagenet-200/val/images/*.JPEG + val/val_annotations.txt   (the original layout), or
    tiny-imagenet-200/val/<wnid>/[images/]*.JPEG      (val already sorted into class folders)

The labelled validation set (10,000 images) is the ``test`` split, as in the AT literature (the official
test set has no labels). Classes are the sorted train folder names, ImageFolder's convention, so teachers
trained with torchvision's ImageFolder keep their class indices. Greyscale JPEGs are converted to RGB.
Augmentation: random crop with 8 pixels of padding and horizontal flips (Appendix B.1). The train split
decodes 100,000 JPEGs and holds them as uint8 (about 1.2 GB; float32 would be 4.9 GB).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch

from igdm_kit.errors import DataError
from igdm_kit.interfaces import DatasetInfo, DatasetPlugin

from .cache import cached_split
from .common import DownloadOptions, list_images, make_info, read_images, removed_on_failure

FOLDER = "tiny-imagenet-200"
URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"


class TinyImageNet(DatasetPlugin):
    description = "Tiny-ImageNet-200, 64×64 (tiny-imagenet-200/ under root; val is the test split)"
    Options = DownloadOptions

    @property
    def base(self) -> Path:
        return Path(self.options.root) / FOLDER

    def _missing(self, what: str) -> DataError:
        return DataError(
            f"Tiny-ImageNet not found: expected {FOLDER}/train/<wnid>/images/*.JPEG and {FOLDER}/val/ "
            f"in {str(Path(self.options.root).resolve())!r} ({what})",
            f"set download = true in [data] on a machine with network access, or extract {URL} into "
            f"{self.options.root!r}")

    def _ensure(self) -> None:
        if (self.base / "train").is_dir():
            return
        if self.options.download:
            try:
                from torchvision.datasets.utils import download_and_extract_archive

                with removed_on_failure(self.options.root):  # a failed download leaves nothing behind
                    download_and_extract_archive(URL, download_root=self.options.root)
            except Exception as exc:  # noqa: BLE001 - network and disk errors come in many types
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise DataError(f"downloading Tiny-ImageNet into {self.options.root!r} failed: {first}",
                                f"check the network, or extract {URL} there yourself") from None
        if not (self.base / "train").is_dir():
            raise self._missing(f"{str(self.base / 'train')!r} does not exist")

    def check(self) -> None:
        if not (self.base / "train").is_dir() and not self.options.download:
            raise self._missing(f"{str(self.base / 'train')!r} does not exist")

    def classes(self) -> list[str]:
        self._ensure()
        wnids = sorted(p.name for p in (self.base / "train").iterdir() if p.is_dir())
        if not wnids:
            raise self._missing("the train folder has no class folders")
        return wnids

    def info(self) -> DatasetInfo:
        wnids = self.classes()
        return make_info(self.options, num_classes=len(wnids), in_channels=3, image_size=64,
                         crop_padding=8, hflip=True, class_names=wnids)

    @staticmethod
    def _class_images(folder: Path) -> list[Path]:
        inner = folder / "images"
        return list_images(inner if inner.is_dir() else folder)

    def _train_files(self, wnids: list[str]) -> tuple[list[Path], list[int]]:
        paths, labels = [], []
        for i, wnid in enumerate(wnids):
            files = self._class_images(self.base / "train" / wnid)
            paths += files
            labels += [i] * len(files)
        return paths, labels

    def _val_files(self, wnids: list[str]) -> tuple[list[Path], list[int]]:
        val = self.base / "val"
        index = {w: i for i, w in enumerate(wnids)}
        annotations = val / "val_annotations.txt"
        paths, labels = [], []
        if annotations.is_file() and (val / "images").is_dir():
            for n, line in enumerate(annotations.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                fields = line.split("\t")
                if len(fields) < 2 or fields[1] not in index:
                    raise DataError(f"{str(annotations)!r} line {n} names no known class: {line[:60]!r}",
                                    "the annotations do not belong to this train folder; re-extract")
                paths.append(val / "images" / fields[0])
                labels.append(index[fields[1]])
            missing = [p for p in paths if not p.is_file()]
            if missing:
                raise DataError(f"{len(missing)} validation image(s) listed in val_annotations.txt are "
                                f"missing, e.g. {str(missing[0])!r}", "re-extract the archive")
            return paths, labels
        folders = sorted(p for p in val.iterdir() if p.is_dir() and p.name != "images") \
            if val.is_dir() else []
        if not folders:
            raise self._missing("val/ has neither images/ with val_annotations.txt nor class folders")
        for folder in folders:
            if folder.name not in index:
                raise DataError(f"validation class folder {str(folder)!r} is not a train class",
                                "val/ and train/ must come from the same Tiny-ImageNet archive")
            files = self._class_images(folder)
            paths += files
            labels += [index[folder.name]] * len(files)
        return paths, labels

    def load(self, split: Literal["train", "test"]) -> tuple[torch.Tensor, torch.Tensor]:
        wnids = self.classes()
        paths, labels = self._train_files(wnids) if split == "train" else self._val_files(wnids)
        if not paths:
            raise self._missing(f"no images found for the {split} split")
        return cached_split(self.options.cache_dir, FOLDER, split, {}, paths,
                            lambda: (read_images(paths, size=64), np.asarray(labels, dtype=np.int64)))
