"""What ``analyze linearity`` (``analyze``) and ``analyze alignment|pointwise`` (``analyze_students``) share:
the checkpoints' dataset and test data, ε from their runs, the line every table and figure names its data
with, a student–teacher pair (or several students) on one dataset, and the Rich table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.markup import escape

from igdm_kit._cli.console import err_console, out_console
from igdm_kit._cli.specs import eps_text, parse_eps
from igdm_kit._evaluation.sources import check_fits, dataset_for, open_dataset
from igdm_kit.errors import IgdmKitError

#: what a stop request ends in every analysis (the message of ``Interrupted``)
STOPPED_WHAT = "analysis stopped"


def _plotted(path: Path) -> None:
    err_console.print(escape(f"plot: {path}"), style="dim", highlight=False)


def recorded_eps(metas: list[dict[str, Any]], given: str | None) -> float:
    """``--eps`` when given, else the ε the checkpoints' runs were evaluated at (one for all), else 8/255."""
    if given is not None:
        return parse_eps(given)
    from igdm_kit._storage.checkpoint import judged_eps

    found = {e for e in (judged_eps(m, "Linf") for m in metas) if e is not None}  # the analyses are L∞
    if len(found) > 1:
        raise IgdmKitError("the checkpoints were evaluated at different ε (" +
                           ", ".join(eps_text(e) for e in sorted(found)) + ")",
                           "pass --eps to compare them at one radius")
    source = "the ε its run was evaluated at" if found else "no ε recorded in the checkpoint for L∞"
    radius = found.pop() if found else 8 / 255
    err_console.print(escape(f"ε = {eps_text(radius)} ({source}; --eps to change it)"), style="dim",
                      highlight=False)
    return radius


def context(name: str, n: int, eps: float | None = None) -> str:
    """'digits test, n=360, ε=0.1': what every analysis table and figure says it was computed on."""
    return f"{name} test, n={n}" + (f", ε={eps_text(eps)}" if eps is not None else "")


def _prepare(checkpoints: list[Path], dataset: str | None, limit: int | None, device: str,
             data_options: dict[str, Any] | None = None):
    """Checkpoint metadata, the dataset (from --dataset or the first checkpoint, ``--data-opt`` over its
    recorded options) and its test data."""
    from igdm_kit._evaluation.runner import load_eval_data
    from igdm_kit._runtime.threads import configure
    from igdm_kit._storage.checkpoint import read_metadata
    from igdm_kit.attacks import resolve_device

    configure()  # --threads / IGDM_KIT_THREADS, else the default
    metas = [read_metadata(c) for c in checkpoints]  # every path is checked before anything heavy runs
    name, options = dataset_for(checkpoints[0], metas[0], dataset, data_options)
    info = open_dataset(name, options).info()
    for c, m in zip(checkpoints, metas, strict=True):
        check_fits(c, m, name, info)
    x, y = load_eval_data(name, limit, options)
    return metas, name, x, y, resolve_device(device)


def _students_and_teacher(students: list[Path], teacher: Path, loader: str, name: str | None, arch: str | None,
                          arch_opt: list[str], dataset: str | None, limit: int | None, device: str,
                          data_opt: list[str] | None = None):
    """The student checkpoints (each checked against the data) and a teacher from any source a teacher
    loader reads, on the first student's dataset: (students, teacher, dataset, x, y, device, metadata)."""
    from igdm_kit._cli.specs import arch_options
    from igdm_kit._evaluation import sources
    from igdm_kit._storage.checkpoint import load_model

    if not students:
        raise IgdmKitError("no student given", "pass --student CKPT (repeatable)")
    source = sources.Source(teacher, loader=loader, name=name, arch=arch, arch_options=arch_options(arch_opt))
    given = arch_options(data_opt or [])
    metas, ds, x, y, dev = _prepare([*students, *([teacher] if source.is_native() else [])], dataset, limit, device,
                                    given)
    t, _, _, _ = sources.load(source, ds, dev, given)
    return [load_model(s, device=str(dev)) for s in students], t, ds, x, y, dev, metas[:len(students)]


def _table(title: str, columns: list[str], rows: list[list[str]]):
    from rich.table import Table

    table = Table(title=escape(title))  # paths are text, not Rich markup
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(escape(c) for c in row))
    out_console.print(table)
