"""What the trainer tells its subscribers (progress, metrics log, checkpoints; later validation, trackers).

A subscriber overrides the events it needs; each receives the ``Trainer`` (its ``parts``, ``metrics`` and
the epoch counters) and is called in the order the subscribers were given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import Trainer


@dataclass
class Partial:
    """A stop inside an epoch: the steps done and the running sums, saved with the training state."""

    epoch: int
    step: int
    sums: dict[str, float]
    correct: int
    seen: int

    def to_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step": self.step, "sums": self.sums, "correct": self.correct,
                "seen": self.seen}


class Subscriber:
    """Base of the trainer's subscribers: every event does nothing unless overridden."""

    def on_fit_start(self, trainer: Trainer, start_epoch: int, first_step: int) -> None:
        """Before the first step of this process (``first_step`` > 0 when resuming mid-epoch)."""

    def on_step_end(self, trainer: Trainer, epoch: int, step: int) -> None:
        """After the optimizer step of 0-based ``step`` of ``epoch``."""

    def on_epoch_metrics(self, trainer: Trainer, epoch: int, row: dict[str, Any]) -> None:
        """The epoch's row of metrics is being built: add entries to ``row`` (e.g. clean accuracy)."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, row: dict[str, Any]) -> None:
        """The epoch's row is complete (in ``trainer.metrics``): log it, save checkpoints."""

    def on_interrupt(self, trainer: Trainer, epochs_done: int, partial: Partial | None,
                     generator_state: Any) -> None:
        """A stop request: save what resuming needs (``partial`` is None at an epoch boundary)."""
