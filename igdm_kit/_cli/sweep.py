"""``igdm-kit sweep RECIPE --grid key=v1,v2``: run a recipe family and collect one results table."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from igdm_kit._cli.console import err_console, make_progress, out_console, print_json
from igdm_kit._cli.recipe import SET_HELP

#: The largest grid a sweep expands without --max-variants (``igdm_kit._sweep.sweep.MAX_VARIANTS``; no import
#: of the sweep module here: ``--help`` stays light).
MAX_VARIANTS = 256


def register(app: typer.Typer) -> None:
    @app.command("sweep")
    def sweep(recipe: Path = typer.Argument(..., help="recipe file (.toml)"),
              grid: list[str] = typer.Option([], "--grid", help="dotted.key=v1,v2,... (repeatable): the "
                                             "values of that key, replacing the recipe's [sweep] values for it "
                                             "(other keys stay); the first value is the baseline the "
                                             "others are tested against"),
              set_: list[str] = typer.Option([], "--set", help=SET_HELP),
              seeds: str | None = typer.Option(None, "--seeds", help="run every variant once per seed "
                                               "(train.seed), e.g. 0-4 or 0,2,5; the table gives mean ± sd"),
              output: Path | None = typer.Option(None, "--output", "-o", help="folder of the variants' runs"),
              plot: Path | None = typer.Option(None, "--plot", help="PNG: GC and GD against robust accuracy"),
              resume: bool = typer.Option(False, "--resume", help="continue an interrupted variant"),
              overwrite: bool = typer.Option(False, "--overwrite", help="retrain every variant"),
              json_: bool = typer.Option(False, "--json", help="print the results as JSON on stdout"),
              launcher: str | None = typer.Option(None, "--launcher", help="run the variants as independent "
                                                  "jobs: local (a process pool), slurm (submitit), ..."),
              jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="jobs at once (the local launcher; "
                                       "more than 1 implies --launcher local)"),
              launcher_opt: list[str] = typer.Option([], "--launcher-opt", help="key=value option of the "
                                                     "launcher, e.g. partition=gpu (repeatable)"),
              max_variants: int = typer.Option(MAX_VARIANTS, "--max-variants", min=1, help="refuse a grid of "
                                               "more variants than this")) -> None:
        """Run every variant of a recipe (skipping finished ones) and print one table."""
        import shlex

        from igdm_kit._recipe import command
        from igdm_kit._sweep.sweep import SEEDS, parse_grid, parse_seeds

        swept = parse_grid(grid)
        again = command("sweep", recipe, grid=grid, overrides=set_, output=output, resume=True)
        if seeds is not None:  # an axis of its own, kept by the resume command
            swept[SEEDS] = parse_seeds(seeds)
            again += " --seeds " + shlex.quote(seeds)
        launch = launcher_choice(launcher, jobs, launcher_opt)
        if launch is not None:  # the resume command keeps the launcher
            again += " " + shlex.join(["--launcher", launch[0], *(["--jobs", str(jobs)] if jobs != 1 else []),
                                       *(a for o in launcher_opt for a in ("--launcher-opt", o))])
        execute(recipe, set_, swept, output, plot, json_, resume=resume, overwrite=overwrite,
                resume_command=again, launch=launch, max_variants=max_variants)


def launcher_choice(launcher: str | None, jobs: int, options: list[str]) -> tuple[str, dict] | None:
    """(launcher, its options) from ``--launcher``, ``--jobs`` and ``--launcher-opt``; None: in-process."""
    from igdm_kit._recipe import parse_override
    from igdm_kit.errors import IgdmKitError

    if launcher is None and jobs == 1:
        if options:
            raise IgdmKitError("--launcher-opt needs --launcher", "e.g. --launcher slurm --launcher-opt partition=gpu")
        return None
    name = launcher or "local"
    opts: dict = {}
    for item in options:
        keys, value = parse_override(item)
        opts[".".join(keys)] = value
    if jobs != 1:
        if name != "local":
            raise IgdmKitError(f"--jobs is the local launcher's, not {name!r}'s",
                               "set how many jobs run at once in the scheduler, or use --launcher local")
        opts["jobs"] = jobs
    return name, opts


def execute(recipe: Path, overrides: list[str], grid: dict, output: Path | None, plot: Path | None,
            json_: bool, *, resume: bool = False, overwrite: bool = False, resume_command: str | None = None,
            launch: tuple[str, dict] | None = None, max_variants: int = MAX_VARIANTS) -> None:
    from igdm_kit._evaluation.plotting import sweep_figure
    from igdm_kit._sweep.sweep import expand, run_sweep

    notes: list[str] = []
    variants = expand(recipe, overrides, grid, max_variants=max_variants, notes=notes)  # all validated, once
    for note in notes:
        err_console.print(escape(note), style="dim", highlight=False)
    with make_progress() as progress:
        log = lambda s: progress.console.print(s, style="dim", highlight=False, markup=False)  # noqa: E731
        if launch is not None:
            from igdm_kit._sweep.launch import launch_sweep

            summary = launch_sweep(recipe, launcher=launch[0], options=launch[1], overrides=overrides, grid=grid,
                                   output_dir=output, resume=resume, overwrite=overwrite, log=log,
                                   resume_command=resume_command, variants=variants)
        else:
            summary = run_sweep(recipe, overrides=overrides, grid=grid, output_dir=output, resume=resume,
                                overwrite=overwrite, resume_command=resume_command, log=log, progress=progress,
                                variants=variants)
    if summary is None:
        err_console.print("the jobs are submitted; when they have ended, run the same command again to collect "
                          "the table (finished variants are reused)")
        return
    if plot is not None:
        err_console.print(f"plot: {sweep_figure(summary, plot)}", style="dim", markup=False)
    if json_:
        print_json("sweep", summary)
    else:
        print_table(summary)


def print_table(summary: dict) -> None:
    """Accuracies with 95% intervals; against the first variant, McNemar's test on the same images."""
    from rich.table import Table

    if summary.get("seeds"):  # the seeds axis: mean ± sd over seeds, paired tests
        from igdm_kit._cli.seeded import print_seeded_table

        print_seeded_table(summary)
        print_correlation(summary)
        return
    rows = summary["rows"]
    cols = [(k, label) for k, label in summary.get("columns", []) if any(k in r for r in rows)]
    cols += [(k, label) for k, label in (("gd", "GD ↓"), ("gc", "GC ↑")) if any(k in r for r in rows)]
    n = {r.get("n") for r in rows}
    where = f"{n.pop()} test images" if len(n) == 1 and None not in n else "the test split"
    tests = {c["variant"]: c.get("rows", {}) for c in summary.get("versus_first", [])}
    mixed = len({tuple(sorted(r["worst_over"])) for r in rows if "worst_over" in r}) > 1
    caption = _caption(len(rows)) + ("; the variants ran different attacks, so each worst case covers its own "
                                     "and they are not compared" if mixed else "")
    table = Table(title=escape(f"{summary['recipe']} — accuracy (%) on {where}"), caption=escape(caption))
    table.add_column("variant")
    for key, label in cols:
        table.add_column(f"{label} (own attacks)" if mixed and key == "worst" else label, justify="right")
    for i, r in enumerate(rows):
        marks = tests.get(r["variant"], {}) if i and len(rows) > 2 else {}
        table.add_row(escape(r["variant"]), *[_cell(r, k, marks.get(k)) for k, _ in cols])
    if len(rows) == 2:  # a base method and the same with the module: what the module changed, tested
        a, b = rows
        table.add_row("change", *["—" if mixed and k == "worst" else
                                  _delta(a.get(k), b.get(k), k, tests.get(b["variant"], {}).get(k))
                                  for k, _ in cols], style="bold")
    out_console.print(table)
    print_correlation(summary)


