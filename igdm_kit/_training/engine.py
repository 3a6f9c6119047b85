"""``run(recipe)``: one training run from a validated recipe to its results, put together from the parts
in ``igdm_kit._training``:

1. the run folder is locked for the run and decides: new, resume, reuse a finished run, or a one-line error
   (``RunLock``, ``RunFolder.decide``);
2. the teacher is prepared: a ``[teacher] recipe`` is trained (or its finished run reused) first, each
   teacher recipe before the recipe that needs it — never by re-entering this run;
3. the parts are built through the factories (``build_parts``), the training state restored on resume;
4. the ``Trainer`` runs the epochs; progress, metrics, log lines, checkpoints, validation and the best
   checkpoints, the weight average and the experiment trackers subscribe to it;
5. the final evaluation (``[eval]``) runs on the plain fp32 checkpoints ``[eval] checkpoints`` names; the
   model and results are written, and the subscribers told (``on_run_end``, then ``close``).

SIGINT/SIGTERM handlers are installed for the whole run (``StopFlag``): every phase — building, training,
saving, the final evaluation — stops at its next safe point with the state saved and raises ``Interrupted``.

Under ``torchrun`` (``WORLD_SIZE`` > 1) every rank calls ``run``; rank 0 alone decides about and writes the
run folder (see ``igdm_kit._runtime.distributed``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from igdm_kit._recipe import Recipe, command, missing_extras, resume_command
from igdm_kit._recipe import load as load_recipe
from igdm_kit._recipe.effective import dataset_line
from igdm_kit._runtime import distributed, threads
from igdm_kit._runtime.accel import Accelerator
from igdm_kit._runtime.devices import resolve_device
from igdm_kit._runtime.signals import StopFlag
from igdm_kit._storage.checkpoint import save_model
from igdm_kit._storage.run_folder import (
    AA_STATE,
    EMA,
    FINAL,
    LAST,
    RESULTS,
    STATE,
    SWA,
    Again,
    Mode,
    RunFolder,
    describe_holder,
    sha256_file,
)
from igdm_kit._storage.train_state import load_train_state
from igdm_kit._training.callbacks import check_weights
from igdm_kit._training.events import RunContext, Subscriber, restore_subscribers
from igdm_kit._training.final_eval import clean_accuracy, evaluate_checkpoints, final_evaluation, judged_models
from igdm_kit._training.parts import (
    Parts,
    absent_classes,
    build_parts,
    build_student,
    build_training,
    check_data,
    load_data,
    load_teacher,
)
from igdm_kit._training.tracking import deliver_finished, judged_files
from igdm_kit._training.trainer import Trainer
from igdm_kit.errors import IgdmKitError, Interrupted, RecipeError

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


def run(r: Recipe, *, output_dir: str | Path | None = None, resume: bool = False, overwrite: bool = False,
        reuse_finished: bool = False, log: Log = _quiet, progress: Any = None) -> RunResult:
    """Train the recipe's student and evaluate it. ``progress`` is an optional Rich ``Progress``.

    ``resume`` and ``overwrite`` exclude each other: one continues the folder's run, the other deletes it.
    ``reuse_finished`` returns a finished run of the same recipe in the folder instead of an error; so does
    ``resume`` (a finished run has nothing left to resume). The folder is locked for the whole run, and a
    stop request (SIGINT/SIGTERM) is honoured in every phase: ``Interrupted``, exit 128 + signal.
    """
    if resume and overwrite:
        raise IgdmKitError("--resume and --overwrite exclude each other",
                           "--resume continues the run in the folder; --overwrite deletes it and starts again")
    d = distributed.from_env()
    log = log if d.is_main else _quiet  # rank 0 speaks for all
    missing = missing_extras(r)
    if missing:  # before the folder is touched or anything trains (not after training, at the evaluation)
        raise IgdmKitError(missing[0].split("; install it: ")[0] + (f" (and {len(missing) - 1} more)"
                           if len(missing) > 1 else ""), missing[0].split("; install it: ")[-1])
    threads.resolve(r.model.train.threads)  # a thread count out of range is refused before the folder is touched
    folder = RunFolder(output_dir if output_dir is not None else r.default_output_dir())
    hint = resume_command(r, folder.path)
    device, acc = _accelerator(r, d, log)  # bad accelerator options fail before the folder is touched
    with StopFlag() as stop:
        with _opened(folder, r, d, resume=resume, overwrite=overwrite, reuse_finished=reuse_finished,
                     log=log) as mode:
            if mode in ("reuse", "finished"):
                return _reused(folder, r, log, mode)
            teacher_file = prepare_teacher(r, resume=resume, log=log, stop=stop, hint=hint)
            roles = prepare_role_teachers(r, resume=resume, log=log, stop=stop, hint=hint)
            result = _train(folder, r, mode, teacher_file, d, device, acc, log=log, progress=progress, roles=roles,
                            stop=stop, hint=hint)
        stop.check(f"the run had just finished in {folder.path}", f"see its results with: {hint}")
    return result


def _accelerator(r: Recipe, d, log: Log) -> tuple[torch.device, Accelerator]:
    device = distributed.device_for(d, resolve_device(r.model.train.device, where="train.device"))
    distributed.init(d, device)
    module = r.model.module.name if r.model.module else None
    return device, Accelerator.from_train(r.model.train, device, module=module, log=log)


@contextmanager
def _opened(folder: RunFolder, r: Recipe, d, *, resume: bool, overwrite: bool, reuse_finished: bool,
            log: Log, what: str = "run folder", busy_hint: str | None = None,
            again: Again | None = None, wait: Callable[[dict], None] | None = None) -> Iterator[Mode]:
    """The folder locked (rank 0) for as long as the block runs, and the policy's decision about it
    (``again``: the commands its errors name, where the command at hand does not reach the folder's run;
    ``wait``: given, a folder another process holds is waited for instead of refused, see ``RunLock``).

    Rank 0 alone locks, cleans up after a killed process, looks at (and may delete) the folder; the other
    ranks follow its decision or error."""
    lock = folder.lock(what=what, hint=busy_hint) if d.is_main else None
    decision: tuple[str, Any] = ("new", None)
    if lock is not None:
        try:
            lock.acquire(wait)
            if lock.stale:
                log(f"{folder.path}: taking over the lock of pid {lock.stale.get('pid')} on "
                    f"{lock.stale.get('host')}, which is no longer running")
            removed = folder.clean_temporaries()
            if removed:
                log(f"{folder.path}: removed {len(removed)} temporary file(s) of an interrupted write")
            decision = (folder.decide(r, resume=resume, overwrite=overwrite, reuse_finished=reuse_finished,
                                      what=what, again=again), None)
        except IgdmKitError as exc:
            lock.release()
            decision = ("error", (exc.message, exc.hint))
    mode, error = d.broadcast(decision)
    if mode == "error":
        raise IgdmKitError(*error)
    if resume and mode == "new":
        log(f"nothing to resume in {folder.path}: starting a new run")
    try:
        yield mode
    finally:
        if lock is not None:
            lock.release()


def _reused(folder: RunFolder, r: Recipe, log: Log, mode: Mode = "reuse") -> RunResult:
    """A finished run, reused as it is (its trackers handed the final results first if a kill kept them from
    getting them)."""
    log(f"{folder.path} holds the finished run: nothing to resume" if mode == "finished"
        else f"reusing finished run {folder.path}")
    if distributed.from_env().is_main:
        deliver_finished(folder, r, log)
    return RunResult(folder.path, r, folder.metrics(), folder.results(), reused=True)


def prepare_teacher(r: Recipe, *, resume: bool = False, log: Log = _quiet, stop: StopFlag | None = None,
                    hint: str | None = None) -> Path | None:
    """The file of the recipe's teacher: its ``checkpoint``, or the model its teacher ``recipe`` trains.

    A chain of teacher recipes is trained innermost first, each into its own recipe's run folder (reused
    when it already holds the finished run, so a teacher is trained once for many students), with that
    folder locked: a second process that needs the same teacher waits for the first (saying whom for) and
    then reuses what it finished. ``hint``:
    the command that resumes the whole run, printed when a stop request ends the teacher's training and named
    by the error about a teacher's unfinished run (``--overwrite`` of the student never reaches a teacher: the
    error names the teacher's own command for that)."""
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
    with stop if stop is not None else StopFlag() as flag:
        for sub in reversed(chain):
            teacher_file = _teacher_run(sub, teacher_file, resume=resume, log=log, stop=flag, hint=hint)
    return teacher_file


