"""The trainer's built-in subscribers: a progress bar, per-epoch clean accuracy, the metrics log, the log
line, and checkpoints with the training state that ``--resume`` trusts.

Order matters for resume: the metrics row is appended before the training state is written (the state is
what resume trusts; rows newer than it are dropped), so ``MetricsLog`` comes before ``Checkpointer``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..checkpoint import save_model
from ..io import append_jsonl
from ..train_state import save_train_state
from .events import Partial, Subscriber, subscriber_state
from .folder import LAST, METRICS, STATE, RunFolder


class ProgressBar(Subscriber):
    """One Rich progress task for the whole run (rank 0)."""

    def __init__(self, progress: Any, description: str) -> None:
        self.progress, self.description, self.task = progress, description, None

    def on_fit_start(self, trainer, start_epoch, first_step) -> None:
        total = (trainer.epochs - start_epoch + 1) * trainer.steps_per_epoch
        self.task = self.progress.add_task(self.description, total=total)
        if first_step:
            self.progress.update(self.task, advance=first_step)

    def on_step_end(self, trainer, epoch, step) -> None:
        self.progress.update(self.task, advance=1)


class CleanAccuracy(Subscriber):
    """``test_clean_acc`` in each epoch's row: the plain fp32 student on the test split (logged, never used
    to select anything)."""

    def on_epoch_metrics(self, trainer, epoch, row) -> None:
        from .final_eval import clean_accuracy

        p = trainer.parts
        with p.acc.paused():
            row["test_clean_acc"] = clean_accuracy(p.student, *p.test_data, p.device, dist=p.dist)


class MetricsLog(Subscriber):
    """``metrics.jsonl``: one line per epoch (rank 0)."""

    def __init__(self, folder: RunFolder) -> None:
        self.folder = folder

    def on_epoch_end(self, trainer, epoch, row) -> None:
        append_jsonl(self.folder / METRICS, row)


class LogLine(Subscriber):
    """One line per epoch through ``log``: the floats of the row."""

    def __init__(self, log: Callable[[str], None], name: str) -> None:
        self.log, self.name = log, name

    def on_epoch_end(self, trainer, epoch, row) -> None:
        self.log(f"{self.name} epoch {epoch}/{trainer.epochs}: " + ", ".join(
            f"{k}={v:.4g}" for k, v in row.items() if k != "epoch" and isinstance(v, float)))


class Checkpointer(Subscriber):
    """``last.safetensors`` + the training state after every epoch and at a stop request, and a checkpoint
    per epoch with ``train.save_every_epoch`` (rank 0)."""

    def __init__(self, folder: RunFolder, meta: dict[str, Any], *, every_epoch: bool) -> None:
        self.folder, self.meta, self.every_epoch = folder, meta, every_epoch

    def save(self, trainer, epochs_done: int, extra: dict[str, Any] | None = None,
             extra_tensors: dict[str, Any] | None = None) -> None:
        p = trainer.parts
        save_model(self.folder / LAST, p.student, {**self.meta, "epoch": epochs_done})
        extra, extra_tensors = dict(extra or {}), dict(extra_tensors or {})
        if p.acc.scaler is not None:  # fp16: the loss scale is training state too
            extra["grad_scaler"] = p.acc.scaler.state_dict()
        subscriber_state(trainer.subscribers, extra, extra_tensors)
        save_train_state(self.folder / STATE, model=p.student, optimizer=p.optimizer, scheduler=p.scheduler,
                         epoch=epochs_done, extra=extra, extra_tensors=extra_tensors)

    def on_epoch_end(self, trainer, epoch, row) -> None:
        if self.every_epoch:
            save_model(self.folder.epoch_checkpoint(epoch), trainer.parts.student, {**self.meta, "epoch": epoch})
        self.save(trainer, epoch)

    def on_interrupt(self, trainer, epochs_done: int, partial: Partial | None, generator_state) -> None:
        if partial is None:
            self.save(trainer, epochs_done)
        else:
            self.save(trainer, epochs_done, extra={"partial": partial.to_json()},
                      extra_tensors={"gen_state": generator_state})
