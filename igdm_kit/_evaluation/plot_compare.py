"""Figures that compare: several models on shared bins and axes, and a sweep's metrics against its key.

* ``draw_overlay`` — per-image distributions of several models (``analyze linearity|alignment|pointwise``
  with several students): one panel per quantity, every model's histogram on the same bins (the same
  x-axis across panels that measure the same thing), each named in the legend with its mean and median,
  marked on the axis (dashed: mean, dotted: median) — a few images can drag a mean far from the median;
* ``metrics_panel`` — a sweep's accuracies against the swept key (e.g. α), the mean over seeds with ±1 sd
  bars (one seed: its 95% Wilson interval), the y-axis at least ``MIN_SPAN`` points tall so that a
  difference inside the noise does not fill it.
"""

from __future__ import annotations

from typing import Any

#: The least height of an accuracy axis, in points: small differences are drawn small.
MIN_SPAN = 10.0
#: The most separate distributions overlaid on one axis (more are unreadable).
MAX_OVERLAY = 6


def _numpy(values):
    import numpy as np

    return values.double().numpy() if hasattr(values, "double") else np.asarray(values, dtype=float)


def shared_bins(every, bins: int = 40):
    """(bin edges, log axis) for all the given values together."""
    import numpy as np

    from igdm_kit._evaluation.figures import log_bins

    v = np.concatenate([_numpy(x).ravel() for x in every])
    log = log_bins(v)
    lo, hi = float(v.min()), float(v.max())
    if log:
        return np.geomspace(lo, hi, bins + 1), True
    return np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1), False


def draw_overlay(panels: dict[str, dict[str, Any]], title: str, xlabels: dict[str, str], share_x: bool = False):
    """One panel per entry of ``panels`` (its title → model label → per-image values), the models overlaid
    on shared bins; ``share_x``: one x-axis (and bins) for every panel."""
    import numpy as np

    from igdm_kit._evaluation.figures import legend_below, pyplot

    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.6), squeeze=False,
                             sharex=share_x, sharey=False)
    common = shared_bins([v for series in panels.values() for v in series.values()]) if share_x else None
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (name, series) in zip(axes[0], panels.items(), strict=True):
        bins, log = common or shared_bins(list(series.values()))
        for k, (label, values) in enumerate(series.items()):
            v, color = _numpy(values), colors[k % len(colors)]
            mean, median = float(v.mean()), float(np.median(v))
            ax.hist(v, bins=bins, histtype="step", linewidth=1.6, color=color,
                    label=f"{label}: mean {mean:.4g}, median {median:.4g}")
            ax.axvline(mean, color=color, linestyle="--", linewidth=1)
            ax.axvline(median, color=color, linestyle=":", linewidth=1.2)
        if log:
            ax.set_xscale("log")
        ax.set_xlabel(xlabels.get(name, name) + (" (log scale)" if log else ""))
        ax.set_ylabel("images")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts of images
        ax.set_title(f"{name}\n(dashed: mean, dotted: median; {len(bins) - 1} shared bins)", fontsize=9)
        legend_below(ax, 1)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _positions(rows: list[dict[str, Any]]) -> tuple[list[float], list[str], str]:
    """x positions, tick labels and the axis label of the sweep's variants: the swept key's values to scale
    when there is one numeric key spaced evenly enough, else equally spaced and said so."""
    keys = list(dict.fromkeys(k for r in rows for k in (r.get("overrides") or {}) if k != "train.seed"))
    values = [(r.get("overrides") or {}).get(keys[0]) for r in rows] if len(keys) == 1 else []
    numeric = values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    labels = [f"{v:g}" if numeric else r["variant"] for v, r in zip(values or [None] * len(rows), rows, strict=True)]
    if numeric:
        gaps = sorted(b - a for a, b in zip(sorted(values), sorted(values)[1:], strict=False) if b > a)
        if gaps and gaps[-1] <= 3 * gaps[0]:
            return [float(v) for v in values], labels, keys[0]
        return list(map(float, range(len(rows)))), labels, f"{keys[0]} (equally spaced, not to scale)"
    return list(map(float, range(len(rows)))), labels, ", ".join(keys) or "variant"


def _bars(row: dict[str, Any], key: str) -> tuple[float, float]:
    """(below, above) the mean: ±1 sd over seeds, else the row's 95% interval, else none."""
    sd = (row.get("sd") or {}).get(key)
    if sd is not None:
        return sd, sd
    ci = (row.get("ci95") or {}).get(key)
    return (row[key] - ci[0], ci[1] - row[key]) if ci else (0.0, 0.0)


def spread_text(rows: list[dict[str, Any]]) -> str:
    seeds = max((len(r.get("seeds") or []) for r in rows), default=0)
    return f"mean ± 1 sd over {seeds} seeds" if seeds > 1 else "one seed, bars: 95% Wilson interval"


def metrics_panel(ax, summary: dict[str, Any]) -> list[str]:
    """The accuracies of the sweep's columns against its swept key; returns the keys drawn."""
    rows = summary["rows"]
    cols = [(k, h) for k, h in (summary.get("columns") or []) if all(k in r for r in rows)]
    xs, ticks, xlabel = _positions(rows)
    order = sorted(range(len(rows)), key=lambda i: xs[i])
    gaps = [b - a for a, b in zip(sorted(xs), sorted(xs)[1:], strict=False) if b > a]
    dodge = 0.04 * (min(gaps) if gaps else 1.0)  # the metrics' bars side by side, not on top of each other
    lo, hi = 100.0, 0.0
    for m, (k, head) in enumerate(cols):
        ys = [rows[i][k] for i in order]
        err = list(zip(*(_bars(rows[i], k) for i in order), strict=True))
        shift = (m - (len(cols) - 1) / 2) * dodge
        ax.errorbar([xs[i] + shift for i in order], ys, yerr=err, marker="o", markersize=4, capsize=3, label=head)
        lo, hi = min(lo, *(y - e for y, e in zip(ys, err[0], strict=True))), \
            max(hi, *(y + e for y, e in zip(ys, err[1], strict=True)))
    if cols:
        mid, span = (lo + hi) / 2, max(hi - lo, MIN_SPAN) * 1.1
        ax.set_ylim(max(0.0, mid - span / 2), min(100.5, mid + span / 2))
    ax.set_xticks(xs, ticks)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"accuracy against {xlabel.split(' (')[0]}\n{spread_text(rows)}", fontsize=9)
    ax.grid(alpha=0.3)
    return [k for k, _ in cols]
