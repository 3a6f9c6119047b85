"""What the image datasets share: their options, the DatasetInfo they report, and careful file reading.

Every dataset returns images as uint8 NCHW tensors (pixel k means k/255; the host converts each batch to
float32 [0, 1] on the device, so the data costs 1 byte a pixel) and int64 labels; normalization (mean/std) is
only *reported* in ``DatasetInfo`` so the engine can put it inside the model. Train-time augmentation
(random crop with ``crop_padding`` and horizontal flip, Appendix B.1: padding 4 for 32×32, 8 for 64×64,
none for SVHN) is also only declared here; the engine applies it.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from igdm_kit.errors import DataError, RecipeError
from igdm_kit.interfaces import DatasetInfo, Options, PathOption

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


class ImageOptions(Options):
    """Options every image dataset takes."""

    root: PathOption = Field("data", description="folder holding the dataset's files (in a recipe: relative "
                             "to the recipe file; default: data in the working directory)")
    crop_padding: int | None = Field(
        None, ge=0, le=64, description="random-crop padding in pixels during training (default: the "
                                       "dataset's, e.g. 4 for 32×32 images, 8 for 64×64, 0 for SVHN)")
    hflip: bool | None = Field(None, description="random horizontal flips during training (default: the "
                                                 "dataset's; off for SVHN, whose flipped digits change)")
    mean: tuple[float, ...] | None = Field(
        None, description="per-channel mean applied inside the model (default: none, the model sees [0, 1])")
    std: tuple[float, ...] | None = Field(None, description="per-channel std applied inside the model")
    cache_dir: PathOption | None = Field(
        None, exclude=True,  # where this machine keeps a copy, not what is trained: not in the recipe's digest
        description="folder for a memory-mapped uint8 copy of each decoded split, written once and shared by "
                    "every process on the machine (rebuilt when the dataset's files change); default: none")

    @model_validator(mode="after")
    def _mean_std_together(self):
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        return self


class DownloadOptions(ImageOptions):
    download: bool = Field(False, description="download the files into root when they are missing "
                                              "(needs network access)")


def make_info(options: ImageOptions, *, num_classes: int, in_channels: int, image_size: int,
              crop_padding: int, hflip: bool, class_names: Sequence[str] = ()) -> DatasetInfo:
    """The DatasetInfo of a dataset, with the recipe's overrides applied."""
    for key in ("mean", "std"):
        value = getattr(options, key)
        if value is not None and len(value) != in_channels:
            raise RecipeError(f"data.{key} has {len(value)} values but the images have {in_channels} "
                              f"channel(s)", f"give one {key} value per channel", path=f"data.{key}")
    return DatasetInfo(
        num_classes=num_classes, in_channels=in_channels, image_size=image_size,
        mean=options.mean, std=options.std,
        crop_padding=crop_padding if options.crop_padding is None else options.crop_padding,
        hflip=hflip if options.hflip is None else options.hflip,
        class_names=tuple(class_names),
    )


def check_labels(labels: np.ndarray, num_classes: int, what: str) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{what} has labels outside 0..{num_classes - 1} "
                        f"(found {int(labels.min())}..{int(labels.max())})",
                        "the file is not the dataset it is named as, or is corrupt; re-download it")


def class_folders(folder: Path, what: str, hint: str) -> list[str]:
    """The class sub-folders of ``folder`` (hidden ones skipped), sorted by name; none is a one-line DataError
    (``what`` names the folder, ``hint`` says what it holds)."""
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise DataError(f"{what} {str(folder)!r} has no class folders", hint)
    return names


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (hidden files skipped), sorted for a stable order."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)


#: The most pixels an image file may hold, judged from its header before decoding (8192² ≈ 67 MP: every
#: photo dataset's images fit; PIL's own bomb limit is 179 MP, and a decoded RGB image of it takes 0.5 GB).
MAX_IMAGE_PIXELS = 8192 * 8192
#: How much longer than wide (or wide than long) an image resized on its shorter side may be: a 1×1,000,000
#: PNG of 1 KB would otherwise become a 32×32,000,000 image (3 GB) before its centre is cropped.
MAX_ASPECT = 64


