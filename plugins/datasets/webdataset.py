"""WebDataset tar shards (Aizman et al., 2020, "High performance I/O for large scale deep learning"): the
format large image sets are kept in on network storage. Each shard is a plain POSIX tar whose consecutive
members sharing a key form one sample — ``000123.jpg`` and ``000123.cls`` (the label as decimal text) — as
``webdataset.TarWriter`` writes them. Shards are named by glob or by webdataset's brace notation
(``train-{000000..000146}.tar``, relative to ``root``), read in the order named.

The training split is streamed: each shard's members are indexed once (their headers only, plus the few
bytes of each label), then every image is read with one positioned read and decoded in ``[data] workers``
DataLoader processes. webdataset's own pipeline reads shards sequentially with a shuffle buffer; it is not
used here because igdm-kit's order is an exact permutation of the whole split from (seed, epoch), sharded
across ranks and resumable at any step, which needs random access (one seek per image: cheap on local and
network file systems alike). Per-image augmentation and the test split are as for ``imagenet``
(``train_augment``, ``test_crop``; set ``test_crop = 1`` and ``train_augment = "center"`` with
``crop_padding``/``hflip`` for small images). Compressed shards (``.tar.gz``) cannot be read at random and are
refused; an unreadable shard, a sample without an image or a label, or a damaged image is a one-line
``DataError`` naming the shard and the key.
"""

from __future__ import annotations

import glob
import os
import re
import tarfile
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from igdm_kit.errors import DataError
from igdm_kit.interfaces import DatasetInfo, DatasetPlugin, ImageSource, PathOption

from .cache import cached_split
from .common import decode_image, make_info
from .imagenet import ResizedImageOptions, random_transform, test_transform

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "ppm", "bmp")
INSTALL = "pip install 'igdm-kit[webdataset]'"


def expand(pattern: str, root: str) -> list[Path]:
    """The shard files one pattern names, in order: brace notation expanded by webdataset's own
    ``braceexpand``, each result globbed (sorted) relative to ``root``."""
    if "{" in pattern:
        try:
            from braceexpand import braceexpand
        except Exception:  # noqa: BLE001 — absent or broken: the same one line
            raise ValueError(f"brace notation in {pattern!r} needs the braceexpand package: {INSTALL}") from None
        names = list(braceexpand(pattern))
    else:
        names = [pattern]
    out: list[Path] = []
    for name in names:
        full = Path(root) / name
        out += [Path(p) for p in sorted(glob.glob(str(full)))] if glob.has_magic(name) else [full]
    return out


class WebDatasetOptions(ResizedImageOptions):
    root: PathOption = Field("data", description="folder the shard patterns are relative to (in a recipe: "
                                                 "relative to the recipe file)")
    train: list[str] = Field(..., min_length=1, description="training shards: globs or brace patterns, "
                                                            "e.g. [\"train-{000000..000146}.tar\"]")
    test: list[str] = Field(..., min_length=1, description="test shards, the same way")
    num_classes: int | None = Field(None, ge=2, le=100_000, description="number of classes (labels 0..n-1); "
                                    "or give class_names")
    class_names: PathOption | None = Field(None, description="text file, one class name per line (line i "
                                           "names label i; e.g. ImageNet's wnids): recorded in checkpoints and "
                                           "checked against a teacher's")
    label_key: str = Field("cls", pattern=r"^[a-z0-9_.]+$", description="extension of each sample's label "
                                                                       "member (decimal text)")

    @field_validator("train", "test")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        for p in value:
            if "{" in p:
                expand(p, ".")  # the extra is there, and the braces parse
        return value

    @model_validator(mode="after")
    def _classes(self):
        if (self.num_classes is None) == (self.class_names is None):
            raise ValueError("give num_classes or class_names (one of them)")
        return self


