"""CIFAR-10 and CIFAR-100 (Krizhevsky, 2009), the paper's main benchmarks (Section 4.1, Tables 2–3).

Files are torchvision's on-disk layout — the extracted ``cifar-10-python.tar.gz`` (``cifar-10-batches-py/``
with ``data_batch_1``…``data_batch_5``, ``test_batch``, ``batches.meta``) or ``cifar-100-python.tar.gz``
(``cifar-100-python/`` with ``train``, ``test``, ``meta``) under ``root``. ``download = true`` lets
torchvision fetch and checksum them. The batches are Python pickles; they are read here with an unpickler
that only rebuilds numpy arrays, lists and strings, so a tampered file cannot run code. (torchvision's own
reader checks MD5 sums on every load instead; ``verify = true`` does the same here.)

Images come back as 50,000 train / 10,000 test uint8 3×32×32 tensors (k/255; 150 MB for the train split)
with the fine labels. No normalization by default (the toolkit's models see [0, 1], as most AD codebases
do); training augmentation is a random crop with 4 pixels of padding and horizontal flips (Appendix B.1).
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import Field

from igdm_kit.errors import DataError
from igdm_kit.interfaces import DatasetInfo, DatasetPlugin

from .cache import cached_split
from .common import DownloadOptions, check_labels, make_info, removed_on_failure


def _numpy_global(name: str):
    try:  # numpy ≥ 2 moved numpy.core to numpy._core (the old path still imports, with a warning)
        from numpy._core import multiarray
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray
    return getattr(multiarray, name)


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays, dicts, lists, numbers and strings — and refuses any other global."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): lambda: _numpy_global("_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"): lambda: _numpy_global("_reconstruct"),
        ("numpy.core.multiarray", "scalar"): lambda: _numpy_global("scalar"),
        ("numpy._core.multiarray", "scalar"): lambda: _numpy_global("scalar"),
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
        ("_codecs", "encode"): lambda: codecs.encode,  # how protocol-2 pickles store bytes
    }

    def find_class(self, module: str, name: str):
        factory = self._ALLOWED.get((module, name))
        if factory is None:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return factory()


def read_batch(path: Path) -> dict:
    """One CIFAR batch file as a dict, read without running code; any failure is one DataError line."""
    try:
        with open(path, "rb") as fh:
            entry = _ArrayUnpickler(fh, encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        raise DataError(f"{str(path)!r} is not a CIFAR batch file ({exc})",
                        "re-download the dataset (set download = true in [data])") from None
    except (EOFError, ValueError, TypeError, IndexError, AttributeError, OSError) as exc:
        raise DataError(f"{str(path)!r} is truncated or corrupt ({type(exc).__name__})",
                        "re-download the dataset (set download = true in [data])") from None
    if not isinstance(entry, dict):
        raise DataError(f"{str(path)!r} is not a CIFAR batch file (it holds a {type(entry).__name__})",
                        "re-download the dataset")
    return entry


class CIFAROptions(DownloadOptions):
    verify: bool = Field(False, description="check the files' MD5 sums against torchvision's (catches "
                                            "corrupted copies; reads every file once more)")


class _CIFAR(DatasetPlugin):
    Options = CIFAROptions

    title: ClassVar[str]
    folder: ClassVar[str]
    archive: ClassVar[str]
    files: ClassVar[dict[str, tuple[str, ...]]]
    meta_file: ClassVar[str]
    meta_key: ClassVar[str]
    label_key: ClassVar[str]
    num_classes: ClassVar[int]

    @property
    def base(self) -> Path:
        return Path(self.options.root) / self.folder

    def _torchvision_class(self):
        from torchvision import datasets

        return datasets.CIFAR10 if self.num_classes == 10 else datasets.CIFAR100

    def info(self) -> DatasetInfo:
        names: tuple[str, ...] = ()
        meta = self.base / self.meta_file
        if meta.is_file():
            names = tuple(str(n) for n in read_batch(meta).get(self.meta_key, ()))
        return make_info(self.options, num_classes=self.num_classes, in_channels=3, image_size=32,
                         crop_padding=4, hflip=True, class_names=names)

    def _missing(self, paths: list[Path]) -> DataError | None:
        missing = [p for p in paths if not p.is_file()]
        if not missing:
            return None
        expected = ", ".join(self.files["train"] + self.files["test"])
        return DataError(
            f"{self.title} not found: expected {expected} in {str(self.base.resolve())!r} "
            f"({missing[0].name} is missing)",
            f"set download = true in [data] on a machine with network access, or extract "
            f"{self.archive} (https://www.cs.toronto.edu/~kriz/cifar.html) into {self.options.root!r}")

    def check(self) -> None:
        error = self._missing([self.base / n for n in self.files["train"] + self.files["test"]])
        if error is not None and not self.options.download:
            raise error

    def _ensure_files(self, split: str) -> list[Path]:
        paths = [self.base / name for name in self.files[split]]
        if self._missing(paths) is not None and self.options.download:
            self._download()
        error = self._missing(paths)
        if error is not None:
            raise error
        if self.options.verify:
            self._verify(paths)
        return paths

    def _download(self) -> None:
        try:
            with removed_on_failure(self.options.root):  # a failed download leaves nothing behind
                self._torchvision_class()(root=self.options.root, train=True, download=True)
        except Exception as exc:  # noqa: BLE001 - network and disk errors come in many types
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(f"downloading {self.title} into {self.options.root!r} failed: {first}",
                            f"check the network, or place the extracted {self.archive} there") from None

    def _verify(self, paths: list[Path]) -> None:
        from torchvision.datasets.utils import check_integrity

        cls = self._torchvision_class()
        sums = dict(cls.train_list + cls.test_list)
        for path in paths:
            if not check_integrity(str(path), sums[path.name]):
                raise DataError(f"{str(path)!r} does not have the MD5 sum of the official {self.title} file",
                                "re-download it (delete the folder and set download = true in [data])")

    def load(self, split: Literal["train", "test"]) -> tuple[torch.Tensor, torch.Tensor]:
        paths = self._ensure_files(split)
        return cached_split(self.options.cache_dir, self.folder, split, {}, paths, lambda: self._read(paths))

    def _read(self, paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
        images, labels = [], []
        for path in paths:
            entry = read_batch(path)
            data, targets = entry.get("data"), entry.get(self.label_key)
            if not isinstance(data, np.ndarray) or targets is None:
                raise DataError(f"{str(path)!r} lacks the 'data' or {self.label_key!r} entry",
                                f"it is not a {self.title} batch; re-download the dataset")
            targets = np.asarray(targets, dtype=np.int64)
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 \
                    or data.shape[0] != targets.shape[0]:
                raise DataError(f"{str(path)!r} holds data of shape {tuple(data.shape)} ({data.dtype}) for "
                                f"{targets.shape[0]} labels, expected N×3072 uint8",
                                f"it is not a {self.title} batch; re-download the dataset")
            check_labels(targets, self.num_classes, repr(str(path)))
            images.append(data.reshape(-1, 3, 32, 32))  # rows are channel-major: R plane, G, B
            labels.append(targets)
        return np.concatenate(images), np.concatenate(labels)


class CIFAR10(_CIFAR):
    description = "CIFAR-10 (torchvision's cifar-10-batches-py layout under root)"
    title = "CIFAR-10"
    folder = "cifar-10-batches-py"
    archive = "cifar-10-python.tar.gz"
    files = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
    meta_file, meta_key, label_key, num_classes = "batches.meta", "label_names", "labels", 10


class CIFAR100(_CIFAR):
    description = "CIFAR-100, fine labels (torchvision's cifar-100-python layout under root)"
    title = "CIFAR-100"
    folder = "cifar-100-python"
    archive = "cifar-100-python.tar.gz"
    files = {"train": ("train",), "test": ("test",)}
    meta_file, meta_key, label_key, num_classes = "meta", "fine_label_names", "fine_labels", 100
