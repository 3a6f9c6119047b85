"""Model contracts: a model factory (``ModelFactory``) and a teacher loader (``TeacherLoader``) with the
``ArchitectureBuilder`` it receives.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from igdm_kit.interfaces.evaluation import EvalProtocol
from igdm_kit.interfaces.options import Options

if TYPE_CHECKING:  # pragma: no cover - typing only
    from torch import nn


class ModelFactory(Protocol):
    """A registered model: a class with ``Options`` and ``build``.

    ``build(options, num_classes=, in_channels=, image_size=)`` returns the bare network as an
    ``nn.Module`` on normalized inputs; ``igdm_kit.create_model`` wraps it once in
    ``igdm_kit.nn.Classifier`` (normalization by the dataset's mean/std inside the model), so every
    model takes [0, 1] images and its state dict reads ``normalize.*`` + ``net.*``.
    """

    Options: type[Options]

    @classmethod
    def build(cls, options: Any, *, num_classes: int, in_channels: int, image_size: int) -> nn.Module: ...


class ArchitectureBuilder(Protocol):
    """What a teacher loader receives as ``build``: ``build()`` constructs the architecture the recipe
    names (a one-line error when it names none); ``model_name`` is that name, or None. ``num_classes``,
    ``in_channels`` and ``image_size`` are the dataset's: a loader whose file describes its own architecture
    checks them before building it (the host also checks the loaded teacher on one image)."""

    model_name: str | None
    num_classes: int
    in_channels: int
    image_size: int

    def __call__(self) -> nn.Module: ...


class TeacherLoader:
    """A registered teacher loader (subclass it): turns a file on disk into an ``nn.Module`` in eval mode.

    ``load(options, path=, build=)`` where ``build`` is an ``ArchitectureBuilder`` (for loaders that only
    carry weights); returns the model, an ``igdm_kit.nn.Classifier`` (normalization inside).
    ``protocol(options)``: the benchmark protocol the loaded model's published numbers were measured by
    (``igdm-kit eval`` follows it unless told otherwise), or None.
    """

    Options: ClassVar[type[Options]]
    description: ClassVar[str] = ""

    @classmethod
    def load(cls, options: Any, *, path: str, build: ArchitectureBuilder) -> nn.Module:
        raise NotImplementedError

    @classmethod
    def protocol(cls, options: Any) -> EvalProtocol | None:
        return None