class WebDataset(DatasetPlugin):
    description = "WebDataset tar shards (<key>.jpg + <key>.cls), streamed by random access"
    Options = WebDatasetOptions

    def classes(self) -> list[str]:
        o = self.options
        if o.class_names is None:
            return [str(i) for i in range(o.num_classes)]
        try:
            names = [line.strip() for line in Path(o.class_names).read_text().splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read class names file {str(o.class_names)!r} ({type(exc).__name__})",
                            "give a UTF-8 text file with one class name per line") from None
        if len(names) < 2 or len(set(names)) != len(names):
            raise DataError(f"class names file {str(o.class_names)!r} holds {len(names)} names "
                            f"({len(set(names))} distinct)", "one distinct name per line, at least two")
        return names

    def shards(self, split: str) -> list[Path]:
        patterns = self.options.train if split == "train" else self.options.test
        found = [p for pattern in patterns for p in expand(pattern, self.options.root)]
        missing = [p for p in found if not p.is_file()]
        if not found or missing:
            raise DataError(f"WebDataset {split} shard {str(missing[0]) if missing else patterns[0]!r} does not "
                            "exist" if missing else f"WebDataset {split} shards {patterns} match no file",
                            f"check data.{split} and data.root ({self.options.root})")
        return found

    def check(self) -> None:
        self.classes()
        self.shards("train")
        self.shards("test")

    def info(self) -> DatasetInfo:
        o = self.options
        names = self.classes()
        return make_info(o, num_classes=len(names), in_channels=3, image_size=o.image_size, crop_padding=0,
                         hflip=o.train_augment == "center", class_names=names if o.class_names else ())

    def load(self, split: Literal["train", "test"]) -> tuple[torch.Tensor, torch.Tensor]:
        shards = self.shards(split)
        o = self.options
        key = {"image_size": o.image_size, "test_crop": o.test_crop, "label_key": o.label_key}
        if o.test_transform != "resize-crop":  # the default's key as it was: caches written before stay valid
            key["test_transform"] = o.test_transform
        return cached_split(o.cache_dir, "webdataset", split, key, shards, lambda: self._decode_all(shards))

    def _decode_all(self, shards: list[Path]) -> tuple[np.ndarray, np.ndarray]:
        source = ShardSource(shards, self.options, augments=False)
        out = np.empty((len(source), 3, self.options.image_size, self.options.image_size), dtype=np.uint8)
        for i in range(len(source)):
            out[i] = source.read(i).numpy()
        return out, source.labels.numpy()

    def source(self, split: Literal["train", "test"]) -> ShardSource | None:
        if split != "train":
            return None  # the test split is held, as imagenet's
        return ShardSource(self.shards("train"), self.options,
                           augments=self.options.train_augment == "random-resized-crop")


class ShardSource(ImageSource):
    """Every sample of some shards, indexed as (shard, byte offset, size) of its image member; read with
    ``os.pread`` (no shared file position, so forked workers may share the descriptors)."""

    def __init__(self, shards: list[Path], options: WebDatasetOptions, *, augments: bool) -> None:
        self.shards, self.size, self.augments = [str(s) for s in shards], options.image_size, augments
        self.test_crop, self.test_kind = options.test_crop, options.test_transform
        self.keys: list[str] = []
        where, labels = [], []
        for number, shard in enumerate(self.shards):
            for key, image, label in index_shard(shard, options.label_key):
                self.keys.append(key)
                where.append((number, *image))
                labels.append(label)
        if not where:
            raise DataError(f"WebDataset shards {self.shards[0]!r}... hold no samples",
                            "each sample is <key>.jpg (or .png, ...) and <key>.cls in one tar")
        self.where = np.asarray(where, dtype=np.int64)
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.where)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fds": {}}

    def _read_bytes(self, index: int) -> bytes:
        shard, offset, size = (int(v) for v in self.where[index])
        if self._pid != os.getpid():  # a worker: its own descriptors
            self._fds, self._pid = {}, os.getpid()
        if shard not in self._fds:
            self._fds[shard] = os.open(self.shards[shard], os.O_RDONLY)
        data = os.pread(self._fds[shard], size, offset)
        if len(data) != size:
            raise DataError(f"WebDataset shard {self.shards[shard]!r} is shorter than its index says "
                            f"(sample {self.keys[index]!r})", "the shard changed while training; restart")
        return data

    def read(self, index: int, generator: torch.Generator | None = None) -> torch.Tensor:
        if generator is None or not self.augments:
            transform = test_transform(self.size, self.test_crop, self.test_kind)
        else:
            transform = random_transform(self.size, generator)
        name = Path(f"{self.shards[int(self.where[index][0])]}:{self.keys[index]}")
        image = decode_image(name, size=self.size, resize=True, transform=transform,
                             data=self._read_bytes(index))
        return torch.from_numpy(np.ascontiguousarray(image))


