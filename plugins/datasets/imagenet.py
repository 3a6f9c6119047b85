"""ImageNet-1k (Russakovsky et al., 2015) in its distributed layout, streamed: ``root/train/<wnid>/*.JPEG``
(1,281,167 images of 1,000 classes) and the validation set as the ``test`` split, either sorted into class
folders ``root/val/<wnid>/*.JPEG`` (torchvision's ``ImageNet`` and ``ImageFolder`` layout) or flat
``root/val/*.JPEG`` with Kaggle's ``root/LOC_val_solution.csv`` (``ImageId,PredictionString``, the wnid first).

Classes are the sorted wnids of the train folders (torchvision's order, so its pretrained teachers keep their
class indices). The training images are never held: they are read and decoded one by one in ``[data]
workers`` DataLoader processes, each with the standard per-image augmentation — a random resized crop
(scale 0.08–1, aspect 3/4–4/3, torchvision's ``RandomResizedCrop`` draw for draw) to ``image_size`` and a
horizontal flip with probability ½ — drawn from a generator the host seeds from (seed, epoch, index), so the
batches do not depend on the number of workers. ``train_augment = "center"`` decodes them as the test
images instead (and the batched crop/flip of ``crop_padding``/``hflip`` applies). Test images: the shorter
side resized to ``image_size / test_crop`` (256 for 224), the centre ``image_size`` square cropped; the
split is held in memory as uint8 (7.5 GB at 224: set ``cache_dir`` to share one copy per machine, or
``test_limit``). An empty class folder, a missing split or an unreadable image is a one-line ``DataError``.

``test_list = "robustbench"`` evaluates on RobustBench's ImageNet test set instead (Croce et al., 2021): the
5,000 validation images of its published list (``robustbench/helper_files/imagenet_test_image_ids.txt``,
read from the installed ``robustbench`` extra), in the list's order; with ``image_size = 224`` and
``test_crop = 0.875`` each is its ``Res256Crop224`` (``Resize(256)``, ``CenterCrop(224)``), the protocol of its
leaderboard (with ε = 4/255 and AutoAttack standard). A path instead names a list file of the same format
(``<wnid>/<file name>`` a line). A listed image missing from ``val/`` is one line naming it.
"""

from __future__ import annotations

import csv
import hashlib
import math
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import Field

from igdm_kit.errors import DataError
from igdm_kit.interfaces import AddedLater, DatasetInfo, DatasetPlugin, ImageSource, RecipePath

from .cache import cached_split
from .common import ImageOptions, PathTable, class_folders, decode_image, list_images, make_info

SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)
KAGGLE_LABELS = "LOC_val_solution.csv"


class ResizedImageOptions(ImageOptions):
    """Images of any size, resized: the options ``imagenet`` shares with ``webdataset``."""

    image_size: int = Field(224, ge=8, le=1024, description="side of the square images the model sees")
    train_augment: Literal["random-resized-crop", "center"] = Field(
        "random-resized-crop", description="per training image: a random resized crop and flip (the standard "
                                           "ImageNet recipe), or the test images' centre crop")
    test_crop: float = Field(0.875, gt=0, le=1, description="test images: the centre crop's share of the "
                                                            "resized shorter side (0.875: 224 of 256)")
    test_transform: Annotated[Literal["resize-crop", "bicubic-resize-crop", "resize", "crop"], AddedLater()] = Field(
        "resize-crop", description="test images: resize the shorter side to image_size / test_crop and crop the "
                                   "centre (bilinear; RobustBench's Res256Crop224), the same bicubic "
                                   "(BicubicRes256Crop224), resize to image_size × image_size (Res224), or crop "
                                   "the centre without resizing (Crop288)")


class ImageNetOptions(ResizedImageOptions):
    test_list: Annotated[str, RecipePath(keywords=("robustbench", "all")), AddedLater()] | None = Field(
        None, min_length=1, description="evaluate on the validation images of a list: \"robustbench\" (its 5,000, "
                                        "from the robustbench extra) or the path of a file of <wnid>/<file name> "
                                        "lines (relative to the recipe file); \"all\" or unset: all of val/")


