"""``run(recipe)``: one training run from a validated recipe to its results, put together from the parts
in ``igdm_kit.training``:

1. the run folder decides: new, resume, reuse a finished run, or a one-line error (``RunFolder.decide``);
2. the teacher is prepared: a ``[teacher] recipe`` is trained (or its finished run reused) first, each
   teacher recipe before the recipe that needs it — never by re-entering this run;
3. the parts are built through the factories (``build_parts``), the training state restored on resume;
4. the ``Trainer`` runs the epochs; progress, metrics, log lines, checkpoints, validation and the best
   checkpoints, the weight average and the experiment trackers subscribe to it;
5. the final evaluation (``[eval]``) runs on the plain fp32 checkpoints ``[eval] checkpoints`` names; the
   model and results are written, and the subscribers told (``on_run_end``, then ``close``).

Under ``torchrun`` (``WORLD_SIZE`` > 1) every rank calls ``run``; rank 0 alone decides about and writes the
run folder (see ``igdm_kit.distributed``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import distributed
from .accel import Accelerator
from .checkpoint import save_model
from .errors import IgdmKitError, Interrupted, RecipeError
from .recipe import Recipe, load as load_recipe, resume_command
from .train_state import load_train_state
from .training.events import Subscriber, restore_subscribers
from .training.final_eval import clean_accuracy, evaluate_checkpoints, final_evaluation
from .training.folder import AA_STATE, BEST, BEST_EMA, EMA, FINAL, LAST, RESULTS, STATE, Mode, RunFolder, sha256_file
from .training.parts import Parts, build_parts, build_student, build_training, check_data, load_data, load_teacher
from .training.subscribers import Checkpointer, CleanAccuracy, LogLine, MetricsLog, ProgressBar
from .training.trainer import Trainer

__all__ = ["AA_STATE", "FINAL", "Interrupted", "LAST", "RESULTS", "STATE", "RunResult", "build_student",
           "build_training", "check_data", "clean_accuracy", "final_evaluation", "load_data", "load_teacher",
           "resolve_device", "run", "sha256_file"]

Log = Callable[[str], None]
MAX_TEACHER_DEPTH = 16


def _quiet(_: str) -> None:
    pass


@dataclass
class RunResult:
    output_dir: Path
    recipe: Recipe
    metrics: list[dict[str, Any]] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    reused: bool = False


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise IgdmKitError(f"train.device is {name!r} but CUDA is not available", "use device = \"cpu\"")
    return torch.device(name)


def run(r: Recipe, *, output_dir: str | Path | None = None, resume: bool = False, overwrite: bool = False,
        reuse_finished: bool = False, log: Log = _quiet, progress: Any = None) -> RunResult:
    """Train the recipe's student and evaluate it. ``progress`` is an optional Rich ``Progress``.

    ``resume`` and ``overwrite`` exclude each other: one continues the folder's run, the other deletes it.
    ``reuse_finished`` returns a finished run of the same recipe in the folder instead of an error.
    """
    if resume and overwrite:
        raise IgdmKitError("--resume and --overwrite exclude each other",
                           "--resume continues the run in the folder; --overwrite deletes it and starts again")
    d = distributed.from_env()
    log = log if d.is_main else _quiet  # rank 0 speaks for all
    folder = RunFolder(output_dir if output_dir is not None else r.default_output_dir())
    device, acc = _accelerator(r, d, log)  # bad accelerator options fail before the folder is touched
    mode = _open(folder, r, d, resume=resume, overwrite=overwrite, reuse_finished=reuse_finished, log=log)
    if mode == "reuse":
        return _reused(folder, r, log)
    teacher_file = prepare_teacher(r, resume=resume, log=log)
    return _train(folder, r, mode, teacher_file, d, device, acc, log=log, progress=progress)


def _accelerator(r: Recipe, d, log: Log) -> tuple[torch.device, Accelerator]:
    device = distributed.device_for(d, resolve_device(r.model.train.device))
    distributed.init(d, device)
    module = r.model.module.name if r.model.module else None
    return device, Accelerator.from_train(r.model.train, device, module=module, log=log)


def _open(folder: RunFolder, r: Recipe, d, *, resume: bool, overwrite: bool, reuse_finished: bool,
          log: Log) -> Mode:
    """Rank 0 alone looks at (and may delete) the folder; the other ranks follow its decision or error."""
    decision: tuple[str, Any] = ("new", None)
    if d.is_main:
        try:
            decision = (folder.decide(r, resume=resume, overwrite=overwrite, reuse_finished=reuse_finished), None)
        except IgdmKitError as exc:
            decision = ("error", (exc.message, exc.hint))
    mode, error = d.broadcast(decision)
    if mode == "error":
        raise IgdmKitError(*error)
    if resume and mode == "new":
        log(f"nothing to resume in {folder.path}: starting a new run")
    return mode


def _reused(folder: RunFolder, r: Recipe, log: Log) -> RunResult:
    log(f"reusing finished run {folder.path}")
    return RunResult(folder.path, r, folder.metrics(), folder.results(), reused=True)


def prepare_teacher(r: Recipe, *, resume: bool = False, log: Log = _quiet) -> Path | None:
    """The file of the recipe's teacher: its ``checkpoint``, or the model its teacher ``recipe`` trains.

    A chain of teacher recipes is trained innermost first, each into its own recipe's run folder (reused
    when it already holds the finished run, so a teacher is trained once for many students)."""
    chain: list[Recipe] = []
    t = r.model.teacher
    while t is not None and t.recipe is not None:
        if len(chain) >= MAX_TEACHER_DEPTH:
            raise RecipeError(f"teacher recipes nest deeper than {MAX_TEACHER_DEPTH}",
                              "check for a cycle of teacher.recipe", path="teacher.recipe")
        log(f"teacher: recipe {t.recipe}")
        chain.append(load_recipe(t.recipe))
        t = chain[-1].model.teacher
    teacher_file = Path(t.checkpoint) if t is not None else None
    d = distributed.from_env()
    for sub in reversed(chain):
        folder = RunFolder(sub.default_output_dir())
        device, acc = _accelerator(sub, d, log)
        mode = _open(folder, sub, d, resume=resume, overwrite=False, reuse_finished=True, log=log)
        result = _reused(folder, sub, log) if mode == "reuse" else \
            _train(folder, sub, mode, teacher_file, d, device, acc, log=log, progress=None)
        teacher_file = result.output_dir / FINAL
    return teacher_file


def _train(folder: RunFolder, r: Recipe, mode: Mode, teacher_file: Path | None, d, device: torch.device,
           acc: Accelerator, *, log: Log, progress: Any) -> RunResult:
    """Build, train (from scratch or the saved state) and evaluate one recipe into ``folder``."""
    tr = r.model.train
    if d.is_main:
        folder.ensure_writable()
    parts = build_parts(r, device=device, acc=acc, dist=d, teacher_file=teacher_file)
    subs, ema = _subscribers(folder, parts, log, progress)
    start, partial, metrics = _starting_point(folder, parts, mode, log, subs)
    trainer = Trainer(parts, subs, saved_in=folder.path, resume_hint=resume_command(r, folder.path),
                      metrics=metrics)
    ok = False
    try:
        metrics = trainer.fit(start, partial)
        acc.release()  # the final evaluation runs the plain fp32 eager models
        if ema is not None and d.is_main:
            ema.save(folder / EMA, {**parts.checkpoint_meta(), "epoch": tr.epochs})
        # AutoAttack keeps its progress in the run folder, so an interrupted final evaluation resumes.
        results = evaluate_checkpoints(r, parts, folder, ema, log=log, progress=progress)
        if d.is_main:
            save_model(folder / FINAL, parts.student, {**parts.checkpoint_meta(), "epoch": tr.epochs})
            folder.finish(results)
        files = {n: folder / f for n, f in (("last", FINAL), ("best", BEST), ("ema", EMA), ("best_ema", BEST_EMA))
                 if n in r.model.eval.checkpoints}
        for s in subs:
            s.on_run_end(trainer, results, files)
        ok = True
    finally:
        for s in subs:
            s.close(ok)
    d.barrier()
    return RunResult(folder.path, r, metrics, results)


def _starting_point(folder: RunFolder, parts: Parts, mode: Mode, log: Log, subs: list[Subscriber]):
    """(first epoch, saved mid-epoch state or None, metrics so far): the saved state on resume (the
    subscribers' parts of it given back), else a new run's manifest and resolved recipe."""
    if mode != "resume":
        if parts.dist.is_main:
            folder.start(parts.recipe, device=str(parts.device), world_size=parts.dist.world,
                         teacher_digest=parts.teacher_digest, extra=_split_record(parts))
        return 1, None, []
    meta = load_train_state(folder / STATE, model=parts.student, optimizer=parts.optimizer,
                            scheduler=parts.scheduler)
    restore_subscribers(subs, meta["extra"], meta["extra_tensors"])
    start, partial = meta["epoch"] + 1, meta["extra"].get("partial")
    if parts.acc.scaler is not None and "grad_scaler" in meta["extra"]:
        parts.acc.scaler.load_state_dict(meta["extra"]["grad_scaler"])
    if partial is not None:
        partial["gen_state"] = meta["extra_tensors"]["gen_state"]
        start = partial["epoch"]
    log(f"resuming {folder.path} after epoch {meta['epoch']}"
        + (f" and {partial['step']} step{'s' if partial['step'] != 1 else ''} of epoch {partial['epoch']}"
           if partial else ""))
    metrics = folder.trim_metrics(meta["epoch"]) if parts.dist.is_main else folder.metrics()
    return start, partial, metrics


def _split_record(parts: Parts) -> dict[str, Any]:
    """The manifest's record of the validation split: which training images it holds."""
    if parts.val_indices is None:
        return {}
    import hashlib
    import json

    data = parts.recipe.model.data
    return {"validation_split": {
        "val_size": data.val_size, "val_seed": data.val_seed, "images": len(parts.val_indices),
        "train_images": int(parts.train_data[0].shape[0]), "stratified": True,
        "indices_sha256": hashlib.sha256(json.dumps(parts.val_indices).encode()).hexdigest(),
        "indices": parts.val_indices}}


def _subscribers(folder: RunFolder, parts: Parts, log: Log, progress: Any):
    """The run's subscribers in their order (the metrics row is logged, then the state saved, then the best
    checkpoints and the trackers follow it), and the weight average (or None)."""
    from .training.ema import EMA as Average
    from .training.tracking import Trackers
    from .training.validation import BestCheckpoint, Validation

    r, main = parts.recipe, parts.dist.is_main
    tr = r.model.train
    subs: list = [CleanAccuracy()]
    ema = Average(parts.student, lambda: build_student(r, parts.info), tr.ema) if tr.ema else None
    if ema is not None:
        subs.append(ema)
    if tr.validation is not None:
        models = [("", lambda: parts.student)] + ([("ema_", lambda: ema.model)] if ema else [])
        subs.append(Validation(r.val_specs, tr.validation, parts.val_data, models))
    if progress is not None and main:
        subs.append(ProgressBar(progress, r.name))
    if main:
        meta = parts.checkpoint_meta()
        subs += [MetricsLog(folder), Checkpointer(folder, meta, every_epoch=tr.save_every_epoch)]
        if tr.validation is not None:
            key = f"val_{tr.validation.metric}"
            subs.append(BestCheckpoint(folder / BEST, key, meta, lambda: parts.student, log))
            if ema is not None:
                subs.append(BestCheckpoint(folder / BEST_EMA, f"val_ema_{tr.validation.metric}", meta,
                                           lambda: ema.averaged.module, log))
        subs.append(Trackers(folder, r))
    subs.append(LogLine(log, r.name))
    return subs, ema
