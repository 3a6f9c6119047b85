"""``igdm-kit analyze alignment|pointwise``: one or several students against one teacher (Tables 4–5).

``--student`` is repeatable: every student is judged on the same images (the pointwise uniform δ is the
same noise for each), the table has a line per student, and ``--plot`` overlays them on shared bins
(``_evaluation.plot_compare.draw_overlay``: each named in the legend, mean and median marked). ``--json``
keeps the one-student layout at its top level (the first student) and adds ``students`` when there are more.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from igdm_kit._cli.analysis_common import STOPPED_WHAT, _plotted, _students_and_teacher, _table, context, recorded_eps
from igdm_kit._cli.console import print_json, progress_callback
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
    TeacherArch,
    TeacherArchOpt,
    TeacherLoader,
    TeacherName,
    seed_in_range,
)
from igdm_kit._cli.specs import parse_eps
from igdm_kit._cli.stopping import checked, stoppable
from igdm_kit._evaluation.plotting import checkpoint_label, pyplot

STUDENT_HELP = "student checkpoint; repeat it to compare several students against the same teacher"


def _named(path: Path) -> str:
    """A model file with its folder (a run's model.safetensors says little alone)."""
    return "/".join(path.parts[-2:])


def _envelope(per: list[dict[str, Any]], common: dict[str, Any]) -> dict[str, Any]:
    """The first student's fields at the top level (the one-student layout), every student under ``students``."""
    return {**per[0], **common, **({"students": per} if len(per) > 1 else {})}


def _overlay(panels: dict[str, dict[str, Any]], plot: Path, title: str, xlabels: dict[str, str],
             share_x: bool = False) -> None:
    from igdm_kit._evaluation.figures import save
    from igdm_kit._evaluation.plot_compare import draw_overlay

    _plotted(save(draw_overlay(panels, title, xlabels, share_x), plot))




def add_alignment(group: typer.Typer) -> None:
    @group.command("alignment")
    @stoppable
    def alignment(
        student: list[Path] = typer.Option(..., "--student", "-s", help=STUDENT_HELP),
        teacher: Path = typer.Option(..., "--teacher", "-t", help="teacher checkpoint or weights file"),
        teacher_loader: TeacherLoader = "auto",
        teacher_name: TeacherName = None,
        teacher_arch: TeacherArch = None,
        teacher_arch_opt: TeacherArchOpt = [],  # noqa: B006 - Typer's default
        dataset: Dataset = None,
        data_opt: DataOpt = [],  # noqa: B006 - Typer's default
        limit: Limit = None,
        batch_size: BatchSize = 256,
        device: Device = "auto",
        per_sample: PerSample = False,
        plot: Plot = None,
        progress: ShowProgress = True,
        json_: Json = False,
    ) -> None:
        """Gradient distance GD and cosine GC of ∇ₓCE between each student and the teacher (Table 4)."""
        if plot is not None:
            pyplot()
        models, t, name, x, y, _, _ = _students_and_teacher(student, teacher, teacher_loader, teacher_name,
                                                            teacher_arch, teacher_arch_opt, dataset, limit,
                                                            device, data_opt)
        from igdm_kit._evaluation.analysis import gradient_alignment, summarize

        per, values = [], {}
        with progress_callback(progress) as bar:
            cb = checked(bar, STOPPED_WHAT)
            for path, s in zip(student, models, strict=True):
                res = gradient_alignment(s, t, x, y, batch_size=batch_size, progress=cb)
                row: dict[str, Any] = {"student": str(path), "gd": res["gd"], "gc": res["gc"],
                                       "distance": summarize(res["distance"]), "cosine": summarize(res["cosine"])}
                if per_sample:
                    row["per_sample"] = {"distance": res["distance"].tolist(), "cosine": res["cosine"].tolist()}
                per.append(row)
                values[checkpoint_label(path, student)] = res
        where = context(name, int(x.shape[0])) + ", ∇ₓ CE at the clean images"
        if plot is not None:
            gd, gc = "GD: ‖g_S − g_T‖₂ per image", "GC: cos(g_S, g_T) per image"
            _overlay({gd: {k: r["distance"] for k, r in values.items()},
                      gc: {k: r["cosine"] for k, r in values.items()}}, plot,
                     f"gradient alignment with the teacher {_named(teacher)}, {len(per)} student(s)\n{where}",
                     {gd: "GD ↓ = ‖g_S − g_T‖₂", gc: "GC ↑ = cos(g_S, g_T)"})
        if json_:
            print_json("analyze alignment", _envelope(per, {"teacher": str(teacher), "dataset": name,
                                                            "n": int(x.shape[0])}))
            return
        several = len(per) > 1
        lines = []
        for r in per:
            for label, k, d in (("GD ↓ (‖g_S − g_T‖₂)", "gd", "distance"), ("GC ↑ (cosine)", "gc", "cosine")):
                lines.append(([checkpoint_label(r["student"], student)] if several else []) +
                             [label, f"{r[k]:.4f}", f"{r[d]['std']:.4f}", f"{r[d]['median']:.4f}"])
        _table(f"Gradient alignment — {where}", (["student"] if several else []) + ["metric", "mean", "std", "median"],
               lines)


def add_pointwise(group: typer.Typer) -> None:
    @group.command("pointwise")
    @stoppable
    def pointwise(
        student: list[Path] = typer.Option(..., "--student", "-s", help=STUDENT_HELP),
        teacher: Path = typer.Option(..., "--teacher", "-t", help="teacher checkpoint or weights file"),
        teacher_loader: TeacherLoader = "auto",
        teacher_name: TeacherName = None,
        teacher_arch: TeacherArch = None,
        teacher_arch_opt: TeacherArchOpt = [],  # noqa: B006 - Typer's default
        method: str = typer.Option("pgd-at", "--method", help="method whose inner attack makes the adversarial δ"),
        attack: str | None = typer.Option(None, "--attack", help="attack instead of the method's default"),
        steps: int = typer.Option(20, "--steps", min=1, help="steps of the adversarial δ's attack"),
        dataset: Dataset = None,
        data_opt: DataOpt = [],  # noqa: B006 - Typer's default
        limit: Limit = None,
        batch_size: BatchSize = 256,
        device: Device = "auto",
        eps: str | None = typer.Option(None, "--eps", help=EPS_HELP + "; default: the ε the students' runs "
                                       "were evaluated at, else 8/255"),
        seed: int = typer.Option(0, "--seed", callback=seed_in_range,
                                 help="seed of the uniform δ and of the attack's random start"),
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
        models, t, name, x, y, dev, metas = _students_and_teacher(student, teacher, teacher_loader, teacher_name,
                                                                  teacher_arch, teacher_arch_opt, dataset, limit,
                                                                  device, data_opt)
        radius = recorded_eps(metas, eps)  # the students'
        per, values = _pointwise_all(student, models, t, x, y, dev, method=method, attack=attack, eps=radius,
                                     steps=steps, seed=seed, batch_size=batch_size, progress=progress,
                                     per_sample=per_sample)
        where = context(name, int(x.shape[0]), radius)
        adv = f"δ = adversarial ({attack or method}, {steps} steps)"
        if plot is not None:
            xlabel = "‖T(x+δ) − S(x+δ)‖₂ on logits, per image"
            _overlay({"δ ~ U(−ε, ε)": {k: v["uniform"] for k, v in values.items()},
                      adv: {k: v["adversarial"] for k, v in values.items()}}, plot,
                     f"point-wise distance to the teacher {_named(teacher)}, "
                     f"{len(per)} student(s) — {where}", {"δ ~ U(−ε, ε)": xlabel, adv: xlabel}, share_x=True)
        if json_:
            print_json("analyze pointwise", _envelope(per, {
                "teacher": str(teacher), "dataset": name, "n": int(x.shape[0]), "eps": radius, "method": method,
                "attack": attack, "steps": steps}))
            return
        several = len(per) > 1
        _table(f"Point-wise distance ‖T(x+δ) − S(x+δ)‖₂ — {where}",
               (["student"] if several else []) + ["δ", "mean", "std", "median"],
               [([checkpoint_label(r["student"], student)] if several else []) +
                [label, f"{r[k]['mean']:.4f}", f"{r[k]['std']:.4f}", f"{r[k]['median']:.4f}"]
                for r in per for k, label in (("uniform", "δ ~ U(−ε, ε)"), ("adversarial", adv))])


def _pointwise_all(paths: list[Path], models: list[Any], t, x, y, dev, *, method: str, attack: str | None,
                   eps: float, steps: int, seed: int, batch_size: int, progress: bool, per_sample: bool):
    """Each student's point-wise distances, every one from the same seed (the same uniform δ)."""
    import torch

    from igdm_kit._evaluation.analysis import pointwise_distance, summarize
    from igdm_kit.attacks import seeded

    per, values = [], {}
    with progress_callback(progress) as bar:
        cb = checked(bar, STOPPED_WHAT)
        for path, s in zip(paths, models, strict=True):
            dist: dict[str, Any] = {}
            with seeded(seed, dev):
                gen = torch.Generator(device="cpu").manual_seed(seed)
                for kind in ("uniform", "adversarial"):
                    dist[kind] = pointwise_distance(s, t, x, y, delta=kind, method=method, attack=attack, eps=eps,
                                                    steps=steps, generator=gen, batch_size=batch_size,
                                                    progress=cb)["distance"]
            row: dict[str, Any] = {"student": str(path), **{k: summarize(v) for k, v in dist.items()}}
            if per_sample:
                row["per_sample"] = {k: v.tolist() for k, v in dist.items()}
            per.append(row)
            values[checkpoint_label(path, paths)] = dist
    return per, values
