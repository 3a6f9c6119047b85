"""The host's own training callbacks, registered through ``register_callbacks`` like a third party's: a
progress bar, per-epoch clean accuracy, the finiteness guard of the weights, the metrics log, the log line,
and checkpoints with the training state that ``--resume`` trusts (and, from their modules, the weight
average, validation, the best checkpoints and the trackers).

Order matters (``interfaces.Order``): ``FiniteWeights`` comes first, so non-finite weights are never logged
as an epoch nor saved; the metrics row is written before the training state (the state is what resume
trusts; rows newer than it are dropped), so ``MetricsLog`` comes before ``Checkpointer``; the best
checkpoints and the trackers follow the state that covers them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from igdm_kit._runtime.progress import clock
from igdm_kit._storage.checkpoint import save_model
from igdm_kit._storage.run_folder import LAST, STATE, RunFolder
from igdm_kit._storage.train_state import save_train_state
from igdm_kit._training.events import Partial, RunContext, Subscriber, subscriber_state
from igdm_kit.errors import TrainingError
from igdm_kit.interfaces.callbacks import Order


class ProgressBar(Subscriber):
    """One Rich progress task for the whole run (rank 0)."""

    order = Order.PROGRESS

    @classmethod
    def build(cls, options, ctx: RunContext) -> ProgressBar | None:
        return cls(ctx.progress, ctx.parts.recipe.name) if ctx.progress is not None and ctx.is_main else None

    def __init__(self, progress: Any, description: str) -> None:
        self.progress, self.description, self.task = progress, description, None

    def on_fit_start(self, trainer, start_epoch, first_step) -> None:
        total = (trainer.epochs - start_epoch + 1) * trainer.steps_per_epoch
        self.task = self.progress.add_task(f"{self.description} training", total=total)
        self.progress.update(self.task, completed=0)  # nothing done yet: a line progress starts its clock now
        if first_step:
            self.progress.update(self.task, advance=first_step)

    def on_step_end(self, trainer, epoch, step) -> None:
        self.progress.update(self.task, advance=1)


class CleanAccuracy(Subscriber):
    """``test_clean_acc`` in each epoch's row: the plain fp32 student on the test split (logged, never used
    to select anything)."""

    order = Order.CLEAN_ACCURACY

    @classmethod
    def build(cls, options, ctx: RunContext) -> CleanAccuracy:
        return cls()

    def on_epoch_metrics(self, trainer, epoch, row) -> None:
        from igdm_kit._training.final_eval import clean_accuracy

        p = trainer.parts
        with p.acc.paused():
            row["test_clean_acc"] = clean_accuracy(p.student, *p.test_data, p.device, dist=p.dist)


def check_weights(model, when: str, hint: str) -> None:
    """Raise ``TrainingError`` if any weight or buffer of ``model`` is NaN or infinite."""
    import torch

    tensors = [(k, v) for k, v in model.state_dict().items() if v.is_floating_point()]
    if not tensors or bool(torch.stack([v.isfinite().all() for _, v in tensors]).all()):
        return
    name, bad = next((k, v) for k, v in tensors if not bool(v.isfinite().all()))
    count = int((~bad.isfinite()).sum())
    raise TrainingError(f"the student's weights are not finite {when} ({name}: {count} of {bad.numel()} "
                        "values)", hint)


class FiniteWeights(Subscriber):
    """Non-finite weights stop the run before the epoch is logged or saved, and before a stop request
    saves them (every rank: the ranks hold the same weights)."""

    order = Order.FINITE

    @classmethod
    def build(cls, options, ctx: RunContext) -> FiniteWeights:
        return cls(ctx.folder)

    def __init__(self, folder: RunFolder) -> None:
        self.folder = folder

    def _hint(self, epochs_done: int) -> str:
        last = (f"the last good checkpoint is {self.folder / LAST} (epoch {epochs_done})" if epochs_done
                else "no checkpoint was saved")
        return f"nothing of this epoch was saved; {last}; lower train.lr or the module's alpha"

    def on_epoch_end(self, trainer, epoch, row) -> None:
        check_weights(trainer.parts.student, f"after epoch {epoch}", self._hint(epoch - 1))

    def on_interrupt(self, trainer, epochs_done: int, partial: Partial | None, generator_state) -> None:
        check_weights(trainer.parts.student, f"when the run was stopped in epoch {epochs_done + 1}",
                      self._hint(epochs_done))


class MetricsLog(Subscriber):
    """``metrics.jsonl``: one line per epoch, the whole file written atomically each time (rank 0)."""

    order = Order.METRICS_LOG

    @classmethod
    def build(cls, options, ctx: RunContext) -> MetricsLog | None:
        return cls(ctx.folder) if ctx.is_main else None

    def __init__(self, folder: RunFolder) -> None:
        self.folder = folder

    def on_epoch_end(self, trainer, epoch, row) -> None:
        self.folder.write_metrics(trainer.metrics)


class LogLine(Subscriber):
    """One line per epoch through ``log``: the floats of the row, the time since training (re)started and
    the ETA of the remaining epochs (at the mean pace of the epochs this process ran)."""

    order = Order.LOG_LINE

    @classmethod
    def build(cls, options, ctx: RunContext) -> LogLine:
        return cls(ctx.log, ctx.parts.recipe.name)

    def __init__(self, log: Callable[[str], None], name: str) -> None:
        self.log, self.name = log, name
        self.t0, self.first = time.perf_counter(), 1

    def on_fit_start(self, trainer, start_epoch, first_step) -> None:
        self.t0, self.first = time.perf_counter(), start_epoch

    def on_epoch_end(self, trainer, epoch, row) -> None:
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / (epoch - self.first + 1) * (trainer.epochs - epoch)
        self.log(f"{self.name} epoch {epoch}/{trainer.epochs}: " + ", ".join(
            f"{k}={v:.4g}" for k, v in row.items() if k != "epoch" and isinstance(v, float))
            + f" · {clock(elapsed)} elapsed · ETA {clock(eta)}")


class Checkpointer(Subscriber):
    """``last.safetensors`` + the training state after every epoch and at a stop request, and a checkpoint
    per epoch with ``train.save_every_epoch`` (rank 0)."""

    order = Order.CHECKPOINT

    @classmethod
    def build(cls, options, ctx: RunContext) -> Checkpointer | None:
        return cls(ctx.folder, ctx.parts.checkpoint_meta(),
                   every_epoch=ctx.parts.recipe.model.train.save_every_epoch) if ctx.is_main else None

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
