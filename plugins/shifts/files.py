"""Dataset shifts read from files in their published layouts, when the user has them (no downloads):

* ``corruption-files`` — CIFAR-10-C / CIFAR-100-C (Hendrycks & Dietterich, ICLR 2019):
  ``<root>/CIFAR-10-C/<corruption>.npy``, uint8 (5·n, 32, 32, 3), severities 1–5 in blocks of n rows, and
  ``labels.npy`` (5·n,);
* ``cifar10.1`` — CIFAR-10.1 (Recht et al., ICML 2019): ``cifar10.1_v6_data.npy`` uint8 (2000, 32, 32, 3)
  and ``cifar10.1_v6_labels.npy`` in ``<root>/cifar-10.1/`` (or ``<root>/`` itself), as OODRobustBench;
* ``cinic10`` — CINIC-10's test split (Darlow et al., 2018): ``<root>/CINIC-10/test/<class>/*.png``, classes
  matched to the model's by name, by default only its ImageNet images (files not named ``cifar10-*``);
* ``folder`` — any folder of class sub-folders named as the model's classes, resized to its image size.

A missing file is one line naming the path expected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from igdm_kit.errors import DataError
from igdm_kit.interfaces import Options, Shift, ShiftedSet

from .corruptions import COMMON

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
C_FOLDERS = {"cifar10": "CIFAR-10-C", "cifar100": "CIFAR-100-C"}


def _need(path: Path, what: str, hint: str) -> Path:
    if not path.exists():
        raise DataError(f"{what} not found: expected {str(path)!r}", hint)
    return path


def _read_npy(path: Path, *, labels: bool) -> np.ndarray:
    """A published ``.npy`` file, checked as a whole before its data is touched: the header (bounded by
    numpy's reader) must describe a plain array of integers — uint8 N×H×W×C images or 1-d labels — whose
    bytes the file holds; it is then memory-mapped, never unpickled. Anything else is the one-line DataError.
    """
    what = f"{'labels' if labels else 'images'} file {str(path)!r}"
    hint = "the file is damaged or not the published one; download it again"
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)  # numpy bounds the header's size
            offset, size = f.tell(), path.stat().st_size
    except Exception as exc:  # noqa: BLE001 — text, truncated or garbled headers raise several kinds
        raise DataError(f"{what} is not a .npy array file ({type(exc).__name__})", hint) from None
    ndim = 1 if labels else 4
    if dtype.hasobject or dtype.kind not in ("iu" if labels else "u") or (not labels and dtype.itemsize != 1) \
            or len(shape) != ndim:
        expected = "1-d integer labels" if labels else "uint8 N×H×W×C images"
        raise DataError(f"{what} holds a {len(shape)}-d {dtype} array, not {expected}", hint)
    need = int(np.prod(shape, dtype=np.float64) * dtype.itemsize)  # float: a hostile shape overflows int64
    if need > size - offset:
        raise DataError(f"{what} claims {shape} ({need:,} bytes) but holds {size - offset:,} bytes", hint)
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{what} cannot be read ({type(exc).__name__})", hint) from None


def _images(arr: np.ndarray, ctx, what: str):
    """uint8 N×H×W×C (published .npy layout) → float [0, 1] N×C×H×W, checked against the model's shape."""
    import torch

    i = ctx.info
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[1:] != (i.image_size, i.image_size, i.in_channels):
        raise DataError(f"{what} holds {arr.dtype} images of shape {tuple(arr.shape[1:])}, the model takes "
                        f"{i.image_size}×{i.image_size}×{i.in_channels} uint8",
                        "these files belong to another dataset; evaluate a model of that dataset")
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2))).float().div_(255.0)


def _labels(arr: np.ndarray, n: int, ctx, what: str):
    import torch

    arr = np.asarray(arr).astype(np.int64).reshape(-1)
    if arr.shape[0] != n or (arr.size and (arr.min() < 0 or arr.max() >= ctx.info.num_classes)):
        raise DataError(f"{what} has {arr.shape[0]} labels for {n} images, or labels outside "
                        f"0..{ctx.info.num_classes - 1}", "the files are not of this dataset, or are corrupt")
    return torch.from_numpy(arr)


