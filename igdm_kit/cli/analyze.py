"""``igdm-kit analyze linearity|alignment|pointwise``: the paper's analyses for checkpoints.

* ``linearity``: Taylor remainder proportion (Section 3.1); several checkpoints (a run's per-epoch
  ``epoch_XXX.safetensors``) give the curve of Figure 2b, ordered by their recorded epoch.
* ``alignment``: gradient distance GD and cosine GC between student and teacher input gradients (Table 4).
* ``pointwise``: mean ‖T(x+δ) − S(x+δ)‖₂ for uniform and adversarial δ (Table 5).
* ``ood``: clean and robust accuracy under distribution and threat shifts (Table 9), in ``cli/ood.py``.

The computations are ``igdm_kit.analysis``'s public functions. Rich table on stdout, ``--json`` envelope,
``--plot FILE.png`` (matplotlib, the ``plot`` extra), progress on stderr.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from ..errors import IgdmKitError
from ..plotting import checkpoint_label as _label
from ..plotting import histograms_figure, linearity_figure, pyplot
from .console import err_console, out_console, print_json
from ..sources import check_fits, dataset_for
from .eval import parse_eps, progress_callback
from .options import EPS_HELP, BatchSize, Dataset, Device, Json, Limit, PerSample, Plot, ShowProgress


def _plotted(path: Path) -> None:
    err_console.print(escape(f"plot: {path}"), style="dim", highlight=False)


def _prepare(checkpoints: list[Path], dataset: str | None, limit: int | None, device: str):
    """Checkpoint metadata, the dataset (from --dataset or the first checkpoint) and its test data."""
    from ..checkpoint import read_metadata
    from ..components import create_dataset
    from ..evaluation import load_eval_data, resolve_device

    metas = [read_metadata(c) for c in checkpoints]  # every path is checked before anything heavy runs
    name, options = dataset_for(checkpoints[0], metas[0], dataset)
    info = create_dataset(name, **options).info()
    for c, m in zip(checkpoints, metas, strict=True):
        check_fits(c, m, name, info)
    x, y = load_eval_data(name, limit, options)
    return metas, name, x, y, resolve_device(device)


def _table(title: str, columns: list[str], rows: list[list[str]]):
    from rich.table import Table

    table = Table(title=escape(title))  # paths are text, not Rich markup
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(escape(c) for c in row))
    out_console.print(table)


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Local linearity, gradient alignment and point-wise alignment (Sections 3.1, 4.2).",
                        no_args_is_help=True)
    app.add_typer(group, name="analyze")
    for add in (_linearity, _alignment, _pointwise):
        add(group)
    from . import ood  # robustness under distribution and threat shifts (Table 9)

    ood.add(group)


def _linearity(group: typer.Typer) -> None:
    @group.command("linearity")
    def linearity(
        checkpoints: list[Path] = typer.Argument(None, help="checkpoints (also accepted after --model)",
                                                 show_default=False),
        model: list[Path] = typer.Option([], "--model", "-m", help="checkpoint; repeatable, or a list of files"),
        dataset: Dataset = None,
        limit: Limit = None,
        batch_size: BatchSize = 256,
        device: Device = "auto",
        eps: str = typer.Option("8/255", "--eps", help="noise ε ~ U(−eps, eps); " + EPS_HELP),
        seed: int = typer.Option(0, "--seed", help="seed of the noise (the same noise for every checkpoint)"),
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
        radius = parse_eps(eps)
        metas, name, x, _, dev = _prepare(paths, dataset, limit, device)
        # Ordered by the epoch the checkpoint records (a run's per-epoch files); others keep their order.
        order = sorted(range(len(paths)), key=lambda i: (metas[i].get("epoch") is None, metas[i].get("epoch") or 0))
        paths, metas = [paths[i] for i in order], [metas[i] for i in order]

        import torch

        from ..analysis import summarize, taylor_remainder
        from ..checkpoint import load_model

        results = []
        with progress_callback(progress) as cb:
            for path, meta in zip(paths, metas, strict=True):
                net = load_model(path, device=str(dev))
                gen = torch.Generator(device="cpu").manual_seed(seed)  # same noise for every checkpoint
                values = taylor_remainder(net, x, radius, generator=gen, batch_size=batch_size,
                                          progress=(lambda t, d, n, p=path: cb(f"{p.name}", d, n)) if cb else None)
                row: dict[str, Any] = {"checkpoint": str(path), "epoch": meta.get("epoch"), **summarize(values)}
                if per_sample:
                    row["per_sample"] = values.tolist()
                results.append(row)
                row["_values"] = values
        if plot is not None:
            _plotted(linearity_figure(results, plot))
        for row in results:
            row.pop("_values")
        envelope = {"dataset": name, "eps": radius, "seed": seed, "checkpoints": results}
        if json_:
            print_json("analyze linearity", envelope)
            return
        _table(f"Taylor remainder proportion — {name} test, n={x.shape[0]}",
               ["checkpoint", "epoch", "mean", "std", "median", "q05", "q95"],
               [[_label(r["checkpoint"], paths), "" if r["epoch"] is None else str(r["epoch"]), f"{r['mean']:.4f}",
                 f"{r['std']:.4f}", f"{r['median']:.4f}", f"{r['q05']:.4f}", f"{r['q95']:.4f}"]
                for r in results])


def _alignment(group: typer.Typer) -> None:
    @group.command("alignment")
    def alignment(
        student: Path = typer.Option(..., "--student", "-s", help="student checkpoint"),
        teacher: Path = typer.Option(..., "--teacher", "-t", help="teacher checkpoint"),
        dataset: Dataset = None,
        limit: Limit = None,
        batch_size: BatchSize = 256,
        device: Device = "auto",
        per_sample: PerSample = False,
        plot: Plot = None,
        progress: ShowProgress = True,
        json_: Json = False,
    ) -> None:
        """Gradient distance GD and cosine GC of ∇ₓCE between student and teacher (Table 4)."""
        if plot is not None:
            pyplot()
        _, name, x, y, dev = _prepare([student, teacher], dataset, limit, device)
        from ..analysis import gradient_alignment, summarize
        from ..checkpoint import load_model

        s, t = load_model(student, device=str(dev)), load_model(teacher, device=str(dev))
        with progress_callback(progress) as cb:
            res = gradient_alignment(s, t, x, y, batch_size=batch_size, progress=cb)
        out: dict[str, Any] = {"student": str(student), "teacher": str(teacher), "dataset": name,
                               "n": int(x.shape[0]), "gd": res["gd"], "gc": res["gc"],
                               "distance": summarize(res["distance"]), "cosine": summarize(res["cosine"])}
        if per_sample:
            out["per_sample"] = {"distance": res["distance"].tolist(), "cosine": res["cosine"].tolist()}
        if plot is not None:
            _plotted(histograms_figure({"‖g_S − g_T‖₂": res["distance"], "cos(g_S, g_T)": res["cosine"]}, plot,
                       f"gradient alignment — GD {res['gd']:.4f}, GC {res['gc']:.4f}"))
        if json_:
            print_json("analyze alignment", out)
            return
        _table(f"Gradient alignment — {name} test, n={x.shape[0]}", ["metric", "mean", "std", "median"],
               [["GD ↓ (‖g_S − g_T‖₂)", f"{res['gd']:.4f}", f"{out['distance']['std']:.4f}",
                 f"{out['distance']['median']:.4f}"],
                ["GC ↑ (cosine)", f"{res['gc']:.4f}", f"{out['cosine']['std']:.4f}",
                 f"{out['cosine']['median']:.4f}"]])


def _pointwise(group: typer.Typer) -> None:
    @group.command("pointwise")
    def pointwise(
        student: Path = typer.Option(..., "--student", "-s", help="student checkpoint"),
        teacher: Path = typer.Option(..., "--teacher", "-t", help="teacher checkpoint"),
        method: str = typer.Option("pgd-at", "--method", help="method whose inner attack makes the adversarial δ"),
        attack: str | None = typer.Option(None, "--attack", help="attack instead of the method's default"),
        steps: int = typer.Option(20, "--steps", min=1, help="steps of the adversarial δ's attack"),
        dataset: Dataset = None,
        limit: Limit = None,
        batch_size: BatchSize = 256,
        device: Device = "auto",
        eps: str = typer.Option("8/255", "--eps", help=EPS_HELP),
        seed: int = typer.Option(0, "--seed", help="seed of the uniform δ and of the attack's random start"),
        per_sample: PerSample = False,
        plot: Plot = None,
        progress: ShowProgress = True,
        json_: Json = False,
    ) -> None:
        """Point-wise distance mean ‖T(x+δ) − S(x+δ)‖₂ for δ ~ U(−ε, ε) and adversarial δ (Table 5)."""
        radius = parse_eps(eps)
        if plot is not None:
            pyplot()
        from ..plugins import registry

        registry("method").get(method)  # an unknown method fails before any data loads
        if attack is not None:
            registry("attack").get(attack)
        _, name, x, y, dev = _prepare([student, teacher], dataset, limit, device)
        import torch

        from ..analysis import pointwise_distance, summarize
        from ..checkpoint import load_model
        from ..evaluation import seeded

        s, t = load_model(student, device=str(dev)), load_model(teacher, device=str(dev))
        per: dict[str, Any] = {}
        with progress_callback(progress) as cb, seeded(seed, dev):
            gen = torch.Generator(device="cpu").manual_seed(seed)
            for kind in ("uniform", "adversarial"):
                per[kind] = pointwise_distance(s, t, x, y, delta=kind, method=method, attack=attack, eps=radius,
                                               steps=steps, generator=gen, batch_size=batch_size,
                                               progress=cb)["distance"]
        out: dict[str, Any] = {"student": str(student), "teacher": str(teacher), "dataset": name,
                               "n": int(x.shape[0]), "eps": radius, "method": method, "attack": attack,
                               "steps": steps, **{k: summarize(v) for k, v in per.items()}}
        if per_sample:
            out["per_sample"] = {k: v.tolist() for k, v in per.items()}
        if plot is not None:
            _plotted(histograms_figure({"δ ~ U(−ε, ε)": per["uniform"], "δ = adv": per["adversarial"]}, plot,
                       "point-wise distance ‖T(x+δ) − S(x+δ)‖₂", shared=True))
        if json_:
            print_json("analyze pointwise", out)
            return
        _table(f"Point-wise distance ‖T(x+δ) − S(x+δ)‖₂ — {name} test, n={x.shape[0]}",
               ["δ", "mean", "std", "median"],
               [[label, f"{out[k]['mean']:.4f}", f"{out[k]['std']:.4f}", f"{out[k]['median']:.4f}"]
                for k, label in (("uniform", "δ ~ U(−ε, ε)"), ("adversarial", f"δ = adv ({method}, {steps} steps)"))])
