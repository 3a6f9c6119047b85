"""Every figure igdm-kit draws, behind one matplotlib guard (the ``plot`` extra), written atomically.

* ``linearity_figure`` — Taylor remainder proportion: a histogram for one checkpoint, the per-epoch curve
  of Figure 2b for a run's checkpoints;
* ``histograms_figure`` — per-sample distributions (gradient alignment, point-wise distance; Tables 4–5);
* ``sweep_figure`` — GC and GD against robust accuracy across a sweep's variants (Figure 3);
* ``ood_figure`` — robustness under distribution and threat shifts per checkpoint (Table 9).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import IgdmKitError


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend, or a one-line error naming the extra."""
    try:
        import matplotlib
    except ImportError:
        raise IgdmKitError("--plot needs matplotlib, which is not installed",
                           "pip install matplotlib (igdm-kit's 'plot' extra)") from None
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: str | Path, dpi: int = 150) -> Path:
    """Write ``fig`` to ``path`` atomically (format from the extension) and close it."""
    from .io import atomic_write

    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight"))
    except (OSError, ValueError) as exc:
        raise IgdmKitError(f"cannot write the plot {str(path)!r}: {exc}",
                           "check the folder and the extension (.png, .pdf, .svg)") from None
    finally:
        pyplot().close(fig)
    return path


def histogram(ax, values, **kwargs) -> None:
    """A histogram that also copes with (nearly) constant values, e.g. GC = 1 for a model with itself."""
    v = values.double().numpy()
    spread = float(v.max() - v.min()) if v.size else 0.0
    ax.hist(v, bins=40 if spread > 1e-9 * max(1.0, float(abs(v).max())) else 1, **kwargs)


def linearity_figure(results: list[dict[str, Any]], path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    if len(results) == 1:
        r = results[0]
        histogram(ax, r["_values"])
        ax.axvline(r["mean"], color="k", linestyle="--", label=f"mean {r['mean']:.4f}")
        ax.set_xlabel("Taylor remainder proportion")
        ax.set_ylabel("samples")
        ax.legend()
        ax.set_title(checkpoint_label(r["checkpoint"], [x["checkpoint"] for x in results]))
    else:
        epochs = [r["epoch"] for r in results]
        # a curve over epochs only for one run's per-epoch files (distinct epochs); else one point each
        have_epochs = None not in epochs and len(set(epochs)) == len(epochs)
        xs = [r["epoch"] if have_epochs else i for i, r in enumerate(results)]
        ax.plot(xs, [r["mean"] for r in results], marker="o", label="mean")
        ax.fill_between(xs, [r["q25"] for r in results], [r["q75"] for r in results], alpha=0.3,
                        label="25–75 %")
        ax.set_xlabel("epoch" if have_epochs else "checkpoint")
        if have_epochs:
            from matplotlib.ticker import MaxNLocator

            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        else:
            names = [r["checkpoint"] for r in results]
            ax.set_xticks(xs, [checkpoint_label(n, names) for n in names], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("Taylor remainder proportion")
        ax.legend()
    return save(fig, path)


def histograms_figure(series: dict[str, Any], path: Path, title: str, shared: bool = False) -> Path:
    plt = pyplot()
    if shared:
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, values in series.items():
            histogram(ax, values, alpha=0.6, label=f"{label} (mean {values.mean().item():.4f})")
        ax.set_ylabel("samples")
        ax.legend()
    else:
        fig, axes = plt.subplots(1, len(series), figsize=(5 * len(series), 4))
        for ax, (label, values) in zip(axes, series.items(), strict=True):
            histogram(ax, values)
            ax.set_xlabel(label)
            ax.set_ylabel("samples")
    fig.suptitle(title)
    return save(fig, path)


def sweep_figure(summary: dict[str, Any], path: str | Path) -> Path:
    """Scatter of GC and GD against robust accuracy across the runs, with the correlation (Figure 3)."""
    plt = pyplot()
    rows, corr = summary["rows"], summary["correlation"]
    key = corr.get("against")
    if not key or not all("gd" in r and "gc" in r for r in rows):
        raise IgdmKitError("the sweep has no GD/GC to plot", "set eval.analysis = true (needs a teacher)")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for ax, g in zip(axes, ("gc", "gd"), strict=True):
        ax.scatter([r[g] for r in rows], [r[key] for r in rows])
        for r in rows:
            ax.annotate(r["variant"], (r[g], r[key]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.margins(0.15)  # room for the labels at the edges
        ax.tick_params(axis="x", labelrotation=30)
        c = corr.get(g)
        ax.set_xlabel(g.upper())
        ax.set_ylabel(f"{key} accuracy (%)")
        ax.set_title(f"{g.upper()} vs {key}" + (f" (r = {c:.2f})" if c is not None else ""))
    fig.tight_layout()
    return save(fig, path, dpi=120)


def checkpoint_label(path, paths) -> str:
    """A checkpoint's file name, with its folder when several share a name (runs' model.safetensors)."""
    p = Path(path)
    names = [Path(q).name for q in paths]
    return p.name if names.count(p.name) <= 1 else f"{p.parent.name}/{p.name}"


def ood_figure(results: list[dict[str, Any]], path: str | Path) -> Path:
    """Table 9 as a figure: (left) the summary columns per checkpoint with their intervals; (right) the
    robust accuracy on each dataset-shift unit and threat shift, one marker per checkpoint."""
    plt = pyplot()
    from .shifts import SUMMARY

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
