"""A user's own images, one folder per class (torchvision's ImageFolder layout)::

    root/train/<class>/<image>      root/test/<class>/<image>

for distilling a robust student on data the paper did not use. Classes are the sorted names of the train
class folders (ImageFolder's convention); a test folder may hold a subset of them. Images are converted to
RGB (or greyscale), their shorter side scaled to ``image_size`` (bilinear) and the centre cropped to a
square. The whole split is decoded up front and held in memory as uint8 (1 byte a pixel), so this suits
datasets of up to a few hundred thousand small images. Augmentation defaults follow Appendix B.1 (random crop padding image_size/8 — 4 for
32×32, 8 for 64×64 — and horizontal flips); set ``hflip = false`` for data whose mirror image means
something else (text, digits).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from igdm_kit.errors import DataError
from igdm_kit.interfaces import DatasetInfo, DatasetPlugin, PathOption

from .cache import cached_split
from .common import ImageOptions, list_images, make_info, read_images


class ImageFolderOptions(ImageOptions):
    root: PathOption = Field(..., description="folder holding train/<class>/ and test/<class>/ image folders")
    image_size: int = Field(32, ge=4, le=1024, description="side of the square images the model sees")
    grayscale: bool = Field(False, description="convert images to one grey channel instead of RGB")
    test_folder: str = Field("test", min_length=1, description="name of the test split's folder under root")


class ImageFolder(DatasetPlugin):
    description = "your own images: root/train/<class>/*, root/test/<class>/*"
    Options = ImageFolderOptions

    def _split_dir(self, split: str) -> Path:
        name = "train" if split == "train" else self.options.test_folder
        folder = Path(self.options.root) / name
        if not folder.is_dir():
            raise DataError(
                f"image folder {str(folder)!r} does not exist",
                f"put your images in {self.options.root}/train/<class>/ and "
                f"{self.options.root}/{self.options.test_folder}/<class>/ (one folder per class), or set "
                f"root in [data]")
        return folder

    def classes(self) -> list[str]:
        train = self._split_dir("train")
        names = sorted(p.name for p in train.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not names:
            raise DataError(f"image folder {str(train)!r} has no class folders",
                            "put each class's images in its own sub-folder, e.g. train/cat/001.png")
        return names

    def check(self) -> None:
        self.classes()
        self._split_dir("test")

    def info(self) -> DatasetInfo:
        names = self.classes()
        o = self.options
        return make_info(o, num_classes=len(names), in_channels=1 if o.grayscale else 3,
                         image_size=o.image_size, crop_padding=o.image_size // 8, hflip=True,
                         class_names=names)

    def load(self, split: Literal["train", "test"]) -> tuple[torch.Tensor, torch.Tensor]:
        names = self.classes()
        index = {n: i for i, n in enumerate(names)}
        folder = self._split_dir(split)
        paths, labels = [], []
        for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if sub.name not in index:
                raise DataError(f"class folder {str(sub)!r} has no counterpart in the train folder",
                                "every test class must also be a train class (same folder name)")
            files = list_images(sub)
            paths += files
            labels += [index[sub.name]] * len(files)
        if not paths:
            raise DataError(f"image folder {str(folder)!r} holds no images",
                            "supported: .png .jpg .jpeg .bmp .gif .webp .tif .tiff .ppm files in "
                            "<class>/ sub-folders")
        o = self.options
        key = {"image_size": o.image_size, "grayscale": o.grayscale, "classes": names}
        return cached_split(o.cache_dir, "image-folder", split, key, paths, lambda: (
            read_images(paths, size=o.image_size, grayscale=o.grayscale, resize=True),
            np.asarray(labels, dtype=np.int64)))
