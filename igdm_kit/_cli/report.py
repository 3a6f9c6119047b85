"""``igdm-kit report RUN_OR_SWEEP_DIR...``: finished runs as a paper's table (``_evaluation.grouping``), a
Rich table on stdout or ``--format markdown|latex|csv`` (``_evaluation.export``), ``--output`` to a file."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path

import typer
from rich.markup import escape

from igdm_kit._cli.console import err_console, out_console, print_json
from igdm_kit._cli.options import Json


class Format(str, Enum):
    rich = "rich"
    markdown = "markdown"
    latex = "latex"
    csv = "csv"


def _keys(values: list[str]) -> list[str] | None:
    """``--rows a,b --rows c`` → [a, b, c]; none given → None (the default layout)."""
    keys = [k.strip() for v in values for k in v.split(",") if k.strip()]
    return keys or None


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report(paths: list[Path] = typer.Argument(..., help="run folders, or folders holding them (a sweep's)"),
               rows: list[str] = typer.Option([], "--rows", help="recipe keys of the rows, e.g. method.name "
                                              "(a table such as 'method' takes all its keys; default: method)"),
               cols: list[str] = typer.Option([], "--cols", help="recipe keys of the column groups, e.g. "
                                              "module.alpha (default: module — base, then +module, with Δ)"),
               metrics: str | None = typer.Option(None, "--metrics", help="comma-separated metric keys, or all "
                                                  "(default: clean,pgd20,cw,autoattack where the runs have them)"),
               checkpoint: str | None = typer.Option(None, "--checkpoint", help="last, best, ema or best_ema "
                                                     "(default: each run's headline evaluation)"),
               format_: Format = typer.Option(Format.rich, "--format", "-f", help="rich, markdown, latex or csv"),
               output: Path | None = typer.Option(None, "--output", "-o", help="write the table to this file"),
               json_: Json = False) -> None:
        """Collect finished runs into one table: rows and column groups by recipe keys, seeds aggregated
        (mean ± sd, 95% t interval), each later group against the first (Δ, paired t across seeds, the
        per-image test pooled over them), and the cost of each (seconds per epoch, passes per step, peak
        memory where measured). Runs that differ in anything but the grouping keys and the seed are refused."""
        from igdm_kit._evaluation.collect import CHECKPOINTS, collect
        from igdm_kit._evaluation.export import to_csv, to_latex, to_markdown
        from igdm_kit._evaluation.grouping import build
        from igdm_kit.errors import IgdmKitError

        if checkpoint is not None and checkpoint not in CHECKPOINTS:
            raise IgdmKitError(f"--checkpoint {checkpoint!r} is not a checkpoint a run evaluates",
                               "use one of: " + ", ".join(CHECKPOINTS))
        runs, skipped = collect(list(paths), checkpoint)
        for folder in skipped:
            err_console.print(escape(f"skipped {folder}: not finished"), style="dim", highlight=False)
        table = build(runs, _keys(rows), _keys(cols), _keys([metrics]) if metrics else None)
        if json_:
            print_json("report", table.to_json())
            return
        if format_ is Format.rich:
            if output is not None:
                raise IgdmKitError("--output writes markdown, latex or csv", "add --format markdown|latex|csv")
            print_rich(table)
            return
        text = {Format.markdown: to_markdown, Format.latex: to_latex, Format.csv: to_csv}[format_](table)
        if output is None:
            sys.stdout.write(text)
            return
        from igdm_kit._storage.io import atomic_write_text

        atomic_write_text(output, text)
        err_console.print(escape(f"{format_.value}: {output}"), style="dim", highlight=False)


def print_rich(t) -> None:
    """The table as Rich draws it: per row its column groups and Δ (a rule between rows), a column per metric
    and per cost."""
    from rich.table import Table

    from igdm_kit._evaluation.export import caption, headers, layout, rows_of

    table = Table(title=escape(f"{t.context.get('runs')} runs — " + ", ".join(
        f"{what} by {' · '.join(keys)}" for what, keys in (("rows", t.context["rows_by"]),
                                                         ("column groups", t.context["cols_by"])) if keys)),
                  caption=escape(caption(t)))
    head = headers(t)
    table.add_column(escape(head[0]))
    for h in head[1:]:
        table.add_column(escape(h), justify="right")
    lines = layout(t)
    for k, (line, row) in enumerate(zip(lines, rows_of(t), strict=True)):
        last = k + 1 == len(lines) or lines[k + 1].i != line.i
        table.add_row(*(f"[bold]{escape(s)}[/]" if b else escape(s) for s, b in row),
                      style="italic" if line.kind == "change" else None, end_section=last)
    out_console.print(table)
