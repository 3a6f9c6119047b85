"""Figures a reviewer can read: what they were computed on (dataset, n, ε), axis labels, legends off the
data, log bins where a distribution spans decades, separate runs as points, sweep labels apart."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from igdm_kit._evaluation import plotting as P

pytest.importorskip("matplotlib")


def _row(name, epoch, digest, values):
    v = torch.as_tensor(values, dtype=torch.float64)
    return {"checkpoint": name, "epoch": epoch, "recipe_digest": digest, "_values": v, "mean": v.mean().item(),
            "q25": v.quantile(0.25).item(), "q75": v.quantile(0.75).item()}


def test_log_bins_only_where_linear_bins_pile_up():
    rng = np.random.default_rng(0)
    assert P.log_bins(rng.lognormal(0, 2, 1000))  # three decades, most mass near the bottom
    assert not P.log_bins(rng.uniform(1, 2, 1000))  # less than a decade
    assert not P.log_bins(np.r_[0.0, rng.lognormal(0, 2, 100)])  # a zero: no log axis
    assert not P.log_bins(rng.uniform(1, 50, 1000))  # over a decade, but spread evenly on a linear axis
    assert P.log_bins(rng.lognormal(0, 1.5, 1000)) and not P.log_bins(rng.normal(6, 1.5, 1000).clip(0.1))


def _legend_below_axes(fig):
    ax = fig.axes[0]
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    legend = ax.get_legend()
    return legend is not None and legend.get_window_extent(r).y1 <= ax.get_window_extent(r).y0


def test_a_few_separate_runs_overlay_many_are_points_and_one_run_is_a_curve():
    rng = np.random.default_rng(1)
    separate = [_row(f"runs/{d}/model.safetensors", 15, d, rng.uniform(0, 1, 50) * (i + 1))
                for i, d in enumerate("abc")]
    fig = P.draw_linearity(separate, "digits test, n=50, ε=0.1")
    ax = fig.axes[0]
    edges = {tuple(np.round(patch.get_path().vertices[:, 0], 12)) for patch in ax.patches}
    assert len(ax.patches) == 3 and len({e[1::2] for e in edges}) == 1  # three histograms on the same bins
    names = [t.get_text() for t in ax.get_legend().get_texts()]
    assert [n.split(":")[0] for n in names] == ["a/model.safetensors", "b/model.safetensors", "c/model.safetensors"]
    assert all("mean" in n and "median" in n for n in names) and _legend_below_axes(fig)
    assert len(ax.lines) == 6  # each one's mean and median
    assert "n=50" in fig._suptitle.get_text() and "ε=0.1" in fig._suptitle.get_text() and ax.get_ylabel() == "images"
    many = [_row(f"runs/{d}/model.safetensors", 15, d, rng.uniform(0, 1, 50)) for d in "abcdefg"]
    ax = P.draw_linearity(many, "digits test, n=50, ε=0.1").axes[0]
    assert all(line.get_linestyle() == "None" for line in ax.lines)  # no line joins separate runs
    assert [t.get_text() for t in ax.get_xticklabels()][:2] == ["a/model.safetensors", "b/model.safetensors"]
    assert "25–75 %" in ax.get_title() and ax.get_legend() is None
    epochs = [_row(f"epoch_{e:03d}.safetensors", e, "same", rng.uniform(0, 1, 50)) for e in (3, 1, 2)]
    fig = P.draw_linearity(epochs, "digits test, n=50, ε=0.1")
    ax = fig.axes[0]
    (curve,) = [ln for ln in ax.lines if ln.get_linestyle() != "None"]
    assert list(curve.get_xdata()) == [1, 2, 3] and ax.get_xlabel() == "epoch" and _legend_below_axes(fig)
    P.pyplot().close("all")


def test_overlaid_students_share_bins_and_axes_and_are_named():
    from igdm_kit._evaluation.plot_compare import draw_overlay

    rng = np.random.default_rng(4)
    a, b = torch.as_tensor(rng.normal(2.0, 0.5, 300)), torch.as_tensor(rng.normal(3.0, 0.8, 300))
    heavy = torch.as_tensor(np.r_[rng.normal(2.0, 0.3, 290), rng.uniform(40, 60, 10)])  # a few dominate the mean
    fig = draw_overlay({"δ uniform": {"s1": a, "s2": heavy}, "δ adversarial": {"s1": b, "s2": a}}, "pointwise",
                       {"δ uniform": "‖T − S‖₂", "δ adversarial": "‖T − S‖₂"}, share_x=True)
    left, right = fig.axes
    assert left.get_xlim() == right.get_xlim()  # one x-axis for the same quantity
    first = left.patches[0].get_path().vertices[:, 0]
    assert all(np.allclose(p.get_path().vertices[:, 0], first) for ax in fig.axes for p in ax.patches)
    label = [t.get_text() for t in left.get_legend().get_texts()][1]
    mean, median = float(heavy.mean()), float(heavy.median())
    assert label.startswith("s2:") and f"mean {mean:.4g}" in label and f"median {median:.4g}" in label
    assert mean > median + 1  # why the median is drawn beside the mean
    assert {ln.get_linestyle() for ln in left.lines} == {"--", ":"} and left.get_xlabel().startswith("‖T − S‖₂")
    P.pyplot().close("all")


def test_histograms_have_labels_log_bins_and_the_legend_below():
    rng = np.random.default_rng(2)
    heavy = torch.as_tensor(rng.lognormal(-3, 1.5, 400))
    fig = P.draw_histograms({"GD per image": heavy, "GC per image": torch.as_tensor(rng.uniform(-1, 1, 400))},
                            "gradient alignment\ndigits test, n=400")
    gd, gc = fig.axes
    assert gd.get_xscale() == "log" and gc.get_xscale() == "linear"
    assert all(ax.get_xlabel() and ax.get_ylabel() == "images" for ax in (gd, gc))
    fig = P.draw_histograms({"uniform": heavy, "adversarial": heavy * 3}, "point-wise, n=400, ε=0.1",
                            shared=True, xlabel="‖T(x+δ) − S(x+δ)‖₂")
    assert fig.axes[0].get_xlabel().startswith("‖T(x+δ) − S(x+δ)‖₂") and _legend_below_axes(fig)
    P.pyplot().close("all")


def test_sweep_labels_do_not_overprint_and_axes_use_the_tables_names():
    rows = [{"variant": f"alpha={a}", "overrides": {"module.alpha": a}, "pgd20": acc, "gd": gd, "gc": gc,
             "dataset": "digits", "n": 360, "eps": 0.1}
            for a, acc, gd, gc in ((0, 89.44, 0.134, 0.719), (1, 89.45, 0.1345, 0.7195), (6, 89.17, 0.190, 0.755),
                                   (20, 86.0, 0.21, 0.70))]
    summary = {"recipe": "recipes/quickstart.toml", "rows": rows, "columns": [["pgd20", "PGD-20"]],
               "correlation": {"against": "pgd20", "gc": 0.5, "gd": -0.7}}
    fig = P.draw_sweep(summary)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    metrics, *scatter = fig.axes
    for ax in scatter:
        boxes = [t.get_window_extent(renderer) for t in ax.texts]
        assert len(boxes) == 4
        assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
        assert ax.get_ylabel() == "PGD-20 accuracy (%)" and "pgd20" not in ax.get_title()
        assert "across 4 variants" in ax.get_title() and "not a trend test" in ax.get_title()
    assert "n=360" in fig._suptitle.get_text() and "ε=0.1" in fig._suptitle.get_text()
    # the swept key on the x-axis: 0, 1, 6, 20 are not evenly spaced, so equally spaced and said so
    assert metrics.get_xlabel() == "module.alpha (equally spaced, not to scale)"
    assert [t.get_text() for t in metrics.get_xticklabels()] == ["0", "1", "6", "20"]
    assert metrics.get_ylabel() == "accuracy (%)" and "one seed" in metrics.get_title()
    P.pyplot().close("all")


def test_sweep_metrics_against_the_key_with_the_spread_over_seeds_on_an_honest_axis():
    rows = [{"variant": f"alpha={a}", "overrides": {"module.alpha": a}, "seeds": [0, 1, 2], "clean": c, "pgd20": r,
             "sd": {"clean": 0.4, "pgd20": sd}, "ci95": {}, "dataset": "digits", "n": 360, "eps": 0.1}
            for a, c, r, sd in ((0, 98.0, 89.0, 0.7), (3, 98.2, 89.6, 0.5), (6, 98.1, 90.4, 0.9))]
    fig = P.draw_sweep({"recipe": "r.toml", "rows": rows, "columns": [["clean", "Clean"], ["pgd20", "PGD-20"]],
                        "correlation": {"against": "pgd20"}})
    (ax,) = fig.axes  # no GD/GC measured: the accuracies alone
    assert ax.get_xlabel() == "module.alpha" and "3 seeds" in ax.get_title()
    lo, hi = ax.get_ylim()
    assert hi - lo >= 10  # a 1.4-point difference does not fill the axis
    bars = [c for c in ax.collections if type(c).__name__ == "LineCollection"]
    spans = sorted(round(float(seg[1][1] - seg[0][1]), 6) for c in bars for seg in c.get_segments())
    assert spans == sorted([0.8] * 3 + [1.4, 1.0, 1.8])  # ±1 sd around each mean
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["Clean", "PGD-20"]
    P.pyplot().close("all")
