"""``igdm-kit analyze linearity|alignment|pointwise``: the paper's analyses for checkpoints.

* ``linearity``: Taylor remainder proportion (Section 3.1); several checkpoints (a run's per-epoch
  ``epoch_XXX.safetensors``) give the curve of Figure 2b. Rows keep the order the checkpoints were given;
  only checkpoints of one run (one recipe digest, distinct epochs) are drawn as a curve over epochs.
* ``alignment``: gradient distance GD and cosine GC between student and teacher input gradients (Table 4).
* ``pointwise``: mean ‖T(x+δ) − S(x+δ)‖₂ for uniform and adversarial δ (Table 5).
* ``ood``: clean and robust accuracy under distribution and threat shifts (Table 9), in ``cli/ood.py``.

ε defaults to the radius the checkpoint's run was evaluated at (``eval_eps`` in its metadata), as in
``igdm-kit eval``; every table, envelope and figure states ε (where one applies), the dataset and n. The
computations are ``igdm_kit._evaluation.analysis``'s public functions. Rich table on stdout, ``--json`` envelope,
``--plot FILE.png`` (matplotlib, the ``plot`` extra), progress on stderr.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from igdm_kit._cli.console import err_console, out_console, print_json, progress_callback
from igdm_kit._cli.options import (
    EPS_HELP,
    BatchSize,
    DataOpt,
    Dataset,
    Device,
    Json,
    Limit,
    PerSample,
    Plot,
    ShowProgress,
    seed_in_range,
)
from igdm_kit._cli.specs import eps_text, parse_eps
from igdm_kit._evaluation.plotting import checkpoint_label as _label
from igdm_kit._evaluation.plotting import linearity_figure, pyplot
from igdm_kit._evaluation.sources import check_fits, dataset_for, open_dataset
from igdm_kit.errors import IgdmKitError


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


def register(app: typer.Typer) -> None:
    group = typer.Typer(rich_markup_mode=None, no_args_is_help=True,
                        help="Local linearity, gradient alignment and point-wise alignment (Sections 3.1, 4.2).")
    app.add_typer(group, name="analyze")
    from igdm_kit._cli.analyze_students import add_alignment, add_pointwise

    for add in (_linearity, add_alignment, add_pointwise):
        add(group)
    from igdm_kit._cli import ood

    ood.add(group)


def _remainders(paths, metas, x, radius: float, seed: int, batch_size: int, dev, cb, per_sample: bool):
    """One row per checkpoint, in the order given, each on the same noise (one seed)."""
    import torch

    from igdm_kit._evaluation.analysis import summarize, taylor_remainder
    from igdm_kit._storage.checkpoint import load_model

    results = []
    for path, meta in zip(paths, metas, strict=True):
        net = load_model(path, device=str(dev))
        gen = torch.Generator(device="cpu").manual_seed(seed)  # same noise for every checkpoint
        values = taylor_remainder(net, x, radius, generator=gen, batch_size=batch_size,
                                  progress=(lambda t, d, n, p=path: cb(f"{p.name}", d, n)) if cb else None)
        row: dict[str, Any] = {"checkpoint": str(path), "epoch": meta.get("epoch"),
                               "recipe_digest": meta.get("recipe_digest"), **summarize(values)}
        if per_sample:
            row["per_sample"] = values.tolist()
        row["_values"] = values
        results.append(row)
    return results


def _linearity(group: typer.Typer) -> None:
    @group.command("linearity")
    def linearity(
        checkpoints: list[Path] = typer.Argument(None, help="checkpoints (also accepted after --model), kept "
                                                 "in the order given", show_default=False),
        model: list[Path] = typer.Option([], "--model", "-m", help="checkpoint; repeatable, or a list of files"),
        dataset: Dataset = None,
        data_opt: DataOpt = [],  # noqa: B006 - Typer's default
        limit: Limit = None,
        batch_size: BatchSize = 256,
        device: Device = "auto",
        eps: str | None = typer.Option(None, "--eps", help="noise ε ~ U(−eps, eps); " + EPS_HELP + "; default: "
                                       "the ε the checkpoints' run was evaluated at, else 8/255"),
        seed: int = typer.Option(0, "--seed", callback=seed_in_range,
                                 help="seed of the noise (the same noise for every checkpoint)"),
        per_sample: PerSample = False,
        plot: Plot = None,
        progress: ShowProgress = True,
        json_: Json = False,
    ) -> None:
        """Taylor remainder proportion ‖f(x+ε) − f(x) − J·ε‖ / ‖f(x+ε)‖ per checkpoint (Figure 2)."""
        if plot is not None:
            pyplot()  # a missing matplotlib fails before any computation
        paths = list(model) + list(checkpoints or [])
        if not paths:
            raise IgdmKitError("no checkpoint given", "pass --model CKPT [CKPT ...]")
        from igdm_kit._cli.specs import arch_options

        metas, name, x, _, dev = _prepare(paths, dataset, limit, device, arch_options(data_opt))
        radius = recorded_eps(metas, eps)
        with progress_callback(progress) as cb:
            results = _remainders(paths, metas, x, radius, seed, batch_size, dev, cb, per_sample)
        where = context(name, int(x.shape[0]), radius)
        if plot is not None:
            _plotted(linearity_figure(results, plot, where))
        for row in results:
            row.pop("_values")
        envelope = {"dataset": name, "n": int(x.shape[0]), "eps": radius, "seed": seed, "checkpoints": results}
        if json_:
            print_json("analyze linearity", envelope)
            return
        _table(f"Taylor remainder proportion — {where} (noise U(−ε, ε)), checkpoints in the order given",
               ["checkpoint", "epoch", "mean", "std", "median", "q05", "q95"],
               [[_label(r["checkpoint"], paths), "" if r["epoch"] is None else str(r["epoch"]), f"{r['mean']:.4f}",
                 f"{r['std']:.4f}", f"{r['median']:.4f}", f"{r['q05']:.4f}", f"{r['q95']:.4f}"]
                for r in results])
