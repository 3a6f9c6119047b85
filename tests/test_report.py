"""The typed evaluation report: what an evaluation found, as counts, read back from its JSON unchanged, and
merged over shards to what the whole set gives."""

from __future__ import annotations

import json
import math

import torch

from igdm_kit.evaluation import Accuracy, EvalReport, evaluate, evaluate_report


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))


def _data(n=40):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 3, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_accuracy_is_derived_from_counts_by_hand():
    a = Accuracy(8, 10, "Clean")
    assert a.accuracy == 80.0
    # Wilson 95 %, by hand: (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n), z = 1.959964
    z, n, p = 1.959963984540054, 10, 0.8
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    lo, hi = ((centre - half) / (1 + z * z / n) * 100, (centre + half) / (1 + z * z / n) * 100)
    assert math.isclose(a.ci95[0], lo, rel_tol=1e-9) and math.isclose(a.ci95[1], hi, rel_tol=1e-9)
    assert Accuracy.from_json(a.to_json()) == a


def test_the_report_reads_back_from_its_json_and_rows_end_with_the_worst_case():
    x, y = _data()
    rep = evaluate_report(_model(), x, y, attacks=["clean", "fgsm"], eps=0.1, batch_size=16)
    again = EvalReport.from_json(json.loads(json.dumps(rep.to_json())))
    assert again.attacks == rep.attacks and again.worst == rep.worst and again.over == ["clean", "fgsm"]
    assert list(rep.rows()) == ["clean", "fgsm", "worst"]
    # the worst case is the AND of the per-image flags, counted
    assert rep.worst.correct == int((rep.flags["clean"] & rep.flags["fgsm"]).sum())
    # evaluate() is the same report as JSON
    plain = evaluate(_model(), x, y, attacks=["clean", "fgsm"], eps=0.1, batch_size=16)
    assert {**plain, "seconds": None} == {**rep.to_json(), "seconds": None}


def test_shards_merged_by_counts_equal_the_whole_set():
    """What torchrun's ranks add up: two disjoint shards' counts give the whole set's report."""
    x, y = _data(41)
    whole = evaluate_report(_model(), x, y, attacks=["clean", "fgsm"], eps=0.1)
    parts = [evaluate_report(_model(), x[r::2], y[r::2], attacks=["clean", "fgsm"], eps=0.1) for r in (0, 1)]
    counts = {k: sum(p.rows()[k].correct for p in parts) for k in whole.rows()}
    merged = parts[0].with_counts(counts, 41)
    assert merged.rows() == whole.rows() and merged.n == 41 and merged.flags is None and merged.details == {}
