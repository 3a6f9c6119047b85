"""``igdm-kit run RECIPE``: validate the recipe whole, train, evaluate, print a summary."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from .console import err_console, make_progress, out_console, print_json
from .recipe import SET_HELP


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run(recipe: Path = typer.Argument(..., help="recipe file (.toml)"),
            set_: list[str] = typer.Option([], "--set", help=SET_HELP),
            output: Path | None = typer.Option(None, "--output", "-o", help="run folder (default: the recipe's output.dir, else runs/NAME)"),
            resume: bool = typer.Option(False, "--resume", help="continue the unfinished run in the folder"),
            overwrite: bool = typer.Option(False, "--overwrite", help="replace a finished run in the folder"),
            json_: bool = typer.Option(False, "--json", help="print the results as JSON on stdout")) -> None:
        """Train and evaluate a recipe (validated whole before anything runs)."""
        from .. import recipe as recipe_mod

        r = recipe_mod.load(recipe, set_)  # every error surfaces here, before torch is even imported
        if r.model.sweep:  # a recipe family (e.g. the quickstart): run every variant, one table
            from ..recipe import command
            from .sweep import execute

            again = command("run", recipe, overrides=set_, output=output, resume=True)
            execute(recipe, set_, {}, output, None, json_, resume=resume, overwrite=overwrite,
                    resume_command=again)
            return
        from ..engine import run as run_recipe

        from .. import distributed

        try:
            with make_progress() as progress:
                result = run_recipe(r, output_dir=output, resume=resume, overwrite=overwrite,
                                    log=lambda s: progress.console.print(s, style="dim", highlight=False),
                                    progress=progress)
        finally:
            distributed.shutdown(distributed.from_env())
        if os.environ.get("RANK", "0") != "0":
            return  # under torchrun, rank 0 prints the results
        if json_:
            print_json("run", {"output_dir": str(result.output_dir), "results": result.results,
                               "metrics": result.metrics})
            return
        print_summary(result)


def print_summary(result) -> None:
    from rich.table import Table

    table = Table(title=f"{result.recipe.name} — {result.output_dir}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    last = result.metrics[-1] if result.metrics else {}
    for k, v in last.items():
        if k in ("epoch", "seconds") or not isinstance(v, (int, float)):
            continue
        table.add_row(f"last epoch: {k.replace('_', ' ')}", f"{v:.4g}")
    res = result.results
    rows = list(res.get("metrics", {}).values()) + ([res["worst"]] if len(res.get("metrics", {})) > 1 else [])
    for m in rows:
        lo, hi = m["ci95"]
        table.add_row(f"test {m['label']} acc (%)", f"{m['accuracy']:.2f} ({lo:.1f}–{hi:.1f})")
    from ..shifts import SUMMARY

    for key, label in SUMMARY.items():  # [eval] shifts: Table 9's columns
        m = ((res.get("shifts") or {}).get("summary") or {}).get(key)
        if m:
            table.add_row(f"{label} acc (%, {m['units']} shifts)", f"{m['accuracy']:.2f} ({m['ci95'][0]:.1f}–"
                          f"{m['ci95'][1]:.1f})")
    for k, v in (result.results.get("alignment") or {}).items():
        if isinstance(v, (int, float)):
            table.add_row(f"test {k.upper()}", f"{v:.4f}")
    table.caption = f"{res.get('threat', 'Linf')} ε = {res.get('eps', 0):.4g}, n = {res.get('n')}; (95% Wilson interval)"
    out_console.print(table)
    err_console.print(f"checkpoint: {result.output_dir / 'model.safetensors'}", style="dim")
