"""``igdm-kit sweep --launcher NAME``: the variants of a sweep as independent jobs of a launcher (a plugin
kind, ``register_launchers``: ``local`` with ``--jobs N``, ``slurm`` through submitit).

1. Every variant is validated, and a variant whose folder already holds its finished run is reused, as in a
   sequential sweep, ``--resume`` or not (an unfinished one needs ``--resume``; the error comes before
   anything launches): a finished variant or teacher is never launched again.
2. Each teacher a variant trains from a ``[teacher] recipe`` that is not finished yet becomes a job of its
   own — one per teacher run folder, each after its own teacher's — and the variants that need it run
   after it: a cached teacher is never trained twice at once, nor by two variants.
3. A variant's job is ``igdm-kit run RECIPE --set ... --output FOLDER``, the same run the sequential sweep
   does in-process (same recipe digest, same folder), so either collects the other's runs.
4. When the jobs end, the table is collected from the run folders exactly as the sequential sweep builds
   it. A launcher that submits without waiting returns None: the same command collects the table later.

SIGINT and SIGTERM to this process are raised as a ``StopRequest`` carrying the signal: the launcher passes
the same signal on to its running jobs (each saves and stops) and says so; the sweep then ends with
``Interrupted`` (128 + the signal) and the command that resumes it.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from igdm_kit import _recipe as recipe_mod
from igdm_kit._runtime.signals import stop_requests, stopped
from igdm_kit._storage.run_folder import RunFolder
from igdm_kit._sweep.sweep import Variant, expand, row_of, summarize, sweep_folder, toml_value, variant_folder
from igdm_kit.errors import IgdmKitError
from igdm_kit.interfaces import Job, StopRequest


@dataclass
class Context:
    """``interfaces.LaunchContext``."""

    workdir: str
    jobs_dir: str
    log: Callable[[str], None]


def jobs_folder(base: Path, n_variants: int, variants: list[Variant]) -> Path:
    """Where the launcher keeps job logs and scheduler files: inside the sweep's folder, unless a lone
    variant runs in that folder itself (then next to it)."""
    inside = n_variants > 1 or bool(variants[0].overrides)
    return base / "jobs" if inside else base.parent / f"{base.name}.jobs"


def variant_command(path: str | Path, overrides: list[str], v: Variant, folder: Path, *, resume: bool,
                    overwrite: bool) -> tuple[str, ...]:
    cmd = [sys.executable, "-m", "igdm_kit", "run", str(path)]
    for item in [*overrides, *(f"{k}={toml_value(val)}" for k, val in v.overrides.items()), "sweep={}"]:
        cmd += ["--set", item]
    cmd += ["--output", str(folder)]
    return tuple(cmd + (["--resume-or-start"] if resume else []) + (["--overwrite"] if overwrite else []))


def teacher_jobs(variants: list[Variant], jobs_dir: Path) -> tuple[list[Job], dict[str, str]]:
    """Jobs for the unfinished teachers of ``variants`` — one per teacher run folder, each after the job of
    its own teacher, listed innermost first — and the job each variant waits for, by variant label."""
    jobs: list[Job] = []
    by_folder: dict[Path, str] = {}
    needs: dict[str, str] = {}
    for v in variants:
        levels: list[str] = []  # the jobs of this variant's teacher chain, outermost first
        new: list[tuple[str, str]] = []  # (name, recipe) of the jobs planned for this chain
        t = v.recipe.model.teacher
        while t is not None and t.recipe is not None:
            sub = recipe_mod.load(t.recipe)
            folder = sub.default_output_dir().resolve()
            if folder in by_folder:  # planned for an earlier variant, with its own teachers
                levels.append(by_folder[folder])
                break
            if finished(RunFolder(folder).decide(sub, resume=True, overwrite=False, reuse_finished=True)):
                break
            name = f"teacher:{sub.name}"
            while name in by_folder.values():
                name += "'"
            by_folder[folder] = name
            levels.append(name)
            new.append((name, t.recipe))
            t = sub.model.teacher
        after = {outer: (inner,) for outer, inner in zip(levels, levels[1:])}
        for name, teacher_recipe in reversed(new):
            jobs.append(Job(name, (sys.executable, "-m", "igdm_kit", "run", teacher_recipe, "--resume-or-start"),
                            str(jobs_dir / f"{_safe(name)}.log"), after.get(name, ())))
        if levels:
            needs[v.label] = levels[0]
    return jobs, needs


def finished(mode: str) -> bool:
    """Whether ``RunFolder.decide``'s answer is a finished run to reuse (``--resume`` of one says "finished")."""
    return mode in ("reuse", "finished")


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "=.,-_" else "_" for c in name)


