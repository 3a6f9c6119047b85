"""What the trainer tells its callbacks (``interfaces.Callback``; the host's own are "subscribers": progress,
metrics log, checkpoints, validation, the best checkpoints, weight averaging, experiment trackers).

A subscriber overrides the events it needs; each receives the ``Trainer`` (its ``parts``, ``metrics``,
the epoch counters and ``step_terms``, the loss terms of the last step) and is called in the order the
subscribers were given. A subscriber with a ``state_key`` keeps part of the training state: the
``Checkpointer`` saves its ``state_dict`` with the optimizer's, and a resumed run gives it back through
``load_state_dict`` before ``on_fit_start``. ``on_run_end`` and ``close`` come from the engine, after the
final evaluation and when the run ends however it ends.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from igdm_kit.interfaces.callbacks import Callback

if TYPE_CHECKING:  # pragma: no cover
    from igdm_kit._storage.run_folder import RunFolder
    from igdm_kit._training.parts import Parts


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


class Subscriber(Callback):
    """The host's own callbacks: built for every run (each decides in ``build`` whether the run needs it)."""

    always_on = True

    def __init__(self) -> None:  # the built-ins take what they need from the RunContext in ``build``
        pass


@dataclass
class RunContext:
    """``interfaces.CallbackContext`` for one run, plus what the host's own callbacks are built from."""

    run_dir: Path
    recipe: dict[str, Any]
    is_main: bool
    log_line: Callable[[str], None]
    #: host-only: the run folder, the training parts, the Rich progress (or None), the weight averages
    folder: RunFolder
    parts: Parts
    progress: Any = None
    ema: Any = None
    swa: Any = None

    def log(self, message: str) -> None:
        self.log_line(message)


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