def prepare_role_teachers(r: Recipe, *, resume: bool = False, log: Log = _quiet, stop: StopFlag | None = None,
                          hint: str | None = None, _depth: int = 0) -> dict[str, Path]:
    """The file of each ``[teachers.<role>]`` teacher (R1): its ``checkpoint``, or the model its ``recipe``
    trains — trained or reused as ``prepare_teacher`` does, that recipe's own teachers first."""
    files: dict[str, Path] = {}
    for role, t in sorted(r.model.teachers.items()):
        if t.recipe is None:
            files[role] = Path(t.checkpoint)
            continue
        if _depth >= MAX_TEACHER_DEPTH:
            raise RecipeError(f"teacher recipes nest deeper than {MAX_TEACHER_DEPTH}",
                              f"check for a cycle of teachers.{role}.recipe", path=f"teachers.{role}.recipe")
        log(f"teacher {role}: recipe {t.recipe}")
        sub = load_recipe(t.recipe)
        with stop if stop is not None else StopFlag() as flag:
            main = prepare_teacher(sub, resume=resume, log=log, stop=flag, hint=hint)
            roles = prepare_role_teachers(sub, resume=resume, log=log, stop=flag, hint=hint, _depth=_depth + 1)
            files[role] = _teacher_run(sub, main, resume=resume, log=log, stop=flag, hint=hint, roles=roles)
    return files


