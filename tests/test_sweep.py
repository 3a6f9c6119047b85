"""Recipe families: grid expansion, validation before training, reuse of finished variants, one table."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import DIGITS_PGDAT

from igdm_kit._evaluation.plotting import sweep_figure
from igdm_kit._sweep import sweep as S
from igdm_kit.errors import RecipeError

FAMILY = DIGITS_PGDAT.replace('name = "pgd-at"', 'name = "trades"') + """
[module]
name = "trades-reg"
alpha = 1.0
"""


def test_parse_grid_values_are_toml():
    assert S.parse_grid(["module.alpha=20,40.5,60", "module.distance=kl"]) == {
        "module.alpha": [20, 40.5, 60], "module.distance": ["kl"]}
    with pytest.raises(RecipeError, match="dotted.key=v1,v2"):
        S.parse_grid(["module.alpha"])


def test_expand_is_the_cartesian_product_and_validates_every_variant(write_recipe):
    p = write_recipe(FAMILY + '\n[sweep]\n"module.alpha" = [0.0, 2.0]\n')
    variants = S.expand(p, grid={"train.seed": [0, 1, 2]})
    assert len(variants) == 6
    assert {(v.recipe.components["module"].alpha, v.recipe.model.train.seed) for v in variants} == \
        {(a, s) for a in (0.0, 2.0) for s in (0, 1, 2)}
    assert len({v.recipe.digest() for v in variants}) == 6
    # one bad value anywhere fails the whole family before anything runs, naming the variant
    with pytest.raises(RecipeError) as exc:
        S.expand(p, grid={"module.alpha": [1.0, -3.0]})
    assert "alpha=-3" in str(exc.value) and "module.alpha" in str(exc.value)


def test_pearson_matches_numpy():
    xs, ys = [0.1, 0.4, 0.35, 0.8], [20.0, 25.0, 24.0, 30.5]
    assert S.pearson(xs, ys) == pytest.approx(np.corrcoef(xs, ys)[0, 1])
    assert S.pearson([1, 2], [3, 4]) is None  # too few points for a correlation
    assert S.pearson([1, 1, 1], [3, 4, 5]) is None


def test_sweep_runs_reuses_and_prints_one_table(tmp_path, write_recipe, cli):
    p = write_recipe(FAMILY.replace('attacks = ["clean"]', 'attacks = ["clean", "fgsm"]')
                     + '\n[sweep]\n"module.alpha" = [0.0, 2.0]\n')
    out = tmp_path / "family"
    res = cli("sweep", p, "--output", out, "--json")
    assert res.code == 0, res.err
    rows = json.loads(res.out)["results"]["rows"]
    assert [r["variant"] for r in rows] == ["alpha=0", "alpha=2"]
    assert all(0 <= r["clean"] <= 100 and "fgsm" in r for r in rows)
    assert not any(r["reused"] for r in rows)
    # metrics of the alpha=0 variant have no module term (zero weight: not computed)
    first = (out / "alpha=0" / "metrics.jsonl").read_text()
    assert '"module"' not in first and '"module"' in (out / "alpha=2" / "metrics.jsonl").read_text()
    before = (out / "alpha=2" / "model.safetensors").read_bytes()
    res = cli("run", p, "--output", out)  # `run` on a family recipe runs the family
    assert res.code == 0 and "alpha=0" in res.out and "change" in res.out
    assert (out / "alpha=2" / "model.safetensors").read_bytes() == before  # reused, not retrained


def test_plot_writes_a_png_with_the_correlations(tmp_path):
    rows = [{"variant": f"alpha={a}", "autoattack": aa, "gd": gd, "gc": gc}
            for a, aa, gd, gc in ((0, 24.8, 0.142, 0.44), (20, 27.9, 0.112, 0.52), (100, 28.8, 0.101, 0.57))]
    summary = {"rows": rows, "correlation": S.correlations(rows)}
    assert summary["correlation"]["against"] == "autoattack"
    assert summary["correlation"]["gc"] == pytest.approx(np.corrcoef([0.44, 0.52, 0.57], [24.8, 27.9, 28.8])[0, 1])
    path = sweep_figure(summary, tmp_path / "fig3.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(Exception, match="no accuracies nor GD/GC"):
        sweep_figure({"rows": [{"variant": "a"}], "correlation": {"against": "autoattack"}}, tmp_path / "no.png")
