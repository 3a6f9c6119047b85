"""Experiment trackers (``[log]``): the ``Trackers`` subscriber feeds every registered ``interfaces.Tracker``
the recipe names — and ``jsonl``, always — the manifest, per-step and per-epoch metrics, the final results
and, with ``[log] artifacts``, the checkpoint files. Rank 0 only.

Each record reaches each tracker once, across kills. Records wait in ``pending`` until the training state
that covers them is saved — with them in it (this subscriber's part of the state) — and are handed over
right after (the subscriber comes after the ``Checkpointer``). ``trackers.json`` (``TrackerRecord``) keeps
the trackers' run ids from the moment they start, the step up to which every tracker holds every record,
the paths they created and whether their runs were closed. A resumed run starts each tracker again at the
step it surely holds (``TrackerRun.step``: the tracker drops what it holds after it, or keeps the first
value of a metric at a step) and hands it the saved records after that step. A run killed after
``results.json`` but before its trackers got the results has them delivered when it is resumed (or reused):
``deliver_finished``. A run killed before its first training state reopens the same tracker runs.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from igdm_kit._evaluation.report import EvalReport
from igdm_kit._plugins.manager import always_on
from igdm_kit._storage.run_folder import BEST, BEST_EMA, EMA, FINAL, LAST, MANIFEST, STATE, SWA, RunFolder
from igdm_kit._storage.tracker_record import TrackerRecord
from igdm_kit._storage.train_state import read_train_state_meta
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


def judged_files(folder: RunFolder, recipe) -> dict[str, Path]:
    """The checkpoint files the final evaluation judged, by ``[eval] checkpoints`` name (the artifacts).
    ``model.safetensors`` holds the headline (the first named); the last epoch is ``last.safetensors`` else."""
    judged = recipe.model.eval.checkpoints
    return {n: folder / f for n, f in (("last", FINAL if judged[0] == "last" else LAST), ("best", BEST),
                                       ("ema", EMA), ("best_ema", BEST_EMA), ("swa", SWA)) if n in judged}


@dataclass
class Record:
    """One record for the trackers: a step's values (``epoch`` None) or an epoch's row at its last step."""

    step: int
    epoch: int | None
    values: dict[str, float] = field(default_factory=dict)
    #: an epoch's row, still being filled when the record is made: read when it is saved or handed over
    row: dict[str, Any] | None = None

    def metrics(self) -> dict[str, float]:
        if self.row is None:
            return self.values
        return {f"epoch/{k}": float(v) for k, v in self.row.items()
                if k != "epoch" and isinstance(v, (int, float)) and math.isfinite(v)}

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "epoch": self.epoch, "metrics": self.metrics()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Record:
        return cls(int(d["step"]), d.get("epoch"), {k: float(v) for k, v in d["metrics"].items()})


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
        self.record = TrackerRecord.read(folder.path) or TrackerRecord()
        self.pending: list[Record] = []
        #: the training state's own record: None for a new run, or a state saved before records were kept in it
        self.saved_delivered: int | None = None
        self.resumed = False
        self.open = self.results_handed = False

    # -- resume --------------------------------------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return {"ids": self.record.ids, "delivered": self.record.delivered,
                "pending": [r.to_json() for r in self.pending]}, {}

    def load_state_dict(self, values, tensors) -> None:
        for name, run_id in dict(values.get("ids", {})).items():
            self.record.ids.setdefault(name, run_id)
        self.pending = [Record.from_json(r) for r in values.get("pending", [])]
        self.saved_delivered = values.get("delivered")
        self.resumed = True

    # -- events --------------------------------------------------------------------------------------------
    def on_fit_start(self, trainer, start_epoch, first_step) -> None:
        done = (start_epoch - 1) * trainer.steps_per_epoch + first_step
        if self.resumed and self.saved_delivered is None:  # an older state: its trackers held all it covers
            held = done
        else:
            held = min(max(self.record.delivered, self.saved_delivered or 0), done)
        self.pending = [r for r in self.pending if held < r.step <= done]
        self.start(held)
        self.deliver()  # what a killed process saved but had not handed over

    def on_step_end(self, trainer, epoch, step) -> None:
        done = (epoch - 1) * trainer.steps_per_epoch + step + 1
        if done % self.every == 0:
            values = {f"train/{k}": v for k, v in trainer.step_terms.items()}
            values["train/loss"] = sum(trainer.step_terms.values())
            values["train/lr"] = float(trainer.parts.optimizer.param_groups[0]["lr"])
            self.pending.append(Record(done, None, values))

    def on_epoch_metrics(self, trainer, epoch, row) -> None:
        # the row is complete before the state that covers it is saved (its time is added after this)
        self.pending.append(Record(epoch * trainer.steps_per_epoch, epoch, row=row))

    def on_epoch_end(self, trainer, epoch, row) -> None:
        self.deliver()  # the state covering them was just saved

    def on_interrupt(self, trainer, epochs_done, partial, generator_state) -> None:
        covered = epochs_done * trainer.steps_per_epoch + (partial.step if partial is not None else 0)
        self.pending = [r for r in self.pending if r.step <= covered]  # steps the resumed run trains again
        self.deliver()

    def on_run_end(self, trainer, results, files) -> None:
        self.deliver()
        self.hand_results(results, files)

    # -- handing over --------------------------------------------------------------------------------------
    def start(self, held: int) -> None:
        """Start every tracker (reopening its run when it has one), at the step it surely holds."""
        config = json.loads((self.folder / MANIFEST).read_text())
        self.record.delivered, self.record.closed = held, False  # before a tracker drops what it holds after it
        for name, tracker in self.trackers:
            run = TrackerRun(folder=str(self.folder.path), name=self.recipe.name, config=config,
                             run_id=self.record.ids.get(name), step=held)
            try:
                self.record.ids[name] = tracker.start(run)
            except IgdmKitError:
                raise
            except Exception as exc:  # noqa: BLE001 - a tracker library's own error, in one line
                raise IgdmKitError(f"log.trackers: {name!r} failed to start ({type(exc).__name__}: {exc})",
                                   f"check [log.{name}], or remove {name!r} from log.trackers") from None
            self.record.add_created(self.folder.path, tracker.created())
            self.record.write(self.folder.path)  # its run id, before anything could orphan the tracker's run
        self.open = True

    def deliver(self) -> None:
        """Hand every pending record to every tracker, then note how far they hold."""
        if not self.pending:
            return
        for rec in self.pending:
            metrics = rec.metrics()
            for _, tracker in self.trackers:
                tracker.log(metrics, step=rec.step, epoch=rec.epoch)
        self.record.delivered = max(self.record.delivered, self.pending[-1].step)
        self.pending.clear()
        self.record.write(self.folder.path)

    def hand_results(self, results: dict[str, Any], files: dict[str, Path]) -> None:
        flat = flat_results(results)
        for _, tracker in self.trackers:
            tracker.summary(flat)
            if self.recipe.model.log.artifacts:
                for name, path in files.items():
                    tracker.artifact(str(path), name)
        self.results_handed = True

    def close(self, ok: bool) -> None:
        if self.open:
            self.open = False
            for _, tracker in self.trackers:
                tracker.finish(ok)
            if ok and self.results_handed:
                self.record.closed = True
                self.record.write(self.folder.path)


def deliver_finished(folder: RunFolder, recipe, log) -> None:
    """A finished run whose trackers never got the final results (killed after ``results.json``): start them
    again, hand them the saved records they may lack and the results, and close their runs. Rank 0."""
    record = TrackerRecord.read(folder.path)
    if record is None or record.closed:  # delivered, or a run of an igdm-kit that kept no record
        return
    trackers = Trackers(folder, recipe)
    meta = read_train_state_meta(folder / STATE) or {}
    saved = ((meta.get("extra") or {}).get("subscribers") or {}).get(Trackers.state_key)
    if isinstance(saved, dict):
        trackers.load_state_dict(saved, {})
    last = max((r.step for r in trackers.pending), default=record.delivered)
    # the results sit at the last step: hand that step again, so a tracker drops what it may hold of them
    held = min(record.delivered, last - 1) if trackers.pending else record.delivered
    trackers.pending = [r for r in trackers.pending if r.step > held]
    log(f"{folder.path}: handing the final results to the trackers, which had not got them")
    ok = False
    try:
        trackers.start(held)
        trackers.deliver()
        trackers.hand_results(folder.results(), judged_files(folder, recipe))
        ok = True
    finally:
        trackers.close(ok)
