"""Optimization contracts: ``OptimizerFactory`` and ``LRSchedule``, built for a ``TrainingPlan``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from igdm_kit.interfaces.options import NoOptions, Options

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch


# -- optimization -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainingPlan:
    """What an optimizer or a learning-rate schedule is built for: the ``[train]`` keys every optimizer
    shares (``lr``, ``weight_decay``; ``momentum``, ``milestones`` and ``lr_decay`` as the defaults of SGD and
    multistep) and the run's length. ``warmup_epochs`` of linear warm-up come before the schedule."""

    lr: float
    momentum: float
    weight_decay: float
    milestones: tuple[int, ...]
    lr_decay: float
    epochs: int
    steps_per_epoch: int
    warmup_epochs: int = 0

    @property
    def schedule_epochs(self) -> int:
        """The epochs the schedule itself covers: those after the warm-up."""
        return self.epochs - self.warmup_epochs


class OptimizerFactory:
    """An optimizer, registered by ``register_optimizers`` and named in ``[train.optimizer] name``.

    ``build(params, plan)`` returns a ``torch.optim.Optimizer`` over ``params`` at ``plan.lr`` with
    ``plan.weight_decay``; its ``state_dict`` must hold tensors and JSON values only (resume saves it
    without pickling).
    """

    Options: ClassVar[type[Options]] = NoOptions
    description: ClassVar[str] = ""

    def __init__(self, options: Options) -> None:
        self.options = options

    def build(self, params: Any, plan: TrainingPlan) -> torch.optim.Optimizer:
        raise NotImplementedError


class LRSchedule:
    """A learning-rate schedule, registered by ``register_schedules`` and named in ``[train.schedule] name``.

    ``build(optimizer, plan)`` returns a ``torch.optim.lr_scheduler`` scheduler for the epochs after the
    warm-up: ``plan.lr`` is its base (where multistep and cosine start, the peak of one-cycle and cyclic),
    its own count starts at 0 when the warm-up ends (which rises to the schedule's first lr), and it covers
    ``plan.schedule_epochs`` epochs (× ``plan.steps_per_epoch`` steps when ``interval`` is ``"step"``). The
    trainer steps it once per epoch, or once per optimizer step with ``interval = "step"``; its
    ``state_dict`` must be JSON values (resume saves it without pickling).
    """

    Options: ClassVar[type[Options]] = NoOptions
    interval: ClassVar[Literal["epoch", "step"]] = "epoch"
    description: ClassVar[str] = ""

    def __init__(self, options: Options) -> None:
        self.options = options

    def build(self, optimizer: torch.optim.Optimizer, plan: TrainingPlan) -> Any:
        raise NotImplementedError
