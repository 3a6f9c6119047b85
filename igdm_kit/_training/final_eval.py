"""The recipe's final evaluation (``[eval]``) of a trained student, and the per-epoch clean accuracy.

Under torchrun each rank evaluates a disjoint shard of the test split (AutoAttack included) and the
correct counts (and GD/GC sums) are added up.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from igdm_kit._recipe import Recipe


def clean_accuracy(model, x: torch.Tensor, y: torch.Tensor, device, batch_size: int = 512,
                   dist=None) -> float:
    """Clean accuracy (%); under torchrun each rank takes a disjoint shard and the counts are summed."""
    if dist is not None and dist.enabled:
        x, y = x[dist.rank::dist.world], y[dist.rank::dist.world]
    from igdm_kit.attacks import eval_mode
    from igdm_kit.nn import to_float_images

    correct = 0
    with torch.no_grad(), eval_mode(model):
        for i in range(0, x.shape[0], batch_size):
            xb, yb = to_float_images(x[i:i + batch_size].to(device)), y[i:i + batch_size].to(device)
            correct += int((model(xb).argmax(1) == yb).sum())
    total = x.shape[0]
    if dist is not None and dist.enabled:
        correct, total = (int(v) for v in dist.sum([float(correct), float(total)], device))
    return 100.0 * correct / max(1, total)


def _eval_progress(progress: Any, name: str, check: Callable[[], None] | None = None, judged: str = ""):
    """Adapt a Rich ``Progress`` to evaluation's ``callback(task, done, total)``: a bar per attack, named
    after the checkpoint it judges (``judged``); ``check`` runs after every batch first (a stop request raises
    there, AutoAttack's state already saved)."""
    if progress is None and check is None:
        return None
    tasks: dict[str, Any] = {}

    def callback(task: str, done: int, total: int) -> None:
        if check is not None:
            check()
        if progress is None:
            return
        if task not in tasks:
            tasks[task] = progress.add_task(f"{name} eval {task}" + (f" ({judged})" if judged else ""), total=total)
        progress.update(tasks[task], completed=done)

    return callback


def final_evaluation(r: Recipe, student, teacher, xte, yte, device, *, log, dist=None,
                     aa_state: Path | None = None, progress: Any = None,
                     flags_path: Path | None = None,
                     check: Callable[[], None] | None = None, agree: Callable[[], None] | None = None,
                     judged: str = "") -> dict[str, Any]:
    """The recipe's ``[eval]``: its attacks under its threat model, the worst case per image over them,
    and with ``analysis = true`` GD/GC. The per-image robust flags go to ``flags_path`` (one process).
    ``check`` is called after every evaluated batch (the engine's stop check, this rank's); under torchrun
    ``agree`` (the stop check every rank makes together) is called where every rank arrives once, after its
    shard's attacks and before the counts are merged, so that no rank enters the merge while another stops.
    ``judged`` names the checkpoint in the progress lines."""
    from igdm_kit._evaluation.runner import evaluate_report, save_flags
    from igdm_kit.nn import to_float_images

    ev = r.model.eval
    x, y = (xte[: ev.limit], yte[: ev.limit]) if ev.limit else (xte, yte)
    x_all, y_all = x, y
    n_total = int(x.shape[0])
    sharded = dist is not None and dist.enabled
    if sharded:
        x, y = x[dist.rank::dist.world], y[dist.rank::dist.world]
    x = to_float_images(x)  # the evaluated images only, as the attacks, flags, analysis and shifts take them
    from igdm_kit.factories import create_dataset

    classes = create_dataset(r.model.data.name, r.components["data"]).info().num_classes
    report = evaluate_report(student, x, y, attacks=r.eval_specs, batch_size=ev.batch_size, eps=ev.eps,
                             threat=ev.threat, device=device, autoattack_state=aa_state, num_classes=classes,
                             progress=_eval_progress(progress, r.name, check, judged), where="eval.attacks")
    for w in report.warnings:
        log(f"AutoAttack: {w}")
    if flags_path is not None and not sharded:
        save_flags(flags_path, report, x, y, {"recipe": r.name, "digest": r.digest(),
                                        "dataset": r.model.data.name, "limit": ev.limit})
    if sharded:
        if agree is not None:
            agree()
        report = _merge_shards(report, dist, device, n_total)
    results: dict[str, Any] = {"recipe": r.name, "digest": r.digest(), **report.to_json()}
    if ev.analysis and teacher is not None:
        from igdm_kit._evaluation.analysis import gradient_alignment

        al = gradient_alignment(student, teacher, x, y, batch_size=ev.batch_size)
        gd, gc = float(al["distance"].sum()), float(al["cosine"].sum())
        if sharded:
            gd, gc = dist.sum([gd, gc], device)
        results["alignment"] = {"gd": gd / n_total, "gc": gc / n_total}
    if ev.shifts:
        results["shifts"] = shift_evaluation(r, student, x_all, y_all, device, log=log, progress=progress,
                                             judged=judged)
    return results


def shift_evaluation(r: Recipe, student, x, y, device, *, log, progress: Any = None, judged: str = ""):
    """``[eval] shifts`` (Table 9) on all the evaluated test images; a shift whose files are missing is skipped
    with a warning. Under torchrun every rank evaluates the whole split (the same numbers on each, no
    collective, so no rank waits on another for as long as it takes; rank 0 writes them): a shard's numbers
    would not be Table 9's, and merging its intervals, per-set digests and summaries over ranks is not a sum."""
    from igdm_kit._evaluation.shifts import evaluate_shifts
    from igdm_kit.factories import create_dataset

    ev = r.model.eval
    info = create_dataset(r.model.data.name, r.components["data"]).info()
    out = evaluate_shifts(student, x, y, ev.shifts, dataset=r.model.data.name, info=info,
                          attacks=ev.shift_attacks, eps=ev.eps, threat=ev.threat, batch_size=ev.batch_size,
                          device=device, progress=_eval_progress(progress, r.name, judged=judged),
                          skip_missing=True)
    for w in out["warnings"]:
        log(f"eval.shifts: {w}")
    return {**out, "sharded": False}


def _merge_shards(report, dist, device, n_total: int):
    """Counts added up over the ranks' disjoint shards (the worst case per image too: it is per image)."""
    rows = report.rows()
    counts = dist.sum([float(a.correct) for a in rows.values()], device)
    keys = list(report.per_class)  # the same keys and classes on every rank (num_classes is the dataset's)
    flat = dist.sum([float(v) for k in keys for pair in report.per_class[k] for v in pair], device)
    it = iter(int(v) for v in flat)
    per_class = {k: [(next(it), next(it)) for _ in report.per_class[k]] for k in keys}
    return report.with_counts({k: int(c) for k, c in zip(rows, counts, strict=True)}, n_total, per_class)


def judged_models(r: Recipe, parts, folder, ema, swa=None) -> list[tuple[str, Any, int | None]]:
    """(name, model, epoch) of each ``[eval] checkpoints`` entry: ``last``, ``ema`` and ``swa`` from memory, ``best``
    and ``best_ema`` read back from their files (into the student's architecture, on its device). The first
    is the headline: ``results.json``'s top level and ``model.safetensors``."""
    from safetensors.torch import load_file

    from igdm_kit._storage.checkpoint import read_metadata
    from igdm_kit._storage.run_folder import BEST, BEST_EMA
    from igdm_kit._training.parts import build_student
    from igdm_kit.errors import CheckpointError

    parts.dist.barrier()  # rank 0 wrote the best checkpoints the other ranks read
    out = []
    epochs = r.model.train.epochs
    for name in r.model.eval.checkpoints:
        if name == "last":
            out.append((name, parts.student, epochs))
        elif name == "ema":
            out.append((name, ema.averaged.module, epochs))
        elif name == "swa":
            out.append((name, swa.averaged.module, epochs))
        else:
            path = folder / (BEST if name == "best" else BEST_EMA)
            if not path.is_file():
                raise CheckpointError(f"eval.checkpoints: {name!r} was never written ({path} is missing)",
                                      "the validation must run at least once (train.validate)")
            model = build_student(r, parts.info).to(parts.device)
            model.load_state_dict(load_file(str(path)))
            out.append((name, model, read_metadata(path).get("epoch")))
    return out


def judged_label(name: str, epoch: int | None) -> str:
    """How progress lines and summaries name a judged checkpoint: ``best, epoch 12``."""
    return name + (f", epoch {epoch}" if epoch is not None else "")


def evaluate_checkpoints(r: Recipe, parts, folder, judged: list[tuple[str, Any, int | None]], *, log,
                         progress: Any = None, check: Callable[[], None] | None = None,
                         agree: Callable[[], None] | None = None) -> dict[str, Any]:
    """The final evaluation of every checkpoint ``[eval] checkpoints`` names (``judged_models``). The first is
    the headline: its report is ``results.json``'s top level (and ``eval_flags.safetensors``, and the engine
    writes it as ``model.safetensors``); with more than one, each is also under ``"checkpoints"`` by name,
    with the epoch it holds (AutoAttack state and flags in files of its own)."""
    from igdm_kit._storage.run_folder import AA_STATE, FLAGS

    d = parts.dist
    reports: dict[str, dict[str, Any]] = {}
    for i, (name, model, epoch) in enumerate(judged):
        d.sync_buffers(model)  # the ranks' shards judge rank 0's model, the one saved
        suffix = "" if i == 0 else f".{name}"
        rep = final_evaluation(r, model, parts.teacher, *parts.test_data, parts.device, log=log, dist=d,
                               aa_state=folder / f"{AA_STATE}{suffix}" if d.is_main else None,
                               progress=progress if d.is_main else None,
                               flags_path=(folder / FLAGS if i == 0 else folder / f"eval_flags{suffix}.safetensors")
                               if d.is_main else None, check=check, agree=agree,
                               judged=judged_label(name, epoch))
        reports[name] = {**rep, "epoch": epoch}
    first = next(iter(reports))
    if r.model.eval.checkpoints == ["last"]:  # the default: results.json as it always was
        return {k: v for k, v in reports[first].items() if k != "epoch"}
    results = {**reports[first], "checkpoint": first}
    if len(reports) > 1:
        results["checkpoints"] = reports
    return results
