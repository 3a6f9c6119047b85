"""The training set as the trainer reads it: held in memory (``MemorySet``) or streamed from a dataset's
``ImageSource`` through torch's ``DataLoader`` and its worker processes (``StreamSet``).

Both give one epoch's batches from the same (seed, epoch) permutation, sharded per rank as
``DistributedSampler`` does (``Dist.shard``), from any step on (a resumed run starts mid-epoch): the indices
of step s are ``order[s·B:(s+1)·B]`` either way, so a streamed set yields the very images the in-memory one
would. Images come as the dataset gives them (uint8); the trainer crops, flips and converts each batch.
A source that augments per image gets a generator seeded from (seed, epoch, index) for each image
(``image_seed``): the same draws whatever the number of workers and whichever worker reads it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from igdm_kit.errors import DataError, IgdmKitError
from igdm_kit.interfaces import DatasetInfo, ImageSource

Batch = tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]  # step, indices, images, labels


def steps_of(order: torch.Tensor, batch_size: int, start: int, steps: int) -> list[torch.Tensor]:
    """The indices of steps ``start``..``steps - 1`` of an epoch's (sharded) order."""
    return [order[s * batch_size:(s + 1) * batch_size] for s in range(start, steps)]


class MemorySet:
    """A training set held as tensors (uint8 or float), indexed per batch."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def labels(self) -> torch.Tensor:
        return self.y

    def take(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[idx.to(self.x.device)], self.y[idx.to(self.y.device)]

    def subset(self, idx: torch.Tensor) -> MemorySet:
        return MemorySet(self.x[idx], self.y[idx])

    def batches(self, order: torch.Tensor, batch_size: int, start: int, steps: int, *, seed: int,
                epoch: int) -> Iterator[Batch]:
        for s, idx in enumerate(steps_of(order, batch_size, start, steps), start):
            yield s, idx, self.x[idx], self.y[idx]


class StreamSet:
    """A training set read image by image from an ``ImageSource`` (``index``: which of its images, in order)
    in ``workers`` DataLoader processes (0: in this process)."""

    def __init__(self, source: ImageSource, info: DatasetInfo, *, index: torch.Tensor | None = None,
                 workers: int = 0, pin_memory: bool = False) -> None:
        self.source, self.info, self.workers, self.pin_memory = source, info, workers, pin_memory
        labels = torch.as_tensor(source.labels, dtype=torch.long)
        self.index = torch.arange(labels.shape[0]) if index is None else index
        self.y = labels[self.index]

    def __len__(self) -> int:
        return int(self.index.shape[0])

    @property
    def labels(self) -> torch.Tensor:
        return self.y

    def take(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images at positions ``idx`` without augmentation (the teacher check's sample), in this process."""
        reader = _Reader(self.source, self.index, self.y, self.info, seed=None, epoch=0)
        x, y, failed = _collate([reader[int(i)] for i in idx])
        if failed is not None:
            raise DataError(*failed)
        return x, y

    def subset(self, idx: torch.Tensor) -> StreamSet:
        return StreamSet(self.source, self.info, index=self.index[idx], workers=self.workers,
                         pin_memory=self.pin_memory)

    def batches(self, order: torch.Tensor, batch_size: int, start: int, steps: int, *, seed: int,
                epoch: int) -> Iterator[Batch]:
        chosen = steps_of(order, batch_size, start, steps)
        reader = _Reader(self.source, self.index, self.y, self.info,
                         seed=seed if self.source.augments else None, epoch=epoch)
        # a generator of its own: the loader's base seed must not be drawn from the global RNG, which the
        # attack's random starts use (a streamed run would otherwise not be the in-memory one)
        own = torch.Generator().manual_seed(image_seed(seed, epoch, -1))
        loader = torch.utils.data.DataLoader(reader, batch_sampler=[i.tolist() for i in chosen],
                                             num_workers=self.workers, collate_fn=_collate,
                                             pin_memory=self.pin_memory, generator=own)
        for s, (idx, batch) in enumerate(zip(chosen, loader, strict=True), start):
            x, y, failed = batch
            if failed is not None:
                raise DataError(*failed)
            yield s, idx, x, y


def image_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one image's own transform in one epoch: a function of (seed, epoch, index) alone."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass
class _Reader(torch.utils.data.Dataset):
    """Position → (image, label, failure) in a worker: a ``DataError`` there comes back as its message and
    hint, raised in the trainer as one line (never a worker's traceback)."""

    source: ImageSource
    index: torch.Tensor
    y: torch.Tensor
    info: DatasetInfo
    seed: int | None
    epoch: int

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def __getitem__(self, pos: int):
        i = int(self.index[pos])
        g = None if self.seed is None else torch.Generator().manual_seed(image_seed(self.seed, self.epoch, i))
        try:
            image = self.source.read(i, g)
            _check_image(image, self.info, i)
        except IgdmKitError as exc:
            return None, self.y[pos], (exc.message, exc.hint)
        return image, self.y[pos], None


def _check_image(image, info: DatasetInfo, i: int) -> None:
    expected = (info.in_channels, info.image_size, info.image_size)
    if not torch.is_tensor(image) or image.dtype != torch.uint8 or tuple(image.shape) != expected:
        what = f"{image.dtype} {tuple(image.shape)}" if torch.is_tensor(image) else type(image).__name__
        raise DataError(f"image {i} of the streamed training set is {what}, expected uint8 {expected}",
                        "a source's read() returns one uint8 C×H×W image of the dataset's image_size")


def _collate(items):
    failed = next((f for _, _, f in items if f is not None), None)
    if failed is not None:
        return torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.long), failed
    return torch.stack([x for x, _, _ in items]), torch.stack([y for _, y, _ in items]), None
