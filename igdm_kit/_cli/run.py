"""``igdm-kit run RECIPE``: validate the recipe whole, train, evaluate, print a summary."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.markup import escape

from igdm_kit._cli.console import err_console, make_progress, out_console, print_json
from igdm_kit._cli.recipe import SET_HELP


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run(recipe: Path = typer.Argument(..., help="recipe file (.toml)"),
            set_: list[str] = typer.Option([], "--set", help=SET_HELP),
            output: Path | None = typer.Option(None, "--output", "-o", help="run folder (default: the recipe's output.dir, else runs/NAME)"),
            resume: bool = typer.Option(False, "--resume", help="continue the unfinished run in the folder "
                                        "(an error when there is none)"),
            resume_or_start: bool = typer.Option(False, "--resume-or-start", hidden=True,
                                                 help="continue the run in the folder, or start it (the sweep "
                                                 "launchers' jobs)"),
            overwrite: bool = typer.Option(False, "--overwrite", help="replace a finished run in the folder"),
            json_: bool = typer.Option(False, "--json", help="print the results as JSON on stdout")) -> None:
        """Train and evaluate a recipe (validated whole before anything runs)."""
        from igdm_kit import _recipe as recipe_mod

        r = recipe_mod.load(recipe, set_)  # every error surfaces here, before torch is even imported
        if resume and not resume_or_start:
            from igdm_kit._storage.run_folder import check_resumable

            check_resumable(r, output)
        resume = resume or resume_or_start
        if r.model.sweep:  # a recipe family (e.g. the quickstart): run every variant, one table
            from igdm_kit._cli.sweep import execute
            from igdm_kit._recipe import command

            again = command("run", recipe, overrides=set_, output=output, resume=True)
            execute(recipe, set_, {}, output, None, json_, resume=resume, overwrite=overwrite,
                    resume_command=again)
            return
        from igdm_kit._runtime import distributed
        from igdm_kit._training.engine import run as run_recipe

        try:
            with make_progress() as progress:
                result = run_recipe(r, output_dir=output, resume=resume, overwrite=overwrite,
                                    log=lambda s: progress.console.print(s, style="dim", highlight=False, markup=False),
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

    from igdm_kit._evaluation.report import EvalReport

    if any(k.startswith("val_") for row in result.metrics for k in row):
        out_console.print(validation_table(result))
    table = Table(title=escape(f"{result.recipe.name} — {result.output_dir}"))
    table.add_column("metric")
    table.add_column("value", justify="right")
    last = result.metrics[-1] if result.metrics else {}
    for k, v in last.items():
        if k in ("epoch", "seconds") or k.startswith("val_") or not isinstance(v, (int, float)):
            continue
        table.add_row(f"last epoch: {k.replace('_', ' ')}", f"{v:.4g}")
    res = result.results
    reports = res.get("checkpoints") or {res.get("checkpoint", "last"): res}
    for name, rep in reports.items():
        where = "" if len(reports) == 1 and name == "last" else f"{name}" + (
            f" (epoch {rep['epoch']})" if rep.get("epoch") is not None else "") + ": "
        report = EvalReport.from_json(rep)
        for a in (report.rows() if len(report.attacks) > 1 else report.attacks).values():
            lo, hi = a.ci95
            table.add_row(escape(f"{where}test {a.label} acc (%)"), f"{a.accuracy:.2f} ({lo:.1f}–{hi:.1f})")
        found = report.worst_class("worst" if len(report.attacks) > 1 else next(iter(report.attacks), ""))
        if found is not None:  # robust fairness: the class the model serves worst
            (cls, a), (lo, hi) = found, found[1].ci95
            table.add_row(escape(f"{where}test worst class ({cls}, {a.correct}/{a.total}) acc (%)"),
                          f"{a.accuracy:.2f} ({lo:.1f}–{hi:.1f})")
        for k, v in (rep.get("alignment") or {}).items():
            if isinstance(v, (int, float)):
                table.add_row(f"{where}test {k.upper()}", f"{v:.4f}")
    from igdm_kit._evaluation.shifts import SUMMARY

    for key, label in SUMMARY.items():  # [eval] shifts: Table 9's columns
        m = ((res.get("shifts") or {}).get("summary") or {}).get(key)
        if m:
            table.add_row(f"{label} acc (%, {m['units']} shifts)", f"{m['accuracy']:.2f} ({m['ci95'][0]:.1f}–"
                          f"{m['ci95'][1]:.1f})")
    table.caption = f"{res.get('threat', 'Linf')} ε = {res.get('eps', 0):.4g}, n = {res.get('n')}; (95% Wilson interval)"
    out_console.print(table)
    headline = res.get("checkpoint", "last")
    epoch = (res.get("checkpoints") or {}).get(headline, {}).get("epoch", res.get("epoch"))
    err_console.print(escape(f"checkpoint: {result.output_dir / 'model.safetensors'}")
                      + ("" if headline == "last" else escape(f" (the headline: {headline}"
                                                              + (f", epoch {epoch})" if epoch is not None else ")"))),
                      style="dim", highlight=False)


def validation_table(result):
    """Accuracy (%) on the validation split per validated epoch; ★ marks the epoch ``best`` holds."""
    from rich.table import Table

    from igdm_kit._training.validation import best_epoch

    r = result.recipe
    v = r.model.train.validation
    labels = {s.key: s.label for s in r.val_specs} | {"robust": "robust"}
    prefixes = [p for p in ("", "ema_") if any(f"val_{p}robust" in row for row in result.metrics)]
    cols = [(f"val_{p}{k}", ("EMA " if p else "") + lab) for p in prefixes for k, lab in labels.items()]
    best = {p: best_epoch(result.metrics, f"val_{p}{v.metric}") if v else None for p in prefixes}
    table = Table(title=f"validation split, {v.threat if v else ''} ε = {v.eps:.4g}" if v else "validation split",
                  caption=f"accuracy (%); ★ = the epoch best.safetensors holds (by {v.metric if v else '?'})")
    table.add_column("epoch", justify="right")
    table.add_column("loss", justify="right")
    for _, label in cols:
        table.add_column(label, justify="right")
    for row in result.metrics:
        if not any(c in row for c, _ in cols):
            continue
        cells = []
        for c, _ in cols:
            prefix = "ema_" if c.startswith("val_ema_") else ""
            mark = "★" if best.get(prefix) and best[prefix][0] == row["epoch"] and c == f"val_{prefix}{v.metric}" else ""
            cells.append(f"{row[c]:.2f}{mark}" if c in row else "—")
        table.add_row(str(row["epoch"]), f"{row.get('loss', float('nan')):.4g}", *cells)
    return table
