"""A user's own images, one folder per class (torchvision's ImageFolder layout)::

    root/train/<class>/<image>      root/test/<class>/<image>

for distilling a robust student on data the paper did not use. Classes are the sorted names of the train
class folders (ImageFolder's convention); a test folder may hold a subset of them. Images are converted to
RGB (or greyscale), their shorter side scaled to ``image_size`` (bilinear) and the centre cropped to a
square. The whole split is decoded up front and held in memory as uint8 (1 byte a pixel), which suits
datasets of up to a few hundred thousand small images; with ``stream = true`` the training images are
instead decoded a batch at a time in ``[data] workers`` DataLoader processes (the same batches).
Augmentation defaults follow Appendix B.1 (random crop padding image_size/8 — 4 for 32×32, 8 for 64×64 —
and horizontal flips); set ``hflip = false`` for data whose mirror image means something else (text,
digits).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from igdm_kit.errors import DataError
from igdm_kit.interfaces import DatasetInfo, DatasetPlugin, ImageSource, PathOption

from .cache import cached_split
from .common import ImageOptions, PathTable, class_folders, decode_image, list_images, make_info, read_images


class ImageFolderOptions(ImageOptions):
    root: PathOption = Field(..., description="folder holding train/<class>/ and test/<class>/ image folders")
    image_size: int = Field(32, ge=4, le=1024, description="side of the square images the model sees")
    grayscale: bool = Field(False, description="convert images to one grey channel instead of RGB")
    test_folder: str = Field("test", min_length=1, description="name of the test split's folder under root")
    stream: bool = Field(
        False, exclude=True,  # the same batches either way: how the images are read, not what is trained
        description="read the training images lazily, one batch at a time, decoded in [data] workers "
                    "DataLoader processes, instead of decoding the split up front (for sets too large to hold; "
                    "the test split is still decoded up front)")


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
        return class_folders(self._split_dir("train"), "image folder",
                             "put each class's images in its own sub-folder, e.g. train/cat/001.png")

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
        paths, labels = self._files(split)
        o = self.options
        key = {"image_size": o.image_size, "grayscale": o.grayscale, "classes": self.classes()}
        return cached_split(o.cache_dir, "image-folder", split, key, paths, lambda: (
            read_images(paths, size=o.image_size, grayscale=o.grayscale, resize=True),
            np.asarray(labels, dtype=np.int64)))

    def source(self, split: Literal["train", "test"]) -> FolderSource | None:
        if not self.options.stream:
            return None
        paths, labels = self._files(split)
        return FolderSource(paths, labels, self.options.image_size, self.options.grayscale)

    def _files(self, split: str) -> tuple[list[Path], list[int]]:
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
        return paths, labels


class FolderSource(ImageSource):
    """The image files of one split, decoded one at a time (in DataLoader workers) as ``load`` decodes them
    all: the same bytes, so a streamed run gives the batches of an in-memory one."""

    def __init__(self, paths: list[Path], labels: list[int], size: int, grayscale: bool) -> None:
        self.paths, self.size, self.grayscale = PathTable(paths), size, grayscale
        self.labels = torch.as_tensor(labels, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, index: int, generator: torch.Generator | None = None) -> torch.Tensor:
        image = decode_image(self.paths[index], size=self.size, grayscale=self.grayscale, resize=True)
        return torch.from_numpy(np.ascontiguousarray(image))
