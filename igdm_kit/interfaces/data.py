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

    def check(self) -> None:
        """Raise the one-line ``DataError`` that ``load`` would raise for missing files, without reading or
        downloading anything (files a ``download`` option would fetch are not missing). ``igdm-kit recipe
        check`` warns with it. The default checks nothing (data that ships with a package)."""
