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
    Dataset,
    Device,
    Json,
    Limit,
    PerSample,
    Plot,
    ShowProgress,
    TeacherArch,
    TeacherArchOpt,
    TeacherLoader,
    TeacherName,
)
from igdm_kit._cli.specs import eps_text, parse_eps
from igdm_kit._cli.stopping import checked, stoppable
from igdm_kit._evaluation.plotting import checkpoint_label as _label
from igdm_kit._evaluation.plotting import histograms_figure, linearity_figure, pyplot
from igdm_kit._evaluation.sources import check_fits, dataset_for
from igdm_kit.errors import IgdmKitError

#: what a stop request (SIGINT/SIGTERM, checked after every batch) says: 128 + the signal, nothing written
STOPPED_WHAT = "analysis stopped"


def _plotted(path: Path) -> None:
    err_console.print(escape(f"plot: {path}"), style="dim", highlight=False)


def recorded_eps(metas: list[dict[str, Any]], given: str | None) -> float:
    """``--eps`` when given, else the ε the checkpoints' runs were evaluated at (one for all), else 8/255."""
    if given is not None:
        return parse_eps(given)
    found = {float(m["eval_eps"]) for m in metas if isinstance(m.get("eval_eps"), (int, float))}
    if len(found) > 1:
        raise IgdmKitError("the checkpoints were evaluated at different ε (" +
                           ", ".join(eps_text(e) for e in sorted(found)) + ")",
                           "pass --eps to compare them at one radius")
    radius = found.pop() if found else 8 / 255
    source = "the ε its run was evaluated at" if found or metas[0].get("eval_eps") is not None else \
        "no ε recorded in the checkpoint"
    err_console.print(escape(f"ε = {eps_text(radius)} ({source}; --eps to change it)"), style="dim",
                      highlight=False)
    return radius


def context(name: str, n: int, eps: float | None = None) -> str:
    """'digits test, n=360, ε=0.1': what every analysis table and figure says it was computed on."""
    return f"{name} test, n={n}" + (f", ε={eps_text(eps)}" if eps is not None else "")


def _prepare(checkpoints: list[Path], dataset: str | None, limit: int | None, device: str):
    """Checkpoint metadata, the dataset (from --dataset or the first checkpoint) and its test data."""
    from igdm_kit._evaluation.runner import load_eval_data
    from igdm_kit._runtime.threads import configure
    from igdm_kit._storage.checkpoint import read_metadata
    from igdm_kit.attacks import resolve_device
    from igdm_kit.factories import create_dataset

    configure()  # --threads / IGDM_KIT_THREADS, else the default
    metas = [read_metadata(c) for c in checkpoints]  # every path is checked before anything heavy runs
    name, options = dataset_for(checkpoints[0], metas[0], dataset)
    info = create_dataset(name, **options).info()
    for c, m in zip(checkpoints, metas, strict=True):
        check_fits(c, m, name, info)
    x, y = load_eval_data(name, limit, options)
    return metas, name, x, y, resolve_device(device)