class ImageNet(DatasetPlugin):
    description = "ImageNet-1k: root/train/<wnid>/*.JPEG, root/val/<wnid>/ or val/ + LOC_val_solution.csv; streamed"
    Options = ImageNetOptions

    def _folder(self, name: str) -> Path:
        folder = Path(self.options.root) / name
        if not folder.is_dir():
            raise DataError(f"ImageNet folder {str(folder)!r} does not exist",
                            f"extract ILSVRC2012's train/<wnid>/ and val/ under {self.options.root!r} (as "
                            "torchvision's ImageNet or the Kaggle archive lay them out)")
        return folder

    def classes(self) -> list[str]:
        return class_folders(self._folder("train"), "ImageNet train folder",
                             "it holds one folder per wnid, e.g. train/n01440764/*.JPEG")

    def check(self) -> None:
        self.classes()
        self._folder("val")

    def info(self) -> DatasetInfo:
        o = self.options
        center = o.train_augment == "center"
        return make_info(o, num_classes=len(self.classes()), in_channels=3, image_size=o.image_size,
                         crop_padding=0, hflip=center, class_names=self.classes())

    def files(self, split: str) -> tuple[list[Path], list[int]]:
        wnids = self.classes()
        index = {w: i for i, w in enumerate(wnids)}
        if split == "train":
            return self._class_folders(self._folder("train"), index, every_class=True)
        val = self._folder("val")
        kaggle = Path(self.options.root) / KAGGLE_LABELS
        if kaggle.is_file() and not any(p.is_dir() for p in val.iterdir()):
            paths, labels = _kaggle_val(val, kaggle, index)
        else:
            paths, labels = self._class_folders(val, index, every_class=False)
        if self.options.test_list in (None, "all"):
            return paths, labels
        return select_listed(paths, labels, read_test_list(self.options.test_list), val, index)

    @staticmethod
    def _class_folders(folder: Path, index: dict[str, int], *, every_class: bool) -> tuple[list[Path], list[int]]:
        paths, labels = [], []
        for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if sub.name not in index:
                raise DataError(f"class folder {str(sub)!r} is not a train class",
                                "train/ and val/ must hold the same wnids")
            files = list_images(sub)
            if not files and every_class:
                raise DataError(f"ImageNet class folder {str(sub)!r} holds no images",
                                "re-extract that class's archive, or remove the folder (it would be a class "
                                "the model never sees)")
            paths += files
            labels += [index[sub.name]] * len(files)
        if not paths:
            raise DataError(f"ImageNet folder {str(folder)!r} holds no images",
                            f"sort the images into <wnid>/ folders, or put Kaggle's {KAGGLE_LABELS} beside it")
        return paths, labels

    def load(self, split: Literal["train", "test"]) -> tuple[torch.Tensor, torch.Tensor]:
        paths, labels = self.files(split)
        o = self.options
        key = {"image_size": o.image_size, "test_crop": o.test_crop}
        if o.test_transform != "resize-crop":  # the default's key as it was: caches written before stay valid
            key["test_transform"] = o.test_transform
        if o.test_list not in (None, "all"):  # a list: its images in its order (the fingerprint sorts the files)
            key["test_order"] = hashlib.sha256("\n".join(map(str, paths)).encode()).hexdigest()
        crop = test_transform(o.image_size, o.test_crop, o.test_transform)
        return cached_split(o.cache_dir, "imagenet", split, key, paths, lambda: (
            _decode_all(paths, o.image_size, crop), np.asarray(labels, dtype=np.int64)))

    def source(self, split: Literal["train", "test"]) -> ImageNetSource | None:
        if split != "train":
            return None  # the test split is held (see the module's docstring)
        paths, labels = self.files("train")
        o = self.options
        return ImageNetSource(paths, labels, o.image_size, o.test_crop, o.train_augment == "random-resized-crop",
                              o.test_transform)


