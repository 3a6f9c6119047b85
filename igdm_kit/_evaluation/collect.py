"""Finished runs gathered for one table (``igdm-kit report``): each run folder's resolved recipe and seed
(``manifest.json``), the evaluation of the chosen checkpoint (``results.json``, read as an ``EvalReport``),
its per-image flags (``eval_flags*.safetensors``) and what it cost (``metrics.jsonl``).

A path is a run folder or any folder above run folders (a sweep's, ``runs/``): the finished runs under it
are taken, unfinished ones skipped and named. A run folder given by name must be finished.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from igdm_kit._evaluation.aggregate import SeedRun, flags_of, run_values
from igdm_kit._storage.run_folder import MANIFEST, RunFolder
from igdm_kit.errors import IgdmKitError

#: ``--checkpoint`` choices: the final weights, the best by validation, the weight average.
CHECKPOINTS = ("last", "best", "ema", "best_ema")


@dataclass
class Run:
    """One finished run as a table reads it."""

    folder: Path
    recipe: dict[str, Any]
    seed: int | None
    checkpoint: str
    results: dict[str, Any]
    flags: str | None
    cost: dict[str, float] = field(default_factory=dict)

    def seed_run(self) -> SeedRun:
        return SeedRun(self.seed, str(self.folder), run_values(self.results), self.flags, self.results.get("n"))


def find_runs(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    """(finished run folders, unfinished ones skipped) under ``paths``, each once, in path order."""
    found: list[Path] = []
    skipped: list[Path] = []
    for path in paths:
        if not path.exists():
            raise IgdmKitError(f"{str(path)!r} does not exist", "pass run folders or folders holding them")
        folder = RunFolder(path)
        if folder.is_run():
            if not folder.is_finished():
                raise IgdmKitError(f"{str(path)!r} is a run that has not finished (no results.json)",
                                   "finish it (igdm-kit run ... --resume), or leave it out")
            found.append(path)
            continue
        for manifest in sorted(path.rglob(MANIFEST)):
            sub = RunFolder(manifest.parent)
            if sub.is_run():
                (found if sub.is_finished() else skipped).append(manifest.parent)
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        raise IgdmKitError("no finished run under " + ", ".join(repr(str(p)) for p in paths),
                           "pass run folders (holding results.json) or a sweep's output folder")
    return unique, skipped


def evaluation_of(results: dict[str, Any], checkpoint: str | None, folder: Path) -> tuple[str, dict, str | None]:
    """(checkpoint name, its evaluation, its flags file) of one run; ``checkpoint`` None: the headline."""
    headline = str(results.get("checkpoint", "last"))
    name = checkpoint or headline
    if name == headline:
        return name, results, flags_of(folder)
    reports = results.get("checkpoints") or {}
    if name not in reports:
        judged = ", ".join(reports) or headline
        raise IgdmKitError(f"{str(folder)!r} has no evaluation of its {name!r} checkpoint (it judged {judged})",
                           f"add {name!r} to the recipe's [eval] checkpoints and run it again, or pass "
                           f"--checkpoint {headline}")
    return name, reports[name], flags_of(folder, f".{name}")


def cost_of(metrics: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds per epoch (the mean of ``metrics.jsonl``'s ``seconds``), passes per step and peak memory
    where the run measured them (``_training.cost``)."""
    out: dict[str, float] = {}
    seconds = [float(r["seconds"]) for r in metrics if isinstance(r.get("seconds"), (int, float))]
    if seconds:
        out["seconds_per_epoch"] = math.fsum(seconds) / len(seconds)
    for key in ("passes_student", "passes_teacher"):
        values = [r[key] for r in metrics if isinstance(r.get(key), int)]
        if values:
            out[key] = float(max(values))
    memory = [r["peak_memory_mib"] for r in metrics if isinstance(r.get("peak_memory_mib"), (int, float))]
    if memory:
        out["peak_memory_mib"] = float(max(memory))
    return out


def read_run(path: Path, checkpoint: str | None) -> Run:
    """A finished run folder as a ``Run`` (the ``checkpoint``'s evaluation; None: its headline)."""
    folder = RunFolder(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        manifest = {}
    recipe = manifest.get("recipe") if isinstance(manifest, dict) else None
    if not isinstance(recipe, dict):
        raise IgdmKitError(f"{str(path / MANIFEST)!r} holds no resolved recipe",
                           "pass runs written by igdm-kit run or sweep")
    results = folder.results()
    name, evaluation, flags = evaluation_of(results, checkpoint, path)
    seed = manifest.get("seed", (recipe.get("train") or {}).get("seed"))
    return Run(path, recipe, seed if isinstance(seed, int) else None, name, evaluation, flags,
               cost_of(folder.metrics()))


def collect(paths: list[Path], checkpoint: str | None = None) -> tuple[list[Run], list[Path]]:
    """Every finished run under ``paths`` (and the unfinished ones skipped); without ``checkpoint`` each run's
    headline evaluation, refused when the runs' headlines differ (a table mixes no checkpoints)."""
    folders, skipped = find_runs(paths)
    runs = [read_run(p, checkpoint) for p in folders]
    names = {r.checkpoint for r in runs}
    if checkpoint is None and len(names) > 1:
        a = next(r for r in runs if r.checkpoint == sorted(names)[0])
        b = next(r for r in runs if r.checkpoint != a.checkpoint)
        raise IgdmKitError(f"the runs report different checkpoints ({a.checkpoint} in {str(a.folder)!r}, "
                           f"{b.checkpoint} in {str(b.folder)!r})", "choose one with --checkpoint last|best|ema")
    return runs, skipped
