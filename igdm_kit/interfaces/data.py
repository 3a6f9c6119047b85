"""Dataset contracts: ``DatasetPlugin`` and the ``DatasetInfo`` it describes itself with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal

from igdm_kit.interfaces.options import NoOptions, Options

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch


@dataclass(frozen=True)
class DatasetInfo:
    """What the engine and the models need to know about a dataset."""

    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    #: Train-time augmentation: random-crop padding in pixels (0 = none) and horizontal flip.
    crop_padding: int = 0
    hflip: bool = False
    class_names: tuple[str, ...] = field(default_factory=tuple)


class ImageSource:
    """A split read lazily, image by image (map-style): for data too large to hold, decoded in the
    ``DataLoader`` worker processes of ``[data] workers``.

    ``len(source)`` images; ``labels``, every image's int64 label (cheap: read up front, the host shards and
    splits by them); ``read(index, generator)``, one image as a uint8 C×H×W tensor of the dataset's
    ``image_size`` (pixel k means k/255). The source is pickled to the worker processes: hold paths, not
    open files. A file that cannot be read is a one-line ``DataError`` naming it.

    ``augments``: whether ``read`` applies a random transform of its own to training images (e.g. a random
    resized crop for large images). For those the host passes a ``torch.Generator`` seeded from (seed,
    epoch, index) alone, so an image's transform is the same whichever worker reads it and however many
    there are, and a resumed run sees what an uninterrupted one would; otherwise (and for the test split)
    ``generator`` is None and ``read`` is deterministic. The batched crop/flip of ``DatasetInfo``
    (``crop_padding``, ``hflip``) is applied by the host after either path, on the device.
    """

    augments: ClassVar[bool] = False
    labels: torch.Tensor

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, index: int, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError


class DatasetPlugin:
    """A dataset: ``info()`` describes it, ``load(split)`` returns (images NCHW, labels int64).

    Images are uint8 (pixel k means k/255: what decoded image files hold, 1 byte a pixel) or float in
    [0, 1] (for data that is not k/255, e.g. scikit-learn's digits, k/16). The host keeps uint8 images as
    they are — the training set costs a quarter of its float32 size, on every rank — and converts each
    batch to float32 [0, 1] on the device (``igdm_kit.nn.to_float_images``); models, attacks and ε only
    ever see [0, 1] floats.
    """

    Options: ClassVar[type[Options]] = NoOptions
    description: ClassVar[str] = ""

    def __init__(self, options: Options) -> None:
        self.options = options

    def info(self) -> DatasetInfo:
        raise NotImplementedError

    def load(self, split: Literal["train", "test"]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def source(self, split: Literal["train", "test"]) -> ImageSource | None:
        """The split as an ``ImageSource`` read lazily, or None (the default): the host then holds what
        ``load(split)`` returns. The host streams the training split from a source and gives the same
        batches as the in-memory path would for the same seed (same order, same crop/flip draws)."""
        return None

    def check(self) -> None:
        """Raise the one-line ``DataError`` that ``load`` would raise for missing files, without reading or
        downloading anything (files a ``download`` option would fetch are not missing). ``igdm-kit recipe
        check`` warns with it. The default checks nothing (data that ships with a package)."""
