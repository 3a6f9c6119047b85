"""Experiment trackers (``[log]``): the ``Trackers`` subscriber feeds every registered ``interfaces.Tracker``
the recipe names — and ``jsonl``, always — the manifest, per-step and per-epoch metrics, the final results
and, with ``[log] artifacts``, the checkpoint files.

Records are buffered and handed to the trackers right after the training state that covers them is saved
(the subscriber comes after the ``Checkpointer``): a run killed and resumed logs each step once, never a
step it trained again. Each tracker's run id is part of the training state, so a resumed run continues the
same tracker run. Rank 0 only.
"""

from __future__ import annotations

import json
import math
from typing import Any

from igdm_kit._evaluation.report import EvalReport
from igdm_kit._plugins.manager import always_on
from igdm_kit._storage.run_folder import MANIFEST, RunFolder
from igdm_kit._training.events import Subscriber
from igdm_kit.errors import IgdmKitError
from igdm_kit.factories import create_tracker
from igdm_kit.interfaces import TrackerRun
from igdm_kit.interfaces.callbacks import Order


def tracker_names(recipe) -> list[str]:
    """The recipe's trackers, then the always-on ones (``jsonl``): a record in ``log.jsonl`` has reached every
    other tracker."""
    always = always_on("logger")
    return [*(t for t in recipe.model.log.trackers if t not in always), *always]


def flat_results(results: dict[str, Any]) -> dict[str, float]:
    """``results.json`` as ``{"test/<checkpoint>/<attack key>": accuracy, ...}`` (GD/GC as ``test/.../gd``)."""
    reports = results.get("checkpoints") or {results.get("checkpoint", "last"): results}
    out: dict[str, float] = {}
    for name, rep in reports.items():
        report = EvalReport.from_json(rep)
        for key, a in (report.rows() if "worst" in rep else report.attacks).items():
            out[f"test/{name}/{key}"] = a.accuracy
        for key, v in (rep.get("alignment") or {}).items():
            out[f"test/{name}/{key}"] = float(v)
        if isinstance(rep.get("epoch"), int):
            out[f"test/{name}/epoch"] = float(rep["epoch"])
    return out


class Trackers(Subscriber):
    """Every tracker of the run, started at the beginning of training and finished at the end."""

    state_key = "trackers"
    order = Order.TRACKERS

    @classmethod
    def build(cls, options, ctx) -> Trackers | None:
        return cls(ctx.folder, ctx.parts.recipe) if ctx.is_main else None

    def __init__(self, folder: RunFolder, recipe) -> None:
        self.folder, self.recipe = folder, recipe
        self.every = recipe.model.log.step_every
        self.trackers = [(name, create_tracker(name, recipe.components.get(f"log.{name}")))
                         for name in tracker_names(recipe)]
        self.ids: dict[str, str | None] = {}
        self.pending: list[tuple[dict[str, float], int, int | None]] = []
        self.open = False

    # -- resume --------------------------------------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return {"ids": self.ids}, {}

    def load_state_dict(self, values, tensors) -> None:
        self.ids = dict(values.get("ids", {}))

    # -- events --------------------------------------------------------------------------------------------
    def on_fit_start(self, trainer, start_epoch, first_step) -> None:
        config = json.loads((self.folder / MANIFEST).read_text())
        done = (start_epoch - 1) * trainer.steps_per_epoch + first_step
        for name, tracker in self.trackers:
            run = TrackerRun(folder=str(self.folder.path), name=self.recipe.name, config=config,
                             run_id=self.ids.get(name), step=done)
            try:
                self.ids[name] = tracker.start(run)
            except IgdmKitError:
                raise
            except Exception as exc:  # noqa: BLE001 - a tracker library's own error, in one line
                raise IgdmKitError(f"log.trackers: {name!r} failed to start ({type(exc).__name__}: {exc})",
                                   f"check [log.{name}], or remove {name!r} from log.trackers") from None
        self.open = True

    def on_step_end(self, trainer, epoch, step) -> None:
        done = (epoch - 1) * trainer.steps_per_epoch + step + 1
        if done % self.every == 0:
            values = {f"train/{k}": v for k, v in trainer.step_terms.items()}
            values["train/loss"] = sum(trainer.step_terms.values())
            values["train/lr"] = float(trainer.parts.optimizer.param_groups[0]["lr"])
            self.pending.append((values, done, None))

    def on_epoch_end(self, trainer, epoch, row) -> None:
        values = {f"epoch/{k}": float(v) for k, v in row.items()
                  if k != "epoch" and isinstance(v, (int, float)) and math.isfinite(v)}
        self.pending.append((values, epoch * trainer.steps_per_epoch, epoch))
        self.flush()

    def on_interrupt(self, trainer, epochs_done, partial, generator_state) -> None:
        self.flush()  # the state covering them was just saved

    def on_run_end(self, trainer, results, files) -> None:
        self.flush()
        flat = flat_results(results)
        for _, tracker in self.trackers:
            tracker.summary(flat)
            if self.recipe.model.log.artifacts:
                for name, path in files.items():
                    tracker.artifact(str(path), name)

    def flush(self) -> None:
        for values, step, epoch in self.pending:
            for _, tracker in self.trackers:
                tracker.log(values, step=step, epoch=epoch)
        self.pending.clear()

    def close(self, ok: bool) -> None:
        if self.open:
            self.open = False
            for _, tracker in self.trackers:
                tracker.finish(ok)