def launch_sweep(path: str | Path, *, launcher: str, options: dict[str, Any], overrides: list[str] | None = None,
                 grid: dict[str, list[Any]] | None = None, output_dir: str | Path | None = None,
                 resume: bool = False, overwrite: bool = False, log: Callable[[str], None] = lambda s: None,
                 resume_command: str | None = None, variants: list[Variant] | None = None) -> dict[str, Any] | None:
    """Run the sweep's variants (``variants``: as ``expand`` made them, else expanded here) as jobs of
    ``launcher``; the summary ``run_sweep`` returns, or None when the jobs were submitted without waiting for
    them. SIGINT/SIGTERM: ``Interrupted``, 128 + the signal."""
    hint = f"resume with: {resume_command or 'the same command with --resume'}"
    with stop_requests():
        try:
            return _launch_sweep(path, launcher=launcher, options=options, overrides=list(overrides or []),
                                 grid=grid, output_dir=output_dir, resume=resume, overwrite=overwrite, log=log,
                                 variants=variants)
        except KeyboardInterrupt as exc:
            signum = exc.signum if isinstance(exc, StopRequest) else signal.SIGINT
            raise stopped(signum, "sweep stopped", hint) from None


def _launch_sweep(path: str | Path, *, launcher: str, options: dict[str, Any], overrides: list[str],
                  grid: dict[str, list[Any]] | None, output_dir: str | Path | None, resume: bool, overwrite: bool,
                  log: Callable[[str], None], variants: list[Variant] | None = None) -> dict[str, Any] | None:
    from igdm_kit.factories import create_launcher

    chosen = create_launcher(launcher, options)  # bad launcher options fail before any folder is looked at
    variants = variants if variants is not None else expand(path, overrides, grid)
    base = sweep_folder(variants, output_dir)
    folders = {v.label: variant_folder(base, v, len(variants)) for v in variants}
    reused = {v.label for v in variants if not overwrite and finished(RunFolder(folders[v.label]).decide(
        v.recipe, resume=resume, overwrite=False, reuse_finished=True))}
    todo = [v for v in variants if v.label not in reused]
    jobs_dir = jobs_folder(base, len(variants), variants)
    jobs_dir.mkdir(parents=True, exist_ok=True)
    jobs, needs = teacher_jobs(todo, jobs_dir)
    for v in todo:
        jobs.append(Job(v.label, variant_command(path, overrides, v, folders[v.label], resume=resume,
                                                 overwrite=overwrite),
                        str(jobs_dir / f"{_safe(v.label)}.log"), (needs[v.label],) if v.label in needs else ()))
    for label in sorted(reused):
        log(f"variant {label}: reusing the finished run in {folders[label]}")
    if jobs:
        log(f"{len(jobs)} job{'s' if len(jobs) != 1 else ''} with launcher {launcher!r}; logs in {jobs_dir}")
        status = chosen.launch(jobs, Context(str(Path.cwd()), str(jobs_dir), log))
        if any(s is None for s in status.values()):
            return None
        failed = [j for j in jobs if status.get(j.name) != 0]
        if failed:
            raise IgdmKitError(f"sweep: {len(failed)} of {len(jobs)} jobs failed ({', '.join(j.name for j in failed)})",
                               f"see {failed[0].log}; then run the same command with --resume")
    rows = [row_of(v, SimpleNamespace(results=RunFolder(folders[v.label]).results(), output_dir=folders[v.label],
                                      reused=v.label in reused)) for v in variants]
    return summarize(path, base, variants, rows)
