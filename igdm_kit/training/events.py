"""What the trainer tells its subscribers (progress, metrics log, checkpoints, validation, the best
checkpoints, weight averaging, experiment trackers).

A subscriber overrides the events it needs; each receives the ``Trainer`` (its ``parts``, ``metrics``,
the epoch counters and ``step_terms``, the loss terms of the last step) and is called in the order the
subscribers were given. A subscriber with a ``state_key`` keeps part of the training state: the
``Checkpointer`` saves its ``state_dict`` with the optimizer's, and a resumed run gives it back through
``load_state_dict`` before ``on_fit_start``. ``on_run_end`` and ``close`` come from the engine, after the
final evaluation and when the run ends however it ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

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

    #: the name of this subscriber's part of the training state (None: it keeps none)
    state_key: ClassVar[str | None] = None

    def state_dict(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(JSON values, tensors) that resuming needs, saved with the training state."""
        return {}, {}

    def load_state_dict(self, values: dict[str, Any], tensors: dict[str, Any]) -> None:
        """What ``state_dict`` returned when the training state was saved (a resumed run)."""

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

    def on_run_end(self, trainer: Trainer, results: dict[str, Any], files: dict[str, Path]) -> None:
        """The final evaluation is done and written (``files``: the checkpoints it judged, by name)."""

    def close(self, ok: bool) -> None:
        """The run ends (``ok`` False: stopped early or failed): release files, processes, connections."""


SUBSCRIBER_PREFIX = "sub."


def subscriber_state(subscribers: list[Subscriber], extra: dict[str, Any], tensors: dict[str, Any]) -> None:
    """Add the state of every subscriber with a ``state_key`` to a training state's ``extra`` and tensors."""
    for s in subscribers:
        if s.state_key is not None:
            values, named = s.state_dict()
            extra.setdefault("subscribers", {})[s.state_key] = values
            tensors.update({f"{SUBSCRIBER_PREFIX}{s.state_key}.{k}": v for k, v in named.items()})


def restore_subscribers(subscribers: list[Subscriber], extra: dict[str, Any], tensors: dict[str, Any]) -> None:
    """Give each subscriber its part of a saved training state (``load_train_state``'s ``meta``)."""
    saved = extra.get("subscribers", {})
    for s in subscribers:
        if s.state_key is not None and s.state_key in saved:
            prefix = f"{SUBSCRIBER_PREFIX}{s.state_key}."
            s.load_state_dict(saved[s.state_key],
                              {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
