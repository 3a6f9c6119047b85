"""A decoded split kept as one memory-mapped uint8 file (``cache_dir`` of the image datasets).

The first load decodes the dataset's files and writes the split once, atomically (``igdm_kit.files``), under
a lock that makes every other process on the machine wait for it; every later load — each rank of a
``torchrun``, each run of a sweep — maps the file instead of decoding: the pages are the kernel's page cache,
held once per machine however many processes read them, and only the pages a process touches count
towards its resident memory.

Layout: ``MAGIC`` (8 bytes), the header's length (8 bytes, little-endian), the header (JSON), zeros up to a
multiple of 4096, the images (N×C×H×W uint8), the labels (N int64, little-endian). The header holds what was
decoded (``key``: dataset, split, the options that change pixels), the source files' fingerprint (each
file's path, size and modification time), the shape and a BLAKE2b checksum of the images and labels.

Before use the file is checked: a cache of other sources (files changed, added, removed) is stale and is
rebuilt; a file that is not one (foreign magic, unreadable header, wrong size, checksum mismatch) is refused
with a one-line ``DataError`` naming it — delete it and the next load rebuilds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from igdm_kit.errors import DataError
from igdm_kit.files import atomic_write

MAGIC = b"IGDMU8\x00\x01"
FORMAT = "igdm-kit/u8-cache/1"
ALIGN = 4096
_HEADER_MAX = 1 << 20

Build = Callable[[], tuple[np.ndarray, np.ndarray]]


def cached_split(cache_dir: str | None, name: str, split: str, key: dict, sources: Sequence[Path],
                 build: Build) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images, int64 labels) of a split: ``build()`` without a ``cache_dir``, else the memory-mapped cache
    file of (``name``, ``split``, ``key``), written from ``build()`` when missing or stale (``sources``: the
    files ``build`` reads)."""
    if cache_dir is None:
        images, labels = build()
        return torch.from_numpy(np.ascontiguousarray(images)), torch.as_tensor(labels, dtype=torch.long)
    # the sources' folder is part of the name: two copies of a dataset never take turns over one file
    where = os.path.commonpath([str(Path(s).resolve()) for s in sources]) if sources else ""
    key = {"dataset": name, "split": split, "sources": where, **key}
    path = Path(cache_dir) / f"{name}-{split}-{_digest(key)[:16]}.u8"
    source = fingerprint(sources)
    with _locked(path):
        found = open_cache(path, key, source)
        if found is None:
            images, labels = build()
            write_cache(path, key, source, images, labels)
            found = open_cache(path, key, source)
    if found is None:  # pragma: no cover - written and read back under the lock
        raise DataError(f"data cache {str(path)!r} could not be read back", "check the disk")
    return found


def fingerprint(sources: Sequence[Path]) -> str:
    """sha256 of each source file's path, size and modification time (in a fixed order): a file changed,
    added or removed gives another fingerprint without reading any file's contents."""
    h = hashlib.sha256()
    for p in sorted(str(s) for s in sources):
        st = os.stat(p)
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def write_cache(path: Path, key: dict, source: str, images: np.ndarray, labels: np.ndarray) -> None:
    images = np.ascontiguousarray(images)
    labels = np.ascontiguousarray(labels, dtype="<i8")
    if images.dtype != np.uint8 or images.ndim != 4 or labels.shape != (images.shape[0],):
        raise TypeError(f"a cache holds N×C×H×W uint8 images and N labels, not {images.dtype} {images.shape} "
                        f"and {labels.shape}")
    header = {"format": FORMAT, "key": key, "source": source, "shape": list(images.shape),
              "images_blake2b": _checksum(images), "labels_blake2b": _checksum(labels)}
    head = json.dumps(header, sort_keys=True).encode()
    start = _data_start(len(head))

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(MAGIC + struct.pack("<Q", len(head)) + head)
            fh.write(b"\0" * (start - fh.tell()))
            fh.write(memoryview(images).cast("B"))
            fh.write(memoryview(labels).cast("B"))

    atomic_write(path, write)


def open_cache(path: Path, key: dict, source: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The cache's (images mapped from the file, labels), or None when it is missing or of other sources;
    a ``DataError`` when the file is not a whole cache."""
    if not path.is_file():
        return None
    header, start = _read_header(path)
    if header.get("key") != key or header.get("source") != source:
        return None  # stale: another decoding or other source files; the caller rebuilds it
    shape = header.get("shape")
    if not (isinstance(shape, list) and len(shape) == 4 and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise _corrupt(path, f"its header has shape {shape!r}")
    n_pixels = int(np.prod(shape))
    size = path.stat().st_size
    if size != start + n_pixels + 8 * shape[0]:
        raise _corrupt(path, f"it holds {size} bytes, its header says {start + n_pixels + 8 * shape[0]}")
    # copy-on-write mapping: the pages are the page cache's, shared by every process, until one writes
    images = np.memmap(path, dtype=np.uint8, mode="c", offset=start, shape=tuple(shape))
    labels = np.fromfile(path, dtype="<i8", count=shape[0], offset=start + n_pixels)
    if _checksum(images) != header.get("images_blake2b") or _checksum(labels) != header.get("labels_blake2b"):
        raise _corrupt(path, "its checksum does not match its contents")
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


def _read_header(path: Path) -> tuple[dict, int]:
    with open(path, "rb") as fh:
        lead = fh.read(len(MAGIC) + 8)
        if len(lead) < len(MAGIC) + 8 or lead[:len(MAGIC)] != MAGIC:
            raise _corrupt(path, "it does not start as an igdm-kit data cache")
        (length,) = struct.unpack("<Q", lead[len(MAGIC):])
        if length > _HEADER_MAX:
            raise _corrupt(path, f"its header claims {length} bytes")
        raw = fh.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _corrupt(path, "its header is not readable") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise _corrupt(path, f"its format is not {FORMAT!r}")
    return header, _data_start(length)


def _data_start(header_length: int) -> int:
    return -(-(len(MAGIC) + 8 + header_length) // ALIGN) * ALIGN


def _checksum(a: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    flat = a.reshape(-1).view(np.uint8)
    for i in range(0, flat.shape[0], 1 << 26):  # 64 MiB at a time: no second copy of a large set
        h.update(memoryview(np.ascontiguousarray(flat[i:i + (1 << 26)])))
    return h.hexdigest()


def _digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def _corrupt(path: Path, why: str) -> DataError:
    return DataError(f"data cache {str(path)!r} is not usable: {why}",
                     "delete the file; the next load rebuilds it from the dataset's files")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock beside the cache file: one process on the machine builds it, the others wait."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path.with_name(path.name + ".lock"), "a")  # noqa: SIM115 - held for the block
    except OSError as exc:
        raise DataError(f"cannot use the data cache folder {str(path.parent)!r} ({exc.strerror or exc})",
                        "set cache_dir in [data] to a writable folder, or remove it") from None
    with fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