def _student_and_teacher(student: Path, teacher: Path, loader: str, name: str | None, arch: str | None,
                         arch_opt: list[str], dataset: str | None, limit: int | None, device: str):
    """The student checkpoint and a teacher from any source a teacher loader reads, on the student's data."""
    from igdm_kit._cli.specs import arch_options
    from igdm_kit._evaluation import sources
    from igdm_kit._storage.checkpoint import load_model

    source = sources.Source(teacher, loader=loader, name=name, arch=arch, arch_options=arch_options(arch_opt))
    metas, ds, x, y, dev = _prepare([student] + ([teacher] if source.is_native() else []), dataset, limit, device)
    t, _, _, _ = sources.load(source, ds, dev)
    return load_model(student, device=str(dev)), t, ds, x, y, dev, metas[0]


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
    for add in (_linearity, _alignment, _pointwise):
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
    @stoppable
    def linearity(
        checkpoints: list[Path] = typer.Argument(None, help="checkpoints (also accepted after --model), kept "
                                                 "in the order given", show_default=False),
        model: list[Path] = typer.Option([], "--model", "-m", help="checkpoint; repeatable, or a list of files"),
        dataset: Dataset = None,
        limit: Limit = None,
        batch_size: BatchSize = 256,
        device: Device = "auto",
        eps: str | None = typer.Option(None, "--eps", help="noise ε ~ U(−eps, eps); " + EPS_HELP + "; default: "
                                       "the ε the checkpoints' run was evaluated at, else 8/255"),
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
        metas, name, x, _, dev = _prepare(paths, dataset, limit, device)
        radius = recorded_eps(metas, eps)
        with progress_callback(progress) as bar:
            results = _remainders(paths, metas, x, radius, seed, batch_size, dev, checked(bar, STOPPED_WHAT),
                                  per_sample)
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


def _alignment(group: typer.Typer) -> None:
    @group.command("alignment")
    @stoppable
    def alignment(
        student: Path = typer.Option(..., "--student", "-s", help="student checkpoint"),
        teacher: Path = typer.Option(..., "--teacher", "-t", help="teacher checkpoint or weights file"),
        teacher_loader: TeacherLoader = "auto",
        teacher_name: TeacherName = None,
        teacher_arch: TeacherArch = None,
        teacher_arch_opt: TeacherArchOpt = [],  # noqa: B006 - Typer's default
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
        s, t, name, x, y, dev, _ = _student_and_teacher(student, teacher, teacher_loader, teacher_name,
                                                        teacher_arch, teacher_arch_opt, dataset, limit, device)
        from igdm_kit._evaluation.analysis import gradient_alignment, summarize

        with progress_callback(progress) as bar:
            res = gradient_alignment(s, t, x, y, batch_size=batch_size, progress=checked(bar, STOPPED_WHAT))
        out: dict[str, Any] = {"student": str(student), "teacher": str(teacher), "dataset": name,
                               "n": int(x.shape[0]), "gd": res["gd"], "gc": res["gc"],
                               "distance": summarize(res["distance"]), "cosine": summarize(res["cosine"])}
        if per_sample:
            out["per_sample"] = {"distance": res["distance"].tolist(), "cosine": res["cosine"].tolist()}
        where = context(name, int(x.shape[0])) + ", ∇ₓ CE at the clean images"
        if plot is not None:
            _plotted(histograms_figure(
                {"GD: ‖g_S − g_T‖₂ per image": res["distance"], "GC: cos(g_S, g_T) per image": res["cosine"]},
                plot, f"gradient alignment, student vs teacher — GD {res['gd']:.4f}, GC {res['gc']:.4f}\n{where}"))
        if json_:
            print_json("analyze alignment", out)
            return
        _table(f"Gradient alignment — {where}", ["metric", "mean", "std", "median"],
               [["GD ↓ (‖g_S − g_T‖₂)", f"{res['gd']:.4f}", f"{out['distance']['std']:.4f}",
                 f"{out['distance']['median']:.4f}"],
                ["GC ↑ (cosine)", f"{res['gc']:.4f}", f"{out['cosine']['std']:.4f}",
                 f"{out['cosine']['median']:.4f}"]])


def _pointwise(group: typer.Typer) -> None:
    @group.command("pointwise")
    @stoppable
    def pointwise(
        student: Path = typer.Option(..., "--student", "-s", help="student checkpoint"),
        teacher: Path = typer.Option(..., "--teacher", "-t", help="teacher checkpoint or weights file"),
        teacher_loader: TeacherLoader = "auto",
        teacher_name: TeacherName = None,
        teacher_arch: TeacherArch = None,
        teacher_arch_opt: TeacherArchOpt = [],  # noqa: B006 - Typer's default
        method: str = typer.Option("pgd-at", "--method", help="method whose inner attack makes the adversarial δ"),
        attack: str | None = typer.Option(None, "--attack", help="attack instead of the method's default"),
        steps: int = typer.Option(20, "--steps", min=1, help="steps of the adversarial δ's attack"),
        dataset: Dataset = None,
        limit: Limit = None,
        batch_size: BatchSize = 256,
        device: Device = "auto",
        eps: str | None = typer.Option(None, "--eps", help=EPS_HELP + "; default: the ε the student's run "
                                       "was evaluated at, else 8/255"),
        seed: int = typer.Option(0, "--seed", help="seed of the uniform δ and of the attack's random start"),
        per_sample: PerSample = False,
        plot: Plot = None,
        progress: ShowProgress = True,
        json_: Json = False,
    ) -> None:
        """Point-wise distance mean ‖T(x+δ) − S(x+δ)‖₂ for δ ~ U(−ε, ε) and adversarial δ (Table 5)."""
        if eps is not None:
            parse_eps(eps)  # a bad --eps fails before anything loads
        if plot is not None:
            pyplot()
        from igdm_kit._plugins.manager import registry

        registry("method").get(method)  # an unknown method fails before any data loads
        if attack is not None:
            registry("attack").get(attack)
        s, t, name, x, y, dev, smeta = _student_and_teacher(student, teacher, teacher_loader, teacher_name,
                                                            teacher_arch, teacher_arch_opt, dataset, limit, device)
        radius = recorded_eps([smeta], eps)  # the student's
        import torch

        from igdm_kit._evaluation.analysis import pointwise_distance, summarize
        from igdm_kit.attacks import seeded

        per: dict[str, Any] = {}
        with progress_callback(progress) as bar, seeded(seed, dev):
            cb = checked(bar, STOPPED_WHAT)
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
        where = context(name, int(x.shape[0]), radius)
        adv = f"δ = adversarial ({attack or method}, {steps} steps)"
        if plot is not None:
            _plotted(histograms_figure({"δ ~ U(−ε, ε)": per["uniform"], adv: per["adversarial"]}, plot,
                                       f"point-wise distance, teacher vs student — {where}", shared=True,
                                       xlabel="‖T(x+δ) − S(x+δ)‖₂ on logits, per image"))
        if json_:
            print_json("analyze pointwise", out)
            return
        _table(f"Point-wise distance ‖T(x+δ) − S(x+δ)‖₂ — {where}",
               ["δ", "mean", "std", "median"],
               [[label, f"{out[k]['mean']:.4f}", f"{out[k]['std']:.4f}", f"{out[k]['median']:.4f}"]
                for k, label in (("uniform", "δ ~ U(−ε, ε)"), ("adversarial", adv))])