def index_shard(shard: str, label_key: str) -> list[tuple[str, tuple[int, int], int]]:
    """(key, (offset, size) of the image member, label) of each sample in one tar shard, grouped as
    webdataset groups members: consecutive regular files whose names share the part before the first dot
    of the base name; ``__*__`` metadata files skipped."""
    samples: list[tuple[str, tuple[int, int], int]] = []
    try:
        with open(shard, "rb") as fh:
            if fh.read(2) == b"\x1f\x8b":
                raise DataError(f"WebDataset shard {shard!r} is gzip-compressed",
                                "igdm-kit reads shards at random: write them as plain .tar (webdataset's "
                                "TarWriter does unless the name ends in .gz)")
            end = fh.seek(0, os.SEEK_END)
            fh.seek(0)
            with tarfile.open(fileobj=fh, mode="r:") as tar:
                key, members = None, {}
                for m in tar:
                    if m.offset_data + m.size > end:
                        raise DataError(f"WebDataset shard {shard!r} is truncated (member {m.name!r})",
                                        "rewrite the shard")
                    name = m.name
                    if not m.isreg() or ("/" not in name and name.startswith("__") and name.endswith("__")):
                        continue
                    match = re.match(r"^((?:.*/|)[^.]+)[.]([^/]*)$", name)
                    if not match:
                        continue
                    if match.group(1) != key:
                        if key is not None:
                            samples.append(_sample(shard, fh, key, members, label_key))
                        key, members = match.group(1), {}
                    members[match.group(2).lower()] = (m.offset_data, m.size)
                _check_end(shard, fh, tar.offset, end)
                if key is not None:
                    samples.append(_sample(shard, fh, key, members, label_key))
    except DataError:
        raise
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise DataError(f"cannot read WebDataset shard {shard!r} ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:100] if str(exc) else ''})",
                        "the shard is truncated or not a tar file; rewrite it") from None
    return samples


def _check_end(shard: str, fh, offset: int, end: int) -> None:
    """After the last member, tar's end-of-archive marker (two zero blocks, which every writer puts there):
    without it the shard was cut, at a member's boundary too (a sample silently missing)."""
    fh.seek(offset)
    rest = fh.read(min(end - offset, 1 << 20))
    if end - offset < 1024 or end - offset > 1 << 20 or rest.count(0) != len(rest):
        raise DataError(f"WebDataset shard {shard!r} is truncated or has trailing data (no end-of-archive "
                        f"marker after byte {offset})", "rewrite the shard (webdataset's TarWriter, tar or "
                                                        "Python's tarfile write the marker)")


def _sample(shard: str, fh, key: str, members: dict[str, tuple[int, int]],
            label_key: str) -> tuple[str, tuple[int, int], int]:
    image = next((members[k] for k in IMAGE_KEYS if k in members), None)
    if image is None or label_key not in members:
        missing = "image (." + ", .".join(IMAGE_KEYS) + ")" if image is None else f".{label_key} label"
        raise DataError(f"WebDataset sample {key!r} in {shard!r} has no {missing}",
                        "every sample needs an image member and a label member with the same key")
    offset, size = members[label_key]
    fh.seek(offset)
    text = fh.read(size) if size <= 64 else b"(" + str(size).encode() + b" bytes)"
    try:
        label = int(text.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise DataError(f"WebDataset sample {key!r} in {shard!r} has label {text[:20]!r}",
                        f"the .{label_key} member holds the class index as decimal text") from None
    return key, image, label