class ImageNetSource(ImageSource):
    """Training images decoded one at a time; with ``augments`` each one randomly resized-cropped and flipped
    from the generator the host gives it."""

    def __init__(self, paths: list[Path], labels: list[int], size: int, test_crop: float, augments: bool,
                 test_kind: str = "resize-crop") -> None:
        self.paths, self.size, self.test_crop, self.augments = PathTable(paths), size, test_crop, augments
        self.test_kind = test_kind
        self.labels = torch.as_tensor(labels, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, index: int, generator: torch.Generator | None = None) -> torch.Tensor:
        if generator is None or not self.augments:
            transform = test_transform(self.size, self.test_crop, self.test_kind)
        else:
            transform = random_transform(self.size, generator)
        image = decode_image(self.paths[index], size=self.size, resize=True, transform=transform)
        return torch.from_numpy(np.ascontiguousarray(image))


def test_transform(size: int, crop: float, kind: str = "resize-crop"):
    """The test images' transform, each torchvision's on PIL images (which calls PIL as here; written out so
    the dataset needs no torchvision): ``resize-crop`` and ``bicubic-resize-crop`` are ``Resize(round(size /
    crop))`` (bilinear or bicubic; the longer side truncated as it does) and ``CenterCrop(size)`` (its
    offsets rounded as it does), the pipeline ImageNet models are judged with; ``resize`` is ``Resize((size,
    size))``; ``crop`` is ``CenterCrop(size)`` alone, an image smaller than ``size`` padded with black as
    torchvision pads it."""
    from PIL import Image

    if kind == "resize":
        return lambda img: img.resize((size, size), Image.BILINEAR)
    if kind == "crop":
        return lambda img: _center_crop(img, size)
    method = Image.BICUBIC if kind == "bicubic-resize-crop" else Image.BILINEAR

    def apply(img):
        w, h = img.size
        short = max(size, round(size / crop))
        if w <= h:
            nw, nh = short, int(short * h / w)
        else:
            nw, nh = int(short * w / h), short
        return _center_crop(img.resize((nw, nh), method), size)
    return apply


def center_transform(size: int, crop: float):
    """``test_transform``'s default: resize the shorter side to ``size / crop`` (bilinear), crop the centre."""
    return test_transform(size, crop)


