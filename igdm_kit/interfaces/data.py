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


class DatasetPlugin:
    """A dataset: ``info()`` describes it, ``load(split)`` returns (images float [0,1] NCHW, labels int64)."""

    Options: ClassVar[type[Options]] = NoOptions
    description: ClassVar[str] = ""

    def __init__(self, options: Options) -> None:
        self.options = options

    def info(self) -> DatasetInfo:
        raise NotImplementedError

    def load(self, split: Literal["train", "test"]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def check(self) -> None:
        """Raise the one-line ``DataError`` that ``load`` would raise for missing files, without reading or
        downloading anything (files a ``download`` option would fetch are not missing). ``igdm-kit recipe
        check`` warns with it. The default checks nothing (data that ships with a package)."""