class CorruptionFiles(Shift):
    description = "CIFAR-10-C / CIFAR-100-C: the published corruption files (<corruption>.npy, labels.npy)"

    class Options(Options):
        root: str = Field("data", description="folder holding CIFAR-10-C/ or CIFAR-100-C/")
        folder: str | None = Field(None, description="sub-folder (default CIFAR-10-C for cifar10, "
                                                     "CIFAR-100-C for cifar100)")
        corruptions: list[str] = Field(default_factory=lambda: list(COMMON), min_length=1,
                                       description="file names without .npy (default: the 15 common)")
        severities: list[int] = Field(default_factory=lambda: [1, 2, 3, 4, 5], min_length=1,
                                      description="severities 1–5 (the files' five blocks)")

        @field_validator("severities")
        @classmethod
        def _severities(cls, v):
            bad = [s for s in v if not 1 <= s <= 5]
            if bad:  # a block index outside the file: -1 would read severity 4, 0 and 6 nothing
                raise ValueError(f"severities are integers 1 to 5, not {', '.join(map(str, bad))}")
            return v

    def sets(self, ctx):
        o = self.options
        folder = o.folder or C_FOLDERS.get(ctx.dataset)
        if folder is None:
            raise DataError(f"no published corruption files are known for dataset {ctx.dataset!r}",
                            "set folder = \"...\" in the shift, or use the computed 'corruptions'")
        base = Path(o.root) / folder
        hint = (f"download {folder}.tar (Hendrycks & Dietterich; zenodo records 2535967 / 3555552) and "
                f"extract it into {o.root!r}, or use the computed 'corruptions' shift")
        labels_path = _need(base / "labels.npy", folder, hint)
        files = {c: _need(base / f"{c}.npy", folder, hint) for c in o.corruptions}
        return [ShiftedSet(key=f"{c}-{s}", label=f"{c.replace('_', ' ')} {s}", group="corruption", family=c,
                           severity=s, load=lambda p=p, s=s: self._load(p, labels_path, s, ctx))
                for c, p in files.items() for s in sorted(set(o.severities))]

    def _load(self, path: Path, labels_path: Path, severity: int, ctx):
        data = _read_npy(path, labels=False)
        labels = _read_npy(labels_path, labels=True)
        if data.shape[0] % 5 or data.shape[0] != labels.shape[0]:
            raise DataError(f"{str(path)!r} has {data.shape[0]} images for {labels.shape[0]} labels",
                            "the published files hold 5 severity blocks of the test set each")
        n = data.shape[0] // 5
        block = slice((severity - 1) * n, severity * n)
        if ctx.limit is not None:
            block = slice(block.start, block.start + min(n, ctx.limit))
        x = _images(np.asarray(data[block]), ctx, repr(str(path)))
        return x, _labels(labels[block], x.shape[0], ctx, repr(str(labels_path)))


class CIFAR10_1(Shift):
    description = "CIFAR-10.1 (Recht et al., 2019): cifar10.1_v6_data.npy + _labels.npy"

    class Options(Options):
        root: str = Field("data", description="folder holding cifar-10.1/ (or the .npy files)")
        version: Literal["v6", "v4"] = Field("v6", description="the release (v6: 2,000 images)")

    def sets(self, ctx):
        if ctx.info.num_classes != 10:
            raise DataError(f"CIFAR-10.1 has CIFAR-10's 10 classes, the model {ctx.info.num_classes}",
                            "use it for CIFAR-10 models only")
        v, root = self.options.version, Path(self.options.root)
        names = (f"cifar10.1_{v}_data.npy", f"cifar10.1_{v}_labels.npy")
        base = root if (root / names[0]).exists() else root / "cifar-10.1"
        data, labels = (_need(base / n, "CIFAR-10.1", "download it from the CIFAR-10.1 repository "
                                                     "(datasets/) into that folder") for n in names)

        def load():
            x = _images(np.asarray(_read_npy(data, labels=False)), ctx, repr(str(data)))
            return x, _labels(np.asarray(_read_npy(labels, labels=True)), x.shape[0], ctx, repr(str(labels)))

        return [ShiftedSet(key=f"cifar10.1-{v}", label=f"CIFAR-10.1 {v}", group="natural",
                           family=f"cifar10.1-{v}", load=load)]


