"""Validation during training: a held-out split of the training set, evaluation attacks on it every k
epochs, and the checkpoint that scored best — the test set is never used to choose anything.

* the split itself is ``igdm_kit._training.split``;
* ``Validation`` — in each validated epoch's row: ``val_<attack key>`` for every ``[train.validate]``
  attack and ``val_robust``, the worst case per image over them (robust accuracy), for the student and,
  with ``[train.ema]``, ``val_ema_...`` for its average. Epochs ``start``, ``start + every``, ... and the
  last are validated.
* ``BestCheckpoint`` — ``best.safetensors`` (``best_ema.safetensors``) holds the epoch with the highest
  ``val_<metric>`` so far (the earliest on ties), its epoch and score in its metadata. The rows of
  ``metrics.jsonl`` that the training state covers are the record: a resumed run picks the same epoch, and
  rewrites the file if the process stopped between saving the state and the file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from igdm_kit._recipe.specs import EvalSpec
from igdm_kit._training.events import Subscriber
from igdm_kit.interfaces.callbacks import Order

#: the key of the worst case per image over the validation attacks
ROBUST = "robust"


def validated(epoch: int, epochs: int, start: int, every: int) -> bool:
    """Whether ``epoch`` is validated: ``start``, ``start + every``, ... and the last epoch."""
    return epoch == epochs or (epoch >= start and (epoch - start) % every == 0)


def best_epoch(rows: list[dict[str, Any]], key: str) -> tuple[int, float] | None:
    """(epoch, value) of the row with the largest ``key`` (the earliest on ties), or None."""
    best: tuple[int, float] | None = None
    for row in rows:
        v = row.get(key)
        if isinstance(v, (int, float)) and (best is None or v > best[1]):
            best = (int(row["epoch"]), float(v))
    return best


class Validation(Subscriber):
    """``[train.validate]``: the attacks on the validation split in the rows of validated epochs. ``models``
    are (prefix, the model or None while there is none yet) — the student, and its average."""

    order = Order.VALIDATION

    @classmethod
    def build(cls, options, ctx) -> Validation | None:
        p, ema, swa = ctx.parts, ctx.ema, ctx.swa
        if p.recipe.model.train.validation is None:
            return None
        models = [("", lambda: p.student)] + ([("ema_", lambda: ema.model)] if ema is not None else []) + \
            ([("swa_", lambda: swa.model)] if swa is not None else [])
        return cls(p.recipe.val_specs, p.recipe.model.train.validation, p.val_data, models)

    def __init__(self, specs: list[EvalSpec], settings: Any, data: tuple[torch.Tensor, torch.Tensor],
                 models: list[tuple[str, Callable[[], torch.nn.Module | None]]]) -> None:
        self.specs, self.settings, self.data, self.models = specs, settings, data, models

    def on_epoch_metrics(self, trainer, epoch, row) -> None:
        v = self.settings
        if not validated(epoch, trainer.epochs, v.start, v.every):
            return
        p = trainer.parts
        for prefix, get in self.models:
            model = get()
            if model is not None:
                with p.acc.paused():
                    row.update({f"val_{prefix}{k}": acc for k, acc in self.measure(model, p).items()})

    def measure(self, model: torch.nn.Module, p) -> dict[str, float]:
        """Accuracy (%) under each attack and the worst case, on the split (each rank a shard, counts summed)."""
        from igdm_kit._evaluation.runner import evaluate_report

        x, y = self.data
        n = int(x.shape[0])
        if p.dist.enabled:
            p.dist.sync_buffers(model)  # every rank judges rank 0's model
            x, y = x[p.dist.rank::p.dist.world], y[p.dist.rank::p.dist.world]
        v = self.settings
        report = evaluate_report(model, x, y, attacks=self.specs, batch_size=v.batch_size, eps=v.eps,
                                 threat=v.threat, device=p.device, where="train.validate.attacks")
        counts = {k: float(a.correct) for k, a in report.attacks.items()}
        counts[ROBUST] = float(report.worst.correct)
        if p.dist.enabled:
            counts = dict(zip(counts, p.dist.sum(list(counts.values()), p.device), strict=True))
        return {k: 100.0 * c / n for k, c in counts.items()}


class BestCheckpoint(Subscriber):
    """``path`` holds ``model()`` at the epoch with the highest ``row[key]`` so far (rank 0; after the
    ``Checkpointer``, so the file is written once the state that covers its epoch is saved)."""

    order = Order.BEST

    @classmethod
    def build(cls, options, ctx) -> BestCheckpoint | None:
        from igdm_kit._storage.run_folder import BEST

        p = ctx.parts
        v = p.recipe.model.train.validation
        if v is None or not ctx.is_main:
            return None
        return cls(ctx.folder / BEST, f"val_{v.metric}", p.checkpoint_meta(), lambda: p.student, ctx.log)

    def __init__(self, path: Path, key: str, meta: dict[str, Any], model: Callable[[], torch.nn.Module],
                 log: Callable[[str], None]) -> None:
        self.path, self.key, self.meta, self.model, self.log = path, key, meta, model, log

    def _write(self, epoch: int, value: float) -> None:
        from igdm_kit._storage.checkpoint import save_model

        save_model(self.path, self.model(), {**self.meta, "epoch": epoch,
                                             "selected_by": {"metric": self.key, "value": value,
                                                             "split": "validation"}})

    def on_fit_start(self, trainer, start_epoch, first_step) -> None:
        best = best_epoch(trainer.metrics, self.key)
        if best is None or recorded_epoch(self.path) == best[0]:
            return
        done = trainer.metrics[-1]["epoch"]
        if best[0] == done and first_step == 0:  # stopped after the state of its epoch, before the file
            self._write(*best)
        else:
            self.log(f"warning: {self.path.name} does not hold epoch {best[0]}, the best by {self.key}")

    def on_epoch_end(self, trainer, epoch, row) -> None:
        best = best_epoch(trainer.metrics, self.key)
        if best is not None and best[0] == epoch:
            self._write(*best)


class BestEmaCheckpoint(BestCheckpoint):
    """``best_ema.safetensors``: the weight average at the epoch its validation scored best."""

    @classmethod
    def build(cls, options, ctx) -> BestCheckpoint | None:
        from igdm_kit._storage.run_folder import BEST_EMA

        p, ema = ctx.parts, ctx.ema
        v = p.recipe.model.train.validation
        if v is None or ema is None or not ctx.is_main:
            return None
        return cls(ctx.folder / BEST_EMA, f"val_ema_{v.metric}", p.checkpoint_meta(), lambda: ema.averaged.module,
                   ctx.log)


def recorded_epoch(path: Path) -> int | None:
    """The epoch a checkpoint file says it holds, or None when there is no readable file."""
    from igdm_kit._storage.checkpoint import read_metadata
    from igdm_kit.errors import CheckpointError

    if not path.is_file():
        return None
    try:
        return read_metadata(path).get("epoch")
    except CheckpointError:
        return None
