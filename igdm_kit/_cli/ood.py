"""Shift evaluation on the command line: ``igdm-kit eval --shifts`` (one model) and ``igdm-kit analyze ood``
(several side by side, Table 9), over ``igdm_kit._evaluation.shifts``. torch is imported inside the functions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from igdm_kit._cli.console import err_console, out_console, print_json
from igdm_kit._cli.options import (
    BatchSize,
    DataOpt,
    Dataset,
    Device,
    Json,
    Limit,
    Plot,
    ShowProgress,
    joined,
    seed_in_range,
)
from igdm_kit._cli.stopping import FLAG, checked, stoppable
from igdm_kit.errors import IgdmKitError

SHIFTS_HELP = ("comma-separated shifts (corruptions, corruption-files, cifar10.1, cinic10, threats, ...; "
               "see `igdm-kit plugins list`)")
SHIFT_HELP = "a shift with options, e.g. corruptions:severities=[1,3,5] or threats:l2_eps=0.25 (repeatable)"


def parse_shifts(text: str | None, specs: list[str]) -> list[Any]:
    from igdm_kit._cli.specs import parse_cli_shift
    from igdm_kit._cli.specs import split_items as _split

    names = [s for s in _split(text or "")]
    if text is not None and not names:
        raise IgdmKitError("--shifts names no shift", "e.g. --shifts corruptions,threats")
    return list(dict.fromkeys(names)) + [parse_cli_shift(s) for s in specs]


def run_shifts(src, shifts: list[Any], attacks: list[Any] | None, **kwargs: Any) -> dict[str, Any]:
    """Load one model through its source and evaluate it under ``shifts``."""
    return run_shifts_many([src], shifts, attacks, **kwargs)[0]


def run_shifts_many(srcs: list, shifts: list[Any], attacks: list[Any] | None, *, threat: str,
                    radius: float | None, dataset: str | None, limit: int | None, batch_size: int, device: str,
                    seed: int, progress: bool, keep_flags: bool = False,
                    data_options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Load the models (of one dataset) and evaluate them on the same shifted sets, each set made once;
    the radius defaults to the first model's recorded ε."""
    from igdm_kit._cli.console import progress_callback
    from igdm_kit._cli.specs import eps_text
    from igdm_kit._evaluation import sources
    from igdm_kit._evaluation.runner import load_eval_data
    from igdm_kit._evaluation.shifts import evaluate_models
    from igdm_kit._recipe.specs import DEFAULT_EPS, DEFAULT_SHIFT_ATTACKS, resolve, resolve_shifts
    from igdm_kit.attacks import resolve_device

    resolve_shifts(shifts, "--shifts")  # bad names fail before any model loads
    resolve(list(attacks or DEFAULT_SHIFT_ATTACKS), threat, "--attacks")
    dev = resolve_device(device)
    loaded = [sources.load(src, dataset, dev, data_options) for src in srcs]
    _, meta, ds_name, options = loaded[0]
    other = next((str(s.path) for s, (_, _, d, _) in zip(srcs, loaded) if d != ds_name), None)
    if other is not None:
        raise IgdmKitError(f"{other!r} was trained on another dataset than {str(srcs[0].path)!r}",
                           "compare checkpoints of one dataset, or pass --dataset")
    if radius is None:
        from igdm_kit._storage.checkpoint import judged_eps

        radius = judged_eps(meta, threat)
        radius = DEFAULT_EPS[threat] if radius is None else radius
    x, y = load_eval_data(ds_name, limit, options)
    info = sources.open_dataset(ds_name, options).info()
    err_console.print(escape(f"shifts of {len(srcs)} model(s) on {ds_name} test ({x.shape[0]} images, {dev}, "
                             f"{threat} ε = {eps_text(radius)})"), style="dim", highlight=False)
    with FLAG, progress_callback(progress) as cb:  # SIGINT/SIGTERM: after the current batch, 128 + signal
        results = evaluate_models([net for net, *_ in loaded], x, y, shifts, dataset=ds_name, info=info,
                                  attacks=attacks, eps=radius, threat=threat, batch_size=batch_size, device=dev,
                                  seed=seed, limit=limit, progress=checked(cb, "shift evaluation stopped"),
                                  keep_flags=keep_flags)
    for w in results[0]["warnings"]:
        err_console.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)
    return [{"checkpoint": str(src.path), **r} for src, r in zip(srcs, results)]


def acc_text(m: dict[str, Any] | None) -> str:
    if not m:
        return "—"
    lo, hi = m["ci95"]
    return f"{m['accuracy']:.2f} ({lo:.1f}–{hi:.1f})"