class _Folder(Shift):
    """Images in class sub-folders, matched to the model's classes by name."""

    def _class_names(self, ctx) -> tuple[str, ...]:
        return ctx.info.class_names or (CIFAR10_CLASSES if ctx.info.num_classes == 10 else ())

    def _files(self, base: Path, ctx, keep=lambda p: True) -> list[tuple[Path, int]]:
        from igdm_kit_plugins.datasets.common import list_images

        names = self._class_names(ctx)
        index = {n: i for i, n in enumerate(names)}
        per_class = []
        for sub in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if sub.name not in index:
                raise DataError(f"class folder {str(sub)!r} is not one of the model's classes",
                                "known: " + (", ".join(names) or "none (the dataset names no classes)"))
            per_class.append([(p, index[sub.name]) for p in list_images(sub) if keep(p)])
        files = [f for group in _round_robin(per_class) for f in group]  # balanced when --limit cuts it
        if not files:
            raise DataError(f"{str(base)!r} holds no images in class sub-folders", "e.g. <folder>/cat/0001.png")
        return files

    def _load(self, files, ctx, resize: bool):
        import torch

        from igdm_kit_plugins.datasets.common import read_images

        if ctx.limit is not None:
            files = files[:ctx.limit]
        i = ctx.info
        imgs = read_images([p for p, _ in files], size=i.image_size, grayscale=i.in_channels == 1,
                           resize=resize)
        return torch.from_numpy(imgs).float().div_(255.0), torch.tensor([c for _, c in files], dtype=torch.long)


def _round_robin(groups: list[list]) -> list[list]:
    """One of each class in turn: [[a1, b1, c1], [a2, b2, c2], ...]."""
    out, k = [], 0
    while any(k < len(g) for g in groups):
        out.append([g[k] for g in groups if k < len(g)])
        k += 1
    return out


class CINIC10(_Folder):
    description = "CINIC-10's test split (Darlow et al., 2018): CINIC-10/test/<class>/*.png"

    class Options(Options):
        root: str = Field("data", description="folder holding CINIC-10/")
        imagenet_only: bool = Field(True, description="skip CINIC's images taken from CIFAR-10 (cifar10-*)")

    def sets(self, ctx):
        base = _need(Path(self.options.root) / "CINIC-10" / "test", "CINIC-10",
                     "download CINIC-10 (Edinburgh DataShare 10283/3192) and extract it there")
        keep = (lambda p: not p.name.startswith("cifar10-")) if self.options.imagenet_only else (lambda p: True)
        files = self._files(base, ctx, keep)
        return [ShiftedSet(key="cinic10", label="CINIC-10", group="natural", family="cinic10",
                           load=lambda: self._load(files, ctx, resize=False))]


class Folder(_Folder):
    description = "any image folder of the model's classes: <root>/<class>/* (resized to the model's size)"

    class Options(Options):
        root: str = Field(..., description="folder of class sub-folders")
        label: str = Field("folder", min_length=1, description="the set's name in tables")

    def sets(self, ctx):
        name = self.options.label
        base = _need(Path(self.options.root), f"image folder {name!r}", "set root to a folder of <class>/ sub-folders")
        files = self._files(base, ctx)
        return [ShiftedSet(key=name, label=name, group="natural", family=name,
                           load=lambda: self._load(files, ctx, resize=True))]