def _center_crop(img, size: int):
    """torchvision's ``CenterCrop(size)`` of a PIL image: first padded with black to at least size × size
    (left/top getting the smaller half), then the centre cut out with its offsets rounded."""
    from PIL import Image

    w, h = img.size
    if w < size or h < size:
        pw, ph = max(size, w), max(size, h)
        padded = Image.new(img.mode, (pw, ph))
        padded.paste(img, ((size - w) // 2 if size > w else 0, (size - h) // 2 if size > h else 0))
        img, (w, h) = padded, (pw, ph)
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def random_transform(size: int, g: torch.Generator):
    """torchvision's ``RandomResizedCrop(size, SCALE, RATIO)`` then ``RandomHorizontalFlip()``, drawing
    from ``g`` in their order (so ``torch.manual_seed(s)`` + torchvision gives the same image as ``g`` seeded
    with s)."""
    def apply(img):
        from PIL import Image

        top, left, h, w = resized_crop_box(img.size[0], img.size[1], g)
        img = img.crop((left, top, left + w, top + h)).resize((size, size), Image.BILINEAR)
        if float(torch.rand(1, generator=g)) < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return img
    return apply


def resized_crop_box(width: int, height: int, g: torch.Generator) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random crop covering SCALE of the area at an aspect ratio in RATIO
    (log-uniform); after 10 misses the centre crop at the nearest allowed ratio (torchvision's rule)."""
    area = width * height
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(10):
        target = area * float(torch.empty(1).uniform_(SCALE[0], SCALE[1], generator=g))
        aspect = math.exp(float(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=g)))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,), generator=g))
            left = int(torch.randint(0, width - w + 1, size=(1,), generator=g))
            return top, left, h, w
    ratio = width / height
    if ratio < min(RATIO):
        w, h = width, int(round(width / min(RATIO)))
    elif ratio > max(RATIO):
        h, w = height, int(round(height * max(RATIO)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _decode_all(paths: list[Path], size: int, transform) -> np.ndarray:
    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    for i, p in enumerate(paths):
        out[i] = decode_image(p, size=size, resize=True, transform=transform)
    return out


def _kaggle_val(val: Path, labels_file: Path, index: dict[str, int]) -> tuple[list[Path], list[int]]:
    paths, labels = [], []
    try:
        with open(labels_file, newline="") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {str(labels_file)!r} ({type(exc).__name__})", "re-download it") from None
    for n, row in enumerate(rows[1:], 2):
        wnid = row[1].split()[0] if len(row) >= 2 and row[1].split() else None
        if wnid not in index:
            raise DataError(f"{str(labels_file)!r} line {n} names no train class: {','.join(row)[:60]!r}",
                            "the labels do not belong to this train folder")
        path = val / f"{row[0]}.JPEG"
        if not path.is_file():
            raise DataError(f"validation image {str(path)!r} listed in {labels_file.name} is missing",
                            "re-extract the validation archive")
        paths.append(path)
        labels.append(index[wnid])
    order = sorted(range(len(paths)), key=lambda i: paths[i].name)  # the file names' order, as sorted folders
    return [paths[i] for i in order], [labels[i] for i in order]



ROBUSTBENCH_LIST = "helper_files/imagenet_test_image_ids.txt"


def read_test_list(which) -> list[str]:
    """The ``<wnid>/<file name>`` entries of RobustBench's list (``"robustbench"``) or of a list file."""
    if str(which) == "robustbench":
        import importlib.util

        spec = importlib.util.find_spec("robustbench")
        file = Path(spec.origin).parent / ROBUSTBENCH_LIST if spec and spec.origin else None
        if file is None or not file.is_file():
            raise DataError("test_list = \"robustbench\" needs RobustBench's list of its 5,000 ImageNet test "
                            f"images ({ROBUSTBENCH_LIST}), which is not installed",
                            "pip install 'igdm-kit[robustbench]', or give the list file's path")
    else:
        file = Path(which)
        if not file.is_file():
            raise DataError(f"ImageNet test_list {str(file)!r} does not exist",
                            "give a file of <wnid>/<file name> lines, or \"robustbench\"")
    entries = [line.strip() for line in file.read_text().splitlines() if line.strip()]
    bad = next((e for e in entries if e.count("/") != 1), None)
    if bad is not None or not entries:
        raise DataError(f"ImageNet test_list {str(file)!r} has a line {bad!r} that is not <wnid>/<file name>"
                        if bad else f"ImageNet test_list {str(file)!r} is empty",
                        "one validation image a line, e.g. n01440764/ILSVRC2012_val_00000293.JPEG")
    return entries


def select_listed(paths: list[Path], labels: list[int], entries: list[str], val: Path, index: dict[str, int]):
    """The listed images in the list's order, matched by ``<wnid>/<name>`` (class folders) or by name (a flat
    ``val/``, whose wnids come from the labels file and must be the list's)."""
    by_entry = {f"{p.parent.name}/{p.name}": (p, y) for p, y in zip(paths, labels)}
    by_name = {p.name: (p, y) for p, y in zip(paths, labels)}
    chosen = []
    for entry in entries:
        hit = by_entry.get(entry) or (by_name.get(entry.split("/")[1]) if paths[0].parent == val else None)
        if hit is None:
            raise DataError(f"ImageNet test image {entry!r} of the test_list is not in {str(val)!r}",
                            "the validation set is incomplete: extract all of ILSVRC2012's val images")
        if hit[1] != index.get(entry.split("/")[0]):
            raise DataError(f"ImageNet test image {entry!r} of the test_list is labelled another class in "
                            f"{str(val)!r}", "the list and the validation labels disagree: check both files")
        chosen.append(hit)
    return [p for p, _ in chosen], [y for _, y in chosen]