def print_shift_table(result: dict[str, Any]) -> None:
    """One model: every set (clean, robust) and threat shift (robust), then Table 9's columns."""
    from rich.table import Table

    from igdm_kit._cli.specs import eps_text

    table = Table(title=escape(f"{result['checkpoint']} — {result['dataset']}, {result['threat']} "
                               f"ε={eps_text(result['eps'])}, robust = worst of {', '.join(result['attacks'])}"),
                  caption="95% Wilson intervals; threat shifts: robust accuracy on the test set")
    for col, j in (("set / threat", "left"), ("kind", "left"), ("n", "right"), ("clean (%)", "right"),
                   ("robust (%)", "right")):
        table.add_column(col, justify=j)
    for row in [result["test"], *result["rows"].values()]:
        threat = row["group"] == "threat"
        table.add_row(escape(row["label"]), row["group"], str(row["n"]), "" if threat else acc_text(row["clean"]),
                      acc_text(row["robust"]))
    out_console.print(table)
    print_summary([result])


def print_summary(results: list[dict[str, Any]], comparisons: list[dict[str, Any] | None] | None = None) -> None:
    """Table 9: one row per checkpoint — ID clean/robust, OOD_d clean/robust, OOD_t robust — and, for each
    after the first, B − A with Wilcoxon's p over the shifts."""
    from rich.table import Table

    from igdm_kit._evaluation.plotting import checkpoint_label
    from igdm_kit._evaluation.shifts import SUMMARY
    from igdm_kit._evaluation.stats import fmt_p

    names = [r["checkpoint"] for r in results]
    first = results[0]
    units = {c: (first["summary"].get(c) or {}).get("units", 0) for c in SUMMARY}
    table = Table(title=escape(f"Robustness under shifts (Table 9) — {first['dataset']}, n={first['n']}"),
                  caption="OOD_d: mean over dataset shifts (a corruption = mean of its severities), "
                          "OOD_t: mean over threat shifts; intervals: the mean of the rows' 95% Wilson bounds; "
                          "p: Wilcoxon signed-rank over the shifts against the first checkpoint")
    table.add_column("checkpoint")
    for col in ("ID clean", "ID robust", f"OOD_d clean ({units['ood_d_clean']})",
                f"OOD_d robust ({units['ood_d_robust']})", f"OOD_t robust ({units['ood_t_robust']})"):
        table.add_column(col, justify="right")
    for i, r in enumerate(results):
        s = r["summary"]
        table.add_row(escape(checkpoint_label(r["checkpoint"], names)), acc_text(s["id_clean"]),
                      acc_text(s["id_robust"]), *(acc_text(s.get(c)) for c in SUMMARY))
        comp = comparisons[i] if comparisons and i < len(comparisons) else None
        if comp:
            cells = []
            for c in SUMMARY:
                d = comp["summary"].get(c)
                cells.append("" if d is None else f"{d['difference']:+.2f}, {d['b_better']}/{d['units']} better, "
                             f"p={fmt_p(d['p_value'])}")
            idc, idr = comp["rows"]["test"]["clean"], comp["rows"]["test"]["robust"]
            table.add_row("  vs first", f"{idc['difference']:+.2f} p={fmt_p(idc['p_value'])}",
                          f"{idr['difference']:+.2f} p={fmt_p(idr['p_value'])}", *cells, style="dim")
    out_console.print(table)


def print_rows(results: list[dict[str, Any]], comparisons: list[dict[str, Any] | None]) -> None:
    """Every set and threat shift: each checkpoint's robust accuracy (dataset shifts: clean / robust), and
    B − A with McNemar's p on the robust flags."""
    from rich.table import Table

    from igdm_kit._evaluation.plotting import checkpoint_label
    from igdm_kit._evaluation.stats import fmt_p

    names = [r["checkpoint"] for r in results]
    table = Table(title="Per shift: clean / robust accuracy (%)",
                  caption="p: McNemar's exact test on the robust flags against the first checkpoint")
    table.add_column("set / threat")
    for r in results:
        table.add_column(escape(checkpoint_label(r["checkpoint"], names)), justify="right")
    for r in results[1:]:
        table.add_column(escape(f"Δ robust, p ({checkpoint_label(r['checkpoint'], names)})"), justify="right")
    for key, row in {"test": results[0]["test"], **results[0]["rows"]}.items():
        cells = []
        for r in results:
            other = r["test"] if key == "test" else r["rows"].get(key)
            cells.append("—" if other is None else (f"{other['robust']['accuracy']:.1f}" if row["group"] == "threat"
                         else f"{other['clean']['accuracy']:.1f} / {other['robust']['accuracy']:.1f}"))
        for comp in comparisons[1:]:
            m = (comp or {}).get("rows", {}).get(key)
            cells.append("—" if m is None else f"{m['robust']['difference']:+.1f}, {fmt_p(m['robust']['p_value'])}")
        table.add_row(escape(row["label"]), *cells)
    out_console.print(table)


