"""Robust fairness in evaluation (#24): per-class accuracy under every attack and the worst class, with Wilson
intervals, in the report, results.json and ``eval``'s table — what the fairness papers (Fair-ARD, ABSLD)
report."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY
from scipy.stats import binomtest

from igdm_kit._evaluation.report import EvalReport
from igdm_kit._evaluation.runner import evaluate_report


class Argmax(torch.nn.Module):
    """Logits = 10·x: each image's prediction is the position of its largest pixel."""

    def forward(self, x):
        return 10 * x.flatten(1)


def test_per_class_and_worst_class_by_hand():
    # predictions 0,0 | 1,0,2 | 0  for labels 0,0 | 1,1,1 | 2: class 0 2/2, class 1 1/3, class 2 0/1
    pred = [0, 0, 1, 0, 2, 0]
    x = torch.stack([torch.nn.functional.one_hot(torch.tensor(p), 3).float() * 0.9 for p in pred]).view(6, 1, 1, 3)
    y = torch.tensor([0, 0, 1, 1, 1, 2])
    rep = evaluate_report(Argmax(), x, y, attacks=["clean"], eps=0.0, num_classes=3)
    assert rep.per_class["clean"] == [(2, 2), (1, 3), (0, 1)]
    out = rep.to_json()
    assert out["per_class"]["clean"] == {"correct": [2, 1, 0], "total": [2, 3, 1]}
    worst = out["worst_class"]["clean"]
    assert (worst["class"], worst["correct"], worst["total"], worst["accuracy"]) == (2, 0, 1, 0.0)
    ci = binomtest(0, 1).proportion_ci(method="wilson")  # scipy's Wilson interval, the oracle
    assert worst["ci95"] == pytest.approx([100 * ci.low, 100 * ci.high], abs=1e-9)
    assert out["worst_class"]["worst"]["class"] == 2
    back = EvalReport.from_json(json.loads(json.dumps(out)))  # results.json round trip
    assert back.per_class == rep.per_class


def test_a_class_absent_from_the_images_is_not_the_worst():
    x = torch.eye(3)[[0, 0, 1]].mul(0.9).view(3, 1, 1, 3)
    rep = evaluate_report(Argmax(), x, torch.tensor([0, 0, 1]), attacks=["clean"], eps=0.0, num_classes=3)
    assert rep.per_class["clean"][2] == (0, 0) and rep.to_json()["worst_class"]["clean"]["class"] in (0, 1)


def test_a_run_reports_per_class_and_worst_class(tmp_path, write_recipe, cli):
    res = cli("run", write_recipe(TINY.replace('attacks = ["clean"]', 'attacks = ["clean", "fgsm"]')),
              "--output", tmp_path / "run")
    assert res.code == 0, res.err
    r = json.loads((tmp_path / "run" / "results.json").read_text())
    for key in ("clean", "fgsm", "worst"):
        pc = r["per_class"][key]
        assert len(pc["correct"]) == 10 and sum(pc["total"]) == r["n"]
        overall = r["worst"] if key == "worst" else r["metrics"][key]
        assert sum(pc["correct"]) == overall["correct"]  # the classes add up to the whole
        acc = [100 * c / t for c, t in zip(pc["correct"], pc["total"], strict=True) if t]
        assert r["worst_class"][key]["accuracy"] == pytest.approx(min(acc))
    assert "worst class" in res.out


def test_eval_prints_the_worst_class(tmp_path, write_recipe, cli):
    assert cli("run", write_recipe(TINY), "--output", tmp_path / "run").code == 0
    res = cli("eval", "-m", tmp_path / "run" / "model.safetensors", "-a", "clean,fgsm")
    assert res.code == 0, res.err
    assert "worst class:" in res.out and "(worst case)" in res.out


def test_repeated_attack_options_all_count(tmp_path, write_recipe, cli):
    """``eval -a clean -a fgsm`` evaluated FGSM alone (the last -a won, silently): each -a now adds its
    attacks, as a comma list does."""
    assert cli("run", write_recipe(TINY), "--output", tmp_path / "run").code == 0
    model = tmp_path / "run" / "model.safetensors"
    both = cli("eval", "-m", model, "-a", "clean", "-a", "fgsm", "--json")
    listed = cli("eval", "-m", model, "-a", "clean,fgsm", "--json")
    assert both.code == 0 and listed.code == 0, both.err
    got = json.loads(both.out)["results"]
    assert set(got["metrics"]) == {"clean", "fgsm"} == set(json.loads(listed.out)["results"]["metrics"])


def test_report_tables_the_worst_class_with_its_own_interval(tmp_path, write_recipe, cli):
    """``igdm-kit report --metrics all``: each attack's worst-class accuracy is a column, and a single run's
    interval is the worst class's Wilson interval over that class's images (results.json's), not the whole
    test set's."""
    import csv
    import io

    assert cli("run", write_recipe(TINY.replace('attacks = ["clean"]', 'attacks = ["clean", "fgsm"]')),
               "--output", tmp_path / "run").code == 0
    r = json.loads((tmp_path / "run" / "results.json").read_text())
    rep = cli("report", tmp_path / "run", "--metrics", "all", "--format", "csv")
    assert rep.code == 0, rep.err
    rows = {row["metric"]: row for row in csv.DictReader(io.StringIO(rep.out)) if row["kind"] == "value"}
    for key in ("clean", "fgsm", "worst"):
        found, worst = rows[f"worst-class:{key}"], r["worst_class"][key]
        assert float(found["mean"]) == pytest.approx(worst["accuracy"])
        assert [float(found["ci_low"]), float(found["ci_high"])] == pytest.approx(worst["ci95"])
    assert "worst class" in cli("report", tmp_path / "run", "--metrics", "all").out
