"""Training-callback contract: a ``Callback`` follows the epoch loop (``register_callbacks``).

The host's own bookkeeping (the finiteness check, clean accuracy, the weight average, validation, progress,
the metrics log, the checkpoints, the best checkpoints, the trackers, the log line) is delivered as callbacks
through the same hook; a third party's callback is named in the recipe's ``[train] callbacks``.

Callbacks run in ascending ``order`` (ties by name) in every event. The built-ins sit at the ``Order``
values below, so a callback that keeps state for resume runs before ``CHECKPOINT`` (the default, ``Order.USER``,
does): its state of an epoch is then in the training state saved at that epoch's end.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from igdm_kit.interfaces.options import NoOptions, Options

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch


class Order(IntEnum):
    """Where the built-in callbacks run in each event (lower first)."""

    #: the weights are finite (before anything saves them)
    FINITE = 0
    #: fill the epoch's row: clean accuracy, then the weight average, then validation
    CLEAN_ACCURACY = 100
    AVERAGE = 110
    VALIDATION = 120
    #: the progress bar
    PROGRESS = 200
    #: a third party's callback, unless it says otherwise
    USER = 300
    #: the row to ``metrics.jsonl``
    METRICS_LOG = 400
    #: the training state resume trusts (every callback's ``state_dict`` included) and ``last.safetensors``
    CHECKPOINT = 500
    #: ``best.safetensors``, once the state covering its epoch is saved
    BEST = 600
    #: the experiment trackers, handed only what a saved state covers
    TRACKERS = 700
    #: the epoch's log line
    LOG_LINE = 800


class FitState(Protocol):
    """What a callback sees of the training in each event (implemented by the host's trainer)."""

    #: the student being trained (train mode during the epoch; its ``.grad`` are the last step's in
    #: ``on_step_end``)
    student: torch.nn.Module
    optimizer: torch.optim.Optimizer
    #: one row per finished epoch (what ``metrics.jsonl`` holds)
    metrics: list[dict[str, Any]]
    #: the loss terms of the last step (a mapping read lazily: reading a value waits for the device, which
    #: the training step itself never does; read it only when you use it)
    step_terms: Mapping[str, float]
    epochs: int
    steps_per_epoch: int


class CallbackContext(Protocol):
    """What a callback is built with."""

    #: the run folder (only the main process writes to it)
    run_dir: Path
    #: the recipe as validated, a plain dict (``recipe["train"]["epochs"]``)
    recipe: dict[str, Any]
    #: False on every torchrun rank but 0
    is_main: bool

    def log(self, message: str) -> None:
        """A line for the run's log (printed by the main process)."""


class Callback:
    """A training callback: override the events you need; each does nothing by default.

    ``build(options, ctx)`` makes the callback for one run, or returns None when it has nothing to do in that
    run (a built-in whose recipe section is absent). A callback with ``always_on`` is built for every run;
    any other only when ``[train] callbacks`` names it. A callback with a ``state_key`` keeps part of the
    training state: ``state_dict`` is saved with it and ``load_state_dict`` gives it back on resume, before
    ``on_fit_start``.
    """

    Options: ClassVar[type[Options]] = NoOptions
    description: ClassVar[str] = ""
    order: ClassVar[int] = Order.USER
    always_on: ClassVar[bool] = False
    #: the name of this callback's part of the training state (None: it keeps none)
    state_key: ClassVar[str | None] = None

    @classmethod
    def build(cls, options: Options, ctx: CallbackContext) -> Callback | None:
        return cls(options)  # type: ignore[call-arg]

    def __init__(self, options: Options | None = None) -> None:
        self.options = options

    def state_dict(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(JSON values, tensors) that resuming needs, saved with the training state."""
        return {}, {}

    def load_state_dict(self, values: dict[str, Any], tensors: dict[str, Any]) -> None:
        """What ``state_dict`` returned when the training state was saved (a resumed run)."""

    def on_fit_start(self, trainer: FitState, start_epoch: int, first_step: int) -> None:
        """Before the first step of this process (``first_step`` > 0 when resuming mid-epoch)."""

    def on_epoch_start(self, trainer: FitState, epoch: int) -> None:
        """Before the first step of ``epoch`` (not when a run resumes in the middle of it)."""

    def on_step_end(self, trainer: FitState, epoch: int, step: int) -> None:
        """After the optimizer step of 0-based ``step`` of ``epoch``."""

    def on_epoch_metrics(self, trainer: FitState, epoch: int, row: dict[str, Any]) -> None:
        """The epoch's row of metrics is being built: add entries to ``row`` (e.g. clean accuracy)."""

    def on_epoch_end(self, trainer: FitState, epoch: int, row: dict[str, Any]) -> None:
        """The epoch's row is complete (in ``trainer.metrics``): log it, save checkpoints."""

    def on_interrupt(self, trainer: FitState, epochs_done: int, partial: Any, generator_state: Any) -> None:
        """A stop request: save what resuming needs (``partial`` is None at an epoch boundary)."""

    def on_run_end(self, trainer: FitState, results: dict[str, Any], files: dict[str, Path]) -> None:
        """The final evaluation is done and written (``files``: the checkpoints it judged, by name)."""

    def close(self, ok: bool) -> None:
        """The run ends (``ok`` False: stopped early or failed): release files, processes, connections."""