def _teacher_run(sub: Recipe, teacher_file: Path | None, *, resume: bool, log: Log, stop: StopFlag,
                 hint: str | None, roles: dict[str, Path] | None = None) -> Path:
    """Train a teacher recipe into its own run folder, locked (or reuse its finished run); its model's file."""
    if roles is None:
        roles = prepare_role_teachers(sub, resume=resume, log=log, stop=stop, hint=hint)
    d = distributed.from_env()
    folder = RunFolder(sub.default_output_dir())
    device, acc = _accelerator(sub, d, log)
    again = Again(hint or resume_command(sub, folder.path),
                  command("run", sub.path, overrides=sub.overrides) + " --overwrite")
    with _opened(folder, sub, d, resume=resume, overwrite=False, reuse_finished=True, log=log,
                 what="teacher run folder", again=again, wait=_waiter(folder, log, stop)) as mode:
        result = _reused(folder, sub, log) if mode in ("reuse", "finished") else \
            _train(folder, sub, mode, teacher_file, d, device, acc, log=log, progress=None, stop=stop,
                   hint=hint or resume_command(sub, folder.path), roles=roles)
    return result.output_dir / FINAL


def _waiter(folder: RunFolder, log: Log, stop: StopFlag, poll_s: float = 0.5) -> Callable[[dict], None]:
    """What a student does while another process holds its teacher's folder (training the teacher, or only
    reusing it, as the students of a ``sweep --jobs`` do at once): it waits, says once whom for, and stops
    waiting on a stop request. The finished teacher is then reused (or trained, if the holder gave up)."""
    said: list[bool] = []

    def wait(holder: dict) -> None:
        if not said:
            log(f"teacher run folder {folder.path}: waiting for {describe_holder(holder)}, which holds it "
                "(a teacher it finishes is reused)")
            said.append(True)
        stop.check(f"stopped while waiting for the teacher run folder {folder.path}",
                   "run the same command again")
        time.sleep(poll_s)

    return wait


def agreed_stop_check(stop: StopFlag, d, device: torch.device, what: str, hint: str) -> Callable[[], None]:
    """A stop check the ranks of a torchrun make together: a stop request on any rank stops every rank (each
    calls it at the same point). One process: the plain check."""

    def agree() -> None:
        stop.agree(d, device)
        stop.check(what, hint)

    return agree


