"""The shell commands that reproduce a run — built here alone (resume hints, sweep hints, docs)."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path


def command(verb: str, recipe: str | Path | None, *, overrides: Sequence[str] = (), grid: Sequence[str] = (),
            output: str | Path | None = None, resume: bool = False) -> str:
    """``igdm-kit VERB RECIPE [--grid ...] [--set ...] [--resume] [--output DIR]``, shell-quoted."""
    parts = ["igdm-kit", verb, str(recipe) if recipe is not None else "RECIPE"]
    parts += [a for g in grid for a in ("--grid", g)]
    parts += [a for s in overrides for a in ("--set", s)]
    if resume:
        parts.append("--resume")
    if output is not None:
        parts += ["--output", str(output)]
    return shell_command(parts)


def shell_command(parts: Sequence[str | Path]) -> str:
    """``parts`` as one shell-quoted command line."""
    return " ".join(shlex.quote(str(p)) for p in parts)


def eval_command(options: Sequence[tuple[str, object]]) -> str:
    """``igdm-kit eval`` with the given (option, value) pairs; None values are left out, True is a flag."""
    parts: list[str] = ["igdm-kit", "eval"]
    for flag, value in options:
        if value is True:
            parts.append(flag)
        elif value is not None and value is not False:
            parts += [flag, str(value)]
    return shell_command(parts)


def resume_command(recipe, output: str | Path) -> str:
    """The command that resumes one recipe's run in ``output`` (a validated ``Recipe``)."""
    return command("run", recipe.path, overrides=recipe.overrides, output=output, resume=True)