def add(group: typer.Typer) -> None:
    """``igdm-kit analyze ood``."""

    @group.command("ood")
    @stoppable
    def ood(
        checkpoints: list[Path] = typer.Argument(None, help="checkpoints or run folders (also after --model)",
                                                 show_default=False),
        model: list[Path] = typer.Option([], "--model", "-m", help="checkpoint; repeatable"),
        shifts: str | None = typer.Option(None, "--shifts", help=SHIFTS_HELP + "; default corruptions,threats"),
        shift: list[str] = typer.Option([], "--shift", help=SHIFT_HELP),
        recipe: Path | None = typer.Option(None, "--recipe", "-r", help="take the shifts, shift attacks, threat, "
                                           "ε and limit from this recipe's [eval] (options given here win)"),
        attacks: list[str] | None = typer.Option(None, "--attacks", "-a",
                                                 help="attacks run on every set, comma-separated, repeatable "
                                                      "(default clean,pgd20,cw); robust = their worst case"),
        threat: str = typer.Option("Linf", "--threat", help="the models' own threat model: Linf, L2 or L1"),
        eps: str | None = typer.Option(None, "--eps", help="its radius; default the first checkpoint's "
                                       "recorded ε, else 8/255"),
        dataset: Dataset = None,
        data_opt: DataOpt = [],  # noqa: B006 - Typer's default
        limit: Limit = None,
        batch_size: BatchSize = 256,
        device: Device = "auto",
        seed: int = typer.Option(0, "--seed", callback=seed_in_range,
                                 help="seed of the corruptions and the attacks' random starts"),
        plot: Plot = None,
        progress: ShowProgress = True,
        json_: Json = False,
    ) -> None:
        """Table 9: clean and robust accuracy under dataset shifts (corruptions, natural variants) and robust
        accuracy under threat shifts, for several checkpoints side by side, with 95% intervals and paired
        tests against the first."""
        from igdm_kit._cli.specs import parse_attacks, parse_eps, parse_threat
        from igdm_kit._evaluation import sources
        from igdm_kit._evaluation.plotting import pyplot

        attacks = joined(attacks)  # every -a counts
        if plot is not None:
            pyplot()
        paths = [p / "model.safetensors" if p.is_dir() and (p / "model.safetensors").is_file() else p
                 for p in list(model) + list(checkpoints or [])]  # a run folder: its final model
        if not paths:
            raise IgdmKitError("no checkpoint given", "pass CKPT [CKPT ...] (e.g. runs/quickstart/alpha=0)")
        items = parse_shifts(shifts, shift)
        chosen = parse_attacks(attacks, []) if attacks is not None else None
        norm = parse_threat(threat)
        radius = parse_eps(eps, norm) if eps is not None else None
        if recipe is not None:
            from igdm_kit._recipe import load

            ev = load(recipe).model.eval
            items, chosen = items or ev.shifts, chosen or ev.shift_attacks
            norm, radius, limit = ev.threat if threat == "Linf" else norm, radius or ev.eps, limit or ev.limit
        items = items or ["corruptions", "threats"]
        from igdm_kit._cli.specs import arch_options

        results = run_shifts_many([sources.Source(p) for p in paths], items, chosen, threat=norm, radius=radius,
                                  dataset=dataset, limit=limit, batch_size=batch_size, device=device, seed=seed,
                                  progress=progress, keep_flags=True, data_options=arch_options(data_opt))
        _report(results, plot, json_)


def _report(results: list[dict[str, Any]], plot: Path | None, json_: bool) -> None:
    from igdm_kit._evaluation.plotting import ood_figure
    from igdm_kit._evaluation.shifts import compare_shifts, drop_flags

    comparisons = [None] + [compare_shifts(results[0], r) for r in results[1:]]
    plain = [drop_flags(r) for r in results]
    if plot is not None:
        err_console.print(escape(f"plot: {ood_figure(plain, plot)}"), style="dim", highlight=False)
    if json_:
        print_json("analyze ood", {"checkpoints": plain, "comparisons": comparisons[1:]})
        return
    print_summary(plain, comparisons)
    print_rows(plain, comparisons)