def print_correlation(summary: dict) -> None:
    """GC's and GD's correlation with robust accuracy across the variants (on their means over seeds)."""
    rows = summary["rows"]
    corr = summary.get("correlation") or {}
    if corr.get("gc") is not None or corr.get("gd") is not None:
        against = dict(summary.get("columns") or []).get(corr["against"], corr["against"])  # its header
        out_console.print(f"correlation with {against} accuracy across {len(rows)} variants: "
                          + ", ".join(f"{g.upper()} r = {corr[g]:.2f}" for g in ("gc", "gd")
                                      if corr.get(g) is not None)
                          + (" (few variants: r is a description, not evidence)" if len(rows) < 8 else ""))


def _caption(n_rows: int) -> str:
    text = ("accuracy (95% Wilson interval); worst = the worst case per image over every attack; worst cls = "
            "its worst class (robust fairness; the class may differ between variants, its change is not tested)")
    if n_rows == 2:
        return text + "; change: second − first in points, McNemar's exact test on the same images, " \
                      "n.s. = not significant (p ≥ 0.05)"
    if n_rows > 2:
        return text + "; † = differs from the first variant (McNemar's exact test, p < 0.05)"
    return text


def _cell(r: dict, key: str, test: dict | None = None) -> str:
    v = r.get(key)
    if v is None:
        return "—"
    if key in ("gd", "gc"):
        return f"{v:.3f}"
    ci = (r.get("ci95") or {}).get(key)
    mark = "†" if test and test.get("significant") else ""
    return f"{v:.2f}{mark}" + (f" ({ci[0]:.0f}–{ci[1]:.0f})" if ci else "")


def _delta(a, b, key: str, test: dict | None) -> str:
    from igdm_kit._evaluation.stats import fmt_p

    if a is None or b is None:
        return "—"
    d = b - a
    if key in ("gd", "gc"):
        return f"{d:+.3f}"
    if test is None:
        return f"{d:+.2f}"
    return f"{d:+.2f} (p={fmt_p(test['p_value'])})" if test["significant"] else \
        f"{d:+.2f} n.s. (p={fmt_p(test['p_value'])})"
