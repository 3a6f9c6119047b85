"""Shift contracts (Table 9): a ``Shift`` gives shifted evaluation sets (``ShiftedSet``) and threat shifts
(``ThreatVariant``), seeing a ``ShiftContext``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from igdm_kit.interfaces.data import DatasetInfo
from igdm_kit.interfaces.evaluation import Threat
from igdm_kit.interfaces.options import NoOptions, Options

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch


@dataclass(frozen=True)
class ShiftedSet:
    """One evaluation set under a dataset shift: a corruption at a severity, or a natural variant of the
    test set. ``load()`` returns (images float [0, 1] NCHW of the dataset's shape, labels int64 in the
    dataset's classes); it runs only when the set is evaluated, so a shift may list many sets cheaply."""

    key: str  # unique among the shift's sets, e.g. "gaussian_noise-3" or "cifar10.1"
    label: str
    #: "corruption" or "natural": Table 9 averages each group, then both
    group: str
    load: Any
    #: the sets one accuracy of the summary averages over (a corruption's severities share one family)
    family: str = ""
    severity: int | None = None


@dataclass(frozen=True)
class ThreatVariant:
    """One threat shift: an evaluation attack (a name or a table, as in ``[eval] attacks``) run under a
    threat model the model was not trained for, on the in-distribution test set."""

    key: str
    label: str
    attack: Any
    threat: Threat


class ShiftContext(Protocol):
    """What a shift sees (implemented in ``igdm_kit._evaluation.shifts``): the dataset being evaluated, its test
    images (after ``--limit``), the seed, the model's own threat model, and a way to warn."""

    dataset: str
    info: DatasetInfo
    x: torch.Tensor
    y: torch.Tensor
    seed: int
    threat: Threat
    #: evaluate at most this many images per set (``--limit`` / ``eval.limit``; None: all); a loader may
    #: read only that many, the host cuts every set to it anyway
    limit: int | None

    def warn(self, message: str) -> None: ...


class Shift:
    """A distribution or threat shift, registered by ``register_shifts`` and named in ``[eval] shifts``.

    ``sets(ctx)`` lists the shifted evaluation sets (dataset shifts: corruptions, natural variants);
    ``threats(ctx)`` the threat shifts (attacks under other threat models). A shift implements one or
    both. ``sets`` checks that the files it needs exist and raises a one-line ``DataError`` naming the
    expected path otherwise; the images themselves are read by each set's ``load``.
    """

    Options: ClassVar[type[Options]] = NoOptions
    description: ClassVar[str] = ""
    #: Python packages the shift needs at run time, and the line that installs them (``recipe check`` and
    #: ``run`` report a missing one before training, by importing it)
    requires: ClassVar[tuple[str, ...]] = ()
    install: ClassVar[str] = ""

    def __init__(self, options: Options) -> None:
        self.options = options

    def sets(self, ctx: ShiftContext) -> list[ShiftedSet]:
        return []

    def threats(self, ctx: ShiftContext) -> list[ThreatVariant]:
        return []
