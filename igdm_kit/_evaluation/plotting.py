"""Every figure igdm-kit draws, behind one matplotlib guard (the ``plot`` extra), written atomically.

* ``linearity_figure`` — Taylor remainder proportion: a histogram for one checkpoint, the per-epoch curve
  of Figure 2b for one run's checkpoints, separate points for checkpoints of separate runs;
* ``histograms_figure`` — per-sample distributions (gradient alignment, point-wise distance; Tables 4–5);
* ``sweep_figure`` — a sweep's accuracies against its swept key (mean and spread over seeds), and GC and GD
  against robust accuracy across its variants beside them (Figure 3);
* ``plot_compare`` — several models overlaid on shared bins (``analyze`` with several students);
* ``ood_figure`` — robustness under distribution and threat shifts per checkpoint (Table 9).

Every figure names what it was computed on (dataset, n, ε where one applies), labels both axes, keeps its
legend off the data (under the axes) and uses log bins where a distribution spans decades.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from igdm_kit._evaluation.figures import histogram, legend_below, log_bins, pyplot, save  # noqa: F401 - re-exported
from igdm_kit.errors import IgdmKitError


def one_run(results: list[dict[str, Any]]) -> bool:
    """Checkpoints of one run: one recorded recipe digest and distinct recorded epochs (a curve over
    epochs); anything else is separate points."""
    digests = {r.get("recipe_digest") for r in results}
    epochs = [r.get("epoch") for r in results]
    return len(digests) == 1 and None not in digests and None not in epochs and len(set(epochs)) == len(epochs)


def linearity_figure(results: list[dict[str, Any]], path: Path, context: str = "") -> Path:
    return save(draw_linearity(results, context), path)


def draw_linearity(results: list[dict[str, Any]], context: str = ""):
    """Taylor remainder proportion: for one run's per-epoch checkpoints the mean over epochs with the 25–75 %
    band (Figure 2b); for one checkpoint, or a few of separate runs, their per-image histograms overlaid on
    shared bins, each named with its mean and median (``plot_compare``); for many separate ones, one point
    each (mean, 25–75 % bar) in the order given, not joined."""
    from igdm_kit._evaluation.plot_compare import MAX_OVERLAY, draw_overlay

    names = [r["checkpoint"] for r in results]
    label = "Taylor remainder proportion ‖f(x+ε) − f(x) − J·ε‖ / ‖f(x+ε)‖"
    curve = len(results) > 1 and one_run(results)
    if not curve and len(results) <= MAX_OVERLAY:
        panel = "Taylor remainder proportion per image"
        return draw_overlay({panel: {checkpoint_label(r["checkpoint"], names): r["_values"] for r in results}},
                            f"{len(results)} checkpoint(s), the same noise for each — {context}",
                            {panel: label + " per image"})
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    means, lo, hi = ([r[k] for r in results] for k in ("mean", "q25", "q75"))
    if one_run(results):
        order = sorted(range(len(results)), key=lambda i: results[i]["epoch"])
        xs = [results[i]["epoch"] for i in order]
        ax.plot(xs, [means[i] for i in order], marker="o", label="mean")
        ax.fill_between(xs, [lo[i] for i in order], [hi[i] for i in order], alpha=0.3, label="25–75 % of images")
        ax.set_xlabel("epoch")
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        title = "one run's checkpoints over epochs"
    else:
        xs = list(range(len(results)))
        ax.errorbar(xs, means, yerr=[[max(0.0, m - a) for m, a in zip(means, lo, strict=True)],
                                     [max(0.0, b - m) for m, b in zip(means, hi, strict=True)]],
                    fmt="o", capsize=4, linestyle="none")
        ax.set_xticks(xs, [checkpoint_label(n, names) for n in names], rotation=30, ha="right", fontsize=8)
        ax.set_xlim(-0.5, len(xs) - 0.5)
        ax.set_xlabel("checkpoint, in the order given")
        title = "checkpoints of separate runs: mean per checkpoint, bar 25–75 % of images"
    ax.set_ylabel("Taylor remainder proportion")
    ax.set_title(f"{title}\n{context}", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        legend_below(ax)
    return fig


def histograms_figure(series: dict[str, Any], path: Path, title: str, shared: bool = False,
                      xlabel: str | None = None) -> Path:
    return save(draw_histograms(series, title, shared, xlabel), path)


def draw_histograms(series: dict[str, Any], title: str, shared: bool = False, xlabel: str | None = None):
    """Per-image distributions: several on one axis (``shared``, on common bins) or one panel each, with
    axis labels, log bins where the data span decades, and the legend under the axes."""
    import numpy as np

    plt = pyplot()
    if shared:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        every = np.concatenate([np.asarray(v.double().numpy()) for v in series.values()])
        log = log_bins(every)
        bins = np.geomspace(every.min(), every.max(), 41) if log else \
            np.linspace(every.min(), every.max() if every.max() > every.min() else every.min() + 1, 41)
        for label, values in series.items():
            histogram(ax, values, bins=bins, alpha=0.55, label=f"{label} (mean {values.mean().item():.4f})")
        if log:
            ax.set_xscale("log")
        ax.set_xlabel((xlabel or "value") + (" (log scale)" if log else ""))
        ax.set_ylabel("images")
        legend_below(ax, 1)
    else:
        fig, axes = plt.subplots(1, len(series), figsize=(5 * len(series), 4))
        for ax, (label, values) in zip(np.atleast_1d(axes), series.items(), strict=True):
            log = log_bins(values.double().numpy())
            histogram(ax, values, log=log)
            ax.set_xlabel(label + (" (log scale)" if log else ""))
            ax.set_ylabel("images")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _annotate(ax, text: str, xy: tuple[float, float], dx: float, dy: float):
    """``text`` at (dx, dy) points from ``xy``, aligned away from it; a thin line to it when set further off."""
    import math

    return ax.annotate(text, xy, xytext=(dx, dy), textcoords="offset points", fontsize=7,
                       ha="left" if dx > 0.5 else "right" if dx < -0.5 else "center",
                       va="bottom" if dy > 0.5 else "top" if dy < -0.5 else "center",
                       arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.5"} if math.hypot(dx, dy) > 10
                       else None)


def _place_labels(ax, points: list[tuple[float, float]], labels: list[str]) -> None:
    """Label each point on the side away from its nearest neighbour, where the text covers no other label
    and no other point and stays inside the axes (else at the first place, so no label is lost)."""
    import math

    from matplotlib.transforms import Bbox

    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    screen = [tuple(ax.transData.transform(p)) for p in points]
    marks = [Bbox.from_extents(x - 4, y - 4, x + 4, y + 4) for x, y in screen]
    taken: list = []
    for i, (xy, text) in enumerate(zip(points, labels, strict=True)):
        others = [q for j, q in enumerate(screen) if j != i]
        near = min(others, key=lambda q: math.dist(q, screen[i])) if others else (screen[i][0] - 1, screen[i][1])
        away = (screen[i][0] - near[0], screen[i][1] - near[1])
        candidates = sorted(((r * math.cos(k * math.pi / 4), r * math.sin(k * math.pi / 4))
                             for r in (7, 16, 28) for k in range(8)),
                            key=lambda d: (math.hypot(*d), -(d[0] * away[0] + d[1] * away[1])))
        obstacles = taken + [m for j, m in enumerate(marks) if j != i]
        box = None
        for dx, dy in candidates:
            t = _annotate(ax, text, xy, dx, dy)
            box = t.get_window_extent(renderer)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            if inside and not any(box.overlaps(o) for o in obstacles):
                break
            t.remove()
            box = None
        if box is None:
            box = _annotate(ax, text, xy, *candidates[0]).get_window_extent(renderer)
        taken.append(box)


def sweep_figure(summary: dict[str, Any], path: str | Path) -> Path:
    return save(draw_sweep(summary), path, dpi=120)


def draw_sweep(summary: dict[str, Any]):
    """The sweep: its accuracies against the swept key (mean and spread over seeds; ``plot_compare``) and,
    where measured, GC and GD against robust accuracy beside it (Figure 3): one point per variant with its
    spread, labels placed apart, axes named as the tables name them, r with its number of variants."""
    from igdm_kit._evaluation.plot_compare import metrics_panel, spread_text

    plt = pyplot()
    rows, corr = summary["rows"], summary.get("correlation") or {}
    key = corr.get("against")
    scatter = bool(key) and all("gd" in r and "gc" in r for r in rows)
    metrics = any(all(k in r for r in rows) for k, _ in summary.get("columns") or [])
    if not scatter and not metrics:
        raise IgdmKitError("the sweep has no accuracies nor GD/GC to plot",
                           "plot a sweep's summary (igdm-kit sweep ... --plot FILE.png)")
    n = int(metrics) + 2 * int(scatter)
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 4.6) if n > 1 else (6.4, 4.6), squeeze=False)
    axes = list(axes[0])
    if metrics:
        metrics_panel(axes[0], summary)
        legend_below(axes[0], 3)
    if scatter:
        attack = dict(summary.get("columns") or []).get(key, key)  # the table's header for the attack
        names = {"gc": "GC ↑: cos(∇ₓ student, ∇ₓ teacher)",
                 "gd": "GD ↓: ‖∇ₓ student − ∇ₓ teacher‖₂"}
        for ax, g in zip(axes[-2:], ("gc", "gd"), strict=True):
            xerr = [(r.get("sd") or {}).get(g) or 0.0 for r in rows]
            yerr = [(r.get("sd") or {}).get(key) or 0.0 for r in rows]
            ax.errorbar([r[g] for r in rows], [r[key] for r in rows], xerr=xerr, yerr=yerr, fmt="o", capsize=3,
                        zorder=3)
            ax.margins(0.25)  # room for the labels at the edges
            ax.set_xlabel(names[g])
            ax.set_ylabel(f"{attack} accuracy (%)")
            ax.set_title(f"{g.upper()} vs {attack}\n{_r_text(corr.get(g), len(rows))}", fontsize=9)
    first = rows[0]
    where = ", ".join(p for p in (first.get("dataset") and f"{first['dataset']} test",
                                  first.get("n") and f"n={first['n']}",
                                  first.get("eps") is not None and f"ε={first['eps']:g}") if p)
    fig.suptitle(f"{summary.get('recipe', '')}" + (f" — {where}" if where else "") + f" — {spread_text(rows)}",
                 fontsize=10)
    fig.tight_layout()  # the layout first: labels are placed in the final coordinates
    if scatter:
        for ax, g in zip(axes[-2:], ("gc", "gd"), strict=True):
            _place_labels(ax, [(r[g], r[key]) for r in rows], [r["variant"] for r in rows])
    return fig


def _r_text(r: float | None, variants: int) -> str:
    """As the sweep table words it: r over how many variants, and that a few are no test of a trend."""
    if r is None:
        return f"{variants} variants (r needs 3 or more)"
    return f"Pearson r = {r:.2f} across {variants} variants" + (" (few variants: not a trend test)"
                                                                 if variants < 8 else "")


def checkpoint_label(path, paths) -> str:
    """A checkpoint's file name; when several share a name (runs' model.safetensors), its path below the
    folder all of them lie in (``quickstart/alpha=0/model.safetensors``, ``seeds/alpha=6/seed=1/...``)."""
    import os

    p = Path(path)
    names = [Path(q).name for q in paths]
    if names.count(p.name) <= 1:
        return p.name
    try:
        common = os.path.commonpath([str(Path(q).parent) for q in paths])
        return str(p.relative_to(common)) if common else str(p)
    except ValueError:  # absolute beside relative paths: no common folder
        return str(p)


def ood_figure(results: list[dict[str, Any]], path: str | Path) -> Path:
    """Table 9 as a figure: (left) the summary columns per checkpoint with their intervals; (right) the
    robust accuracy on each dataset-shift unit and threat shift, one marker per checkpoint."""
    plt = pyplot()
    from igdm_kit._evaluation.shifts import SUMMARY

    names = [r["checkpoint"] for r in results]
    cols = ["id_clean", "id_robust", *SUMMARY]
    titles = ["ID clean", "ID robust", *SUMMARY.values()]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.6), gridspec_kw={"width_ratios": [1, 1.6]})
    width = 0.8 / len(results)
    for i, r in enumerate(results):
        ms = [r["summary"].get(c) for c in cols]
        xs = [j + (i - (len(results) - 1) / 2) * width for j in range(len(cols))]
        acc = [m["accuracy"] if m else float("nan") for m in ms]
        err = [[a - m["ci95"][0] if m else 0 for a, m in zip(acc, ms)], [m["ci95"][1] - a if m else 0
                                                                            for a, m in zip(acc, ms)]]
        ax.bar(xs, acc, width, yerr=err, capsize=3, label=checkpoint_label(r["checkpoint"], names))
    ax.set_xticks(range(len(cols)), titles, rotation=20, ha="right")
    ax.set_ylabel("accuracy (%), whiskers: 95% interval")
    ax.set_ylim(0, 105)
    first = results[0]
    robust = ", ".join(a for a in first.get("attacks", []) if a != "clean")
    ax.set_title(f"{first['dataset']}, n = {first['n']}, {first['threat']} ε = {first['eps']:.4g}"
                 + (f"; robust: worst of {robust}" if robust else ""), fontsize=10)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=2)
    _units_panel(ax2, results, names)
    fig.tight_layout()
    return save(fig, path, dpi=120)


def _units_panel(ax, results: list[dict[str, Any]], names: list[str]) -> None:
    s0 = results[0]["summary"]
    units = [*((s0.get("ood_d_robust") or {}).get("per_unit") or {}), *((s0.get("ood_t_robust") or {}).get("per_unit") or {})]
    for i, r in enumerate(results):
        per = {**((r["summary"].get("ood_d_robust") or {}).get("per_unit") or {}),
               **((r["summary"].get("ood_t_robust") or {}).get("per_unit") or {})}
        ax.plot(range(len(units)), [per.get(u, float("nan")) for u in units], marker="os^vD"[i % 5], linestyle="",
                label=checkpoint_label(r["checkpoint"], names))
    labels = {row["family"]: (row["label"].split(" (")[0] if row["group"] == "threat" else row["family"])
              for row in results[0]["rows"].values()}
    n_d = len((s0.get("ood_d_robust") or {}).get("per_unit") or {})
    if 0 < n_d < len(units):
        ax.axvline(n_d - 0.5, color="grey", linestyle=":")
    ax.set_xticks(range(len(units)), [labels.get(u, u).replace("_", " ") for u in units], rotation=60, ha="right",
                  fontsize=7)
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(-3, 103)
    ax.set_title("robust accuracy per shift (dataset shifts: mean over severities | threat shifts)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