class PathTable:
    """Many file paths held as one byte buffer and its offsets, not as Python objects: a DataLoader worker
    forked from the process that holds it shares its pages (a list of a million ``Path`` objects would be
    copied into every worker page by page as their reference counts change)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        encoded = [os.fsencode(p) for p in paths]
        self.offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=self.offsets[1:])
        self.blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> Path:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        return Path(os.fsdecode(self.blob[self.offsets[i]:self.offsets[i + 1]].tobytes()))


def read_images(paths: Sequence[Path], *, size: int, grayscale: bool = False,
                resize: bool = False) -> np.ndarray:
    """Decode images into a uint8 (N, C, size, size) array (``decode_image`` each, in threads: PIL releases
    the GIL while decoding)."""
    channels = 1 if grayscale else 3
    out = np.empty((len(paths), channels, size, size), dtype=np.uint8)

    def load(i: int) -> None:
        out[i] = decode_image(paths[i], size=size, grayscale=grayscale, resize=resize)

    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(load, range(len(paths))):
            pass
    return out


def decode_image(path: Path, *, size: int, grayscale: bool = False, resize: bool = False,
                 transform: Callable[[Any], Any] | None = None, data: bytes | None = None) -> np.ndarray:
    """One image file as a uint8 (C, size, size) array: converted to RGB (or grey); with ``resize`` the
    shorter side scaled to ``size`` (bilinear) and the centre cropped (or, given, ``transform`` applied to the
    PIL image: it returns one of size×size), without it an image of another size is a DataError. The file's
    pixel count (and, resized, its aspect ratio) is judged from its header before anything is decoded, and
    whatever a decoder raises on a damaged or hostile file (truncated, not an image,
    a decompression bomb, an oversized text chunk, ...) is the one-line DataError naming it. ``data``: the
    file's bytes, read from elsewhere (a member of a tar shard); ``path`` then only names it in errors."""
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path if data is None else io.BytesIO(data)) as img:  # reads the header only
            _check_header(path, img.size, size=size, resize=resize)
            img = img.convert("L" if grayscale else "RGB")  # decodes
            if transform is not None:
                img = transform(img)
            elif img.size != (size, size):
                if not resize:
                    raise DataError(f"image {str(path)!r} is {img.size[0]}×{img.size[1]}, expected "
                                    f"{size}×{size}", "the dataset's images all have that size; "
                                                      "re-extract the archive")
                img = _resize_center_crop(img, size)
            arr = np.asarray(img, dtype=np.uint8)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 — PIL's decoders raise ValueError, SyntaxError, struct.error,
        # IndexError, MemoryError, DecompressionBombError, ... on damaged files: each is this one line
        detail = str(exc).splitlines()[0][:120] if str(exc) else ""
        raise DataError(f"cannot read image {str(path)!r} ({type(exc).__name__}{': ' + detail if detail else ''})",
                        "remove or replace the damaged file") from None
    return arr[None] if grayscale else arr.transpose(2, 0, 1)


def _check_header(path: Path, wh: tuple[int, int], *, size: int, resize: bool) -> None:
    w, h = wh
    if w < 1 or h < 1 or w * h > MAX_IMAGE_PIXELS:
        raise DataError(f"image {str(path)!r} is {w}×{h} = {w * h:,} pixels by its header, more than the "
                        f"{MAX_IMAGE_PIXELS:,} an image may hold" if w * h else
                        f"image {str(path)!r} is {w}×{h} pixels by its header",
                        "remove the file or shrink it; it is damaged or built to exhaust memory")
    if resize and (w, h) != (size, size) and max(w, h) > MAX_ASPECT * min(w, h):
        raise DataError(f"image {str(path)!r} is {w}×{h}: resized to {size} on its shorter side it would be "
                        f"{max(w, h) * size // min(w, h):,} pixels long",
                        f"images at most {MAX_ASPECT} times longer than wide are resized; crop or remove it")


def _resize_center_crop(img, size: int):
    from PIL import Image

    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


@contextlib.contextmanager
def removed_on_failure(root: str | Path) -> Iterator[None]:
    """A download into ``root`` that fails leaves nothing behind: the files and folders it created there
    (and ``root`` itself, with any parent it had to create) are removed again."""
    root = Path(root).absolute()
    top = root
    while not top.parent.exists() and top.parent != top:
        top = top.parent  # the outermost folder the download would create
    created = not top.exists()
    before = set(root.iterdir()) if root.is_dir() else set()
    try:
        yield
    except BaseException:
        if created:
            shutil.rmtree(top, ignore_errors=True)
        elif root.is_dir():
            for new in set(root.iterdir()) - before:
                shutil.rmtree(new, ignore_errors=True) if new.is_dir() else new.unlink(missing_ok=True)
        raise