def _train(folder: RunFolder, r: Recipe, mode: Mode, teacher_file: Path | None, d, device: torch.device,
           acc: Accelerator, *, log: Log, progress: Any, stop: StopFlag, hint: str,
           roles: dict[str, Path] | None = None) -> RunResult:
    """Build, train (from scratch or the saved state) and evaluate one recipe into ``folder``; ``stop`` is
    checked in every phase, ``hint`` is the command that resumes; ``roles``: the file of each teacher by role."""
    tr = r.model.train
    threads.configure(tr.threads)  # --threads / IGDM_KIT_THREADS, the recipe's, or the default
    if d.is_main:
        folder.ensure_writable()
    parts = build_parts(r, device=device, acc=acc, dist=d, teacher_file=teacher_file, log=log, role_files=roles)
    if mode != "resume":  # what the dataset decided (e.g. flips) and what a limit cut change results: said
        for line in filter(None, [dataset_line(r), *absent_classes(r, parts.info, parts.train.labels,
                                                                   parts.test_data[1])]):
            log(line)
    stop.check(f"stopped before training started in {folder.path}", f"start it again with: {hint}")
    subs, (ema, swa) = _callbacks(folder, parts, log, progress)
    start, partial, metrics = _starting_point(folder, parts, mode, log, subs)
    trainer = Trainer(parts, subs, saved_in=folder.path, resume_hint=hint, metrics=metrics, stop=stop)
    ok = False
    try:
        metrics = trainer.fit(start, partial)
        acc.release()  # the final evaluation runs the plain fp32 eager models
        check_weights(parts.student, "before the final evaluation",
                      f"the training state in {folder.path} holds them; start again with --overwrite and a "
                      "lower train.lr")
        if ema is not None and d.is_main:
            ema.save(folder / EMA, {**parts.checkpoint_meta(), "epoch": tr.epochs})
        if swa is not None:
            swa.finish(tr.epochs)  # every rank: the statistics are averaged across them
            if d.is_main:
                swa.save(folder / SWA, {**parts.checkpoint_meta(), "epoch": tr.epochs})
        what, again = (f"the final evaluation stopped; training is saved in {folder.path} (AutoAttack resumes "
                       "where it stopped)"), f"resume with: {hint}"
        # AutoAttack keeps its progress in the run folder, so an interrupted final evaluation resumes.
        judged = judged_models(r, parts, folder, ema, swa)
        agree = agreed_stop_check(stop, d, parts.device, what, again)
        results = evaluate_checkpoints(r, parts, folder, judged, log=log, progress=progress,
                                       check=lambda: stop.check(what, again), agree=agree)
        agree()  # every rank, or none, goes on to write
        headline, model, epoch = judged[0]  # model.safetensors is the model results.json reports
        if d.is_main:
            save_model(folder / FINAL, model, {**parts.checkpoint_meta(), "epoch": epoch, "checkpoint": headline})
            folder.finish(results)  # results.json marks the run finished
        files = judged_files(folder, r)
        for s in subs:
            s.on_run_end(trainer, results, files)
        ok = True
    finally:
        for s in subs:
            s.close(ok)
    d.barrier()
    return RunResult(folder.path, r, metrics, results)


def _check_same_precision(folder: RunFolder, parts: Parts) -> None:
    """A run continues in the precision it started in: ``amp = "auto"`` may choose another on this device."""
    started = folder.manifest().get("amp")  # absent in runs of earlier versions: amp was explicit then
    now = parts.acc.options.amp
    if started is not None and started != now:
        raise IgdmKitError(f"{folder.path} was started with amp {started}, and train.amp = "
                           f"{parts.recipe.model.train.amp!r} is {now} on this device",
                           f"resume it on a device where amp auto chooses {started} (a run continues in the "
                           "precision it started in), or start it again here with --overwrite")


def _starting_point(folder: RunFolder, parts: Parts, mode: Mode, log: Log, subs: list[Subscriber]):
    """(first epoch, saved mid-epoch state or None, metrics so far): the saved state on resume (the
    subscribers' parts of it given back), else a new run's manifest and resolved recipe."""
    if mode != "resume":
        if parts.dist.is_main:
            folder.start(parts.recipe, device=str(parts.device), world_size=parts.dist.world,
                         teacher_digest=parts.teacher_digest,
                         extra={**_split_record(parts), "amp": parts.acc.options.amp,
                                **({"teachers_sha256": parts.teacher_digests} if parts.teacher_digests else {})})
        return 1, None, []
    _check_same_precision(folder, parts)
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
        "train_images": len(parts.train), "stratified": True,
        "indices_sha256": hashlib.sha256(json.dumps(parts.val_indices).encode()).hexdigest(),
        "indices": parts.val_indices}}


def _callbacks(folder: RunFolder, parts: Parts, log: Log, progress: Any):
    """The run's callbacks in their order (``interfaces.Order``; ties by name): the always-on ones every
    plugin registered (the host's own among them) and those ``[train] callbacks`` names; and the weight
    averages (EMA, SWA; None where the recipe has none), which the final evaluation judges too."""
    from igdm_kit._plugins.manager import registry
    from igdm_kit._training.ema import EMA as Average
    from igdm_kit._training.swa import SWA as EqualAverage
    from igdm_kit.factories import create_callback

    r = parts.recipe
    tr = r.model.train
    ema = Average(parts.student, lambda: build_student(r, parts.info), tr.ema) if tr.ema else None
    swa = EqualAverage(parts, lambda: build_student(r, parts.info), tr.swa) if tr.swa else None
    ctx = RunContext(run_dir=folder.path, recipe=r.resolved(), is_main=parts.dist.is_main, log_line=log,
                     folder=folder, parts=parts, progress=progress, ema=ema, swa=swa)
    chosen = [(e.component.order, e.name, create_callback(e.name, ctx)) for e in registry("callback")
              if e.component.always_on]
    chosen += [(registry("callback").get(s.name).order, s.key, create_callback(s.name, ctx, s.options))
               for s in r.callback_specs]
    chosen.sort(key=lambda c: (c[0], c[1]))
    return [c for _, _, c in chosen if c is not None], (ema, swa)
