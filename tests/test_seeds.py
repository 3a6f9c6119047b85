"""Seeds as a sweep axis: parsing, expansion into ``<variant>/seed=K``, the statistics over seeds against
their formulas, and a seeded sweep's table against a hand computation from its runs' files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY
from scipy import stats as sps

from igdm_kit._evaluation import stats
from igdm_kit._evaluation.runner import load_flags
from igdm_kit._sweep import sweep as S
from igdm_kit.errors import RecipeError

FAMILY = TINY.replace('name = "pgd-at"', 'name = "trades"').replace('attacks = ["clean"]',
                                                                   'attacks = ["clean", "fgsm"]') + """
[module]
name = "trades-reg"
alpha = 1.0
"""


def test_parse_seeds_ranges_lists_and_errors():
    assert S.parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert S.parse_seeds("0,2,5") == [0, 2, 5]
    assert S.parse_seeds("0-2,7") == [0, 1, 2, 7]
    assert S.parse_seeds([3, 1]) == [3, 1]
    for bad in ("a", "1-x", "", "-1", [1, 1], "0-2,1", [], [1.5], [True]):
        with pytest.raises(RecipeError) as exc:
            S.parse_seeds(bad)
        assert "seed" in exc.value.message and "--seeds 0-4" in exc.value.hint


def test_seeds_expand_every_variant_once_per_seed_in_its_own_folder(write_recipe, tmp_path):
    p = write_recipe(FAMILY + '\n[sweep]\n"module.alpha" = [0.0, 2.0]\nseeds = "0-2"\n')
    variants = S.expand(p)
    assert [v.label for v in variants] == [f"alpha={a}/seed={s}" for a in (0, 2) for s in (0, 1, 2)]
    assert [(v.group, v.seed, v.recipe.model.train.seed) for v in variants[:3]] == \
        [("alpha=0", s, s) for s in (0, 1, 2)]
    assert len({v.recipe.digest() for v in variants}) == 6
    assert S.variant_folder(tmp_path, variants[4], 6) == tmp_path / "alpha=2" / "seed=1"
    # --seeds on the command line (the grid's "seeds") replaces the recipe's; the seed alone as an axis
    alone = S.expand(write_recipe(FAMILY), grid={"seeds": [4, 9]})
    assert [v.label for v in alone] == ["seed=4", "seed=9"] and alone[0].group == "t"
    assert S.variant_folder(tmp_path, alone[1], 2) == tmp_path / "seed=9"


def test_seeds_beside_another_choice_of_the_seed_are_refused(write_recipe):
    p = write_recipe(FAMILY + '\n[sweep]\n"train.seed" = [0, 1]\n')
    with pytest.raises(RecipeError, match="train.seed is set both by a sweep key and by the seeds axis"):
        S.expand(p, grid={"seeds": [0, 1]})
    with pytest.raises(RecipeError, match="train.seed is set both by --set"):
        S.expand(write_recipe(FAMILY, "b.toml"), ["train.seed=3"], grid={"seeds": [0, 1]})


def test_t_interval_is_the_textbook_interval():
    v = [1.0, 2.0, 3.0, 4.0]  # mean 2.5, sd √(5/3), t(0.975, 3) = 3.182446305284263
    s = stats.t_interval(v)
    assert (s.n, s.mean) == (4, 2.5)
    assert s.sd == pytest.approx(math.sqrt(5 / 3))
    half = 3.182446305284263 * math.sqrt(5 / 3) / 2
    assert s.ci95 == pytest.approx((2.5 - half, 2.5 + half))
    one = stats.t_interval([7.0])
    assert (one.mean, one.sd, one.ci95) == (7.0, None, None)  # one seed: no spread, no interval


def test_paired_t_against_its_formula():
    a, b = [80.1, 81.3, 79.8, 80.6, 80.9], [81.0, 81.9, 80.1, 81.8, 81.2]
    d = np.array(b, dtype=np.float64) - np.array(a, dtype=np.float64)
    t = d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))
    p = 2 * sps.t.sf(abs(t), len(d) - 1)
    res = stats.paired_t(a, b)
    assert (res.n, res.difference, res.t, res.p_value) == (5, pytest.approx(d.mean()), pytest.approx(t),
                                                          pytest.approx(p))
    assert res.significant == (p < 0.05)
    # identical differences (or one seed): t is undefined, and nothing is called significant
    same = stats.paired_t([1.0, 2.0], [2.0, 3.0])
    assert (same.p_value, same.significant, same.difference) == (None, False, 1.0)


def test_stratified_mcnemar_hand_worked_case():
    # three seeds, 100 images each; (only A right, only B right) = (4, 10), (5, 8), (3, 12):
    # Σ a_only = 12, Σ b_only = 30, χ² = (12 − 30)² / 42 = 324 / 42 = 7.714285...,
    # p = P(χ²₁ > 7.714) = 0.005479
    res = stats.stratified_mcnemar([(100, 4, 10), (100, 5, 8), (100, 3, 12)])
    assert (res.strata, res.n, res.a_only, res.b_only) == (3, 300, 12, 30)
    assert res.statistic == pytest.approx(324 / 42)
    assert res.p_value == pytest.approx(0.0054787, abs=1e-6)
    assert res.significant
    assert stats.stratified_mcnemar([(10, 0, 0)]).p_value == 1.0


def test_stratified_mcnemar_is_cmh_over_pair_strata():
    """The closed form against the general Cochran–Mantel–Haenszel statistic over 2×2 tables, one per
    (seed, image) pair, computed from the textbook formula in float64."""
    rng = np.random.default_rng(3)
    strata, num, var = [], 0.0, 0.0
    for _ in range(3):
        fa, fb = rng.random(50) < 0.6, rng.random(50) < 0.7
        strata.append((50, int((fa & ~fb).sum()), int((fb & ~fa).sum())))
        for x, y in zip(fa, fb, strict=True):
            a, b, c, d = float(x), float(not x), float(y), float(not y)  # rows A, B; columns right, wrong
            n, m1, m0, n1, n0 = a + b + c + d, a + b, c + d, a + c, b + d
            num += a - m1 * n1 / n
            var += m1 * m0 * n1 * n0 / (n * n * (n - 1))
    res = stats.stratified_mcnemar(strata)
    assert res.statistic == pytest.approx(num * num / var)
    assert res.p_value == pytest.approx(sps.chi2.sf(num * num / var, 1))


def _by_hand(folders: list[Path], key: str) -> list[float]:
    return [json.loads((f / "results.json").read_text())["metrics"][key]["accuracy"] for f in folders]


@pytest.mark.slow
def test_seeded_sweep_table_equals_a_hand_computation(tmp_path, write_recipe, cli):
    p = write_recipe(FAMILY.replace("epochs = 1", "epochs = 2") + '\n[sweep]\n"module.alpha" = [0.0, 2.0]\n')
    out = tmp_path / "family"
    res = cli("sweep", p, "--seeds", "0-2", "--output", out, "--json")
    assert res.code == 0, res.err
    summary = json.loads(res.out)["results"]
    assert summary["seeds"] == [0, 1, 2]
    a, b = summary["rows"]
    assert (a["variant"], b["variant"], a["seeds"]) == ("alpha=0", "alpha=2", [0, 1, 2])
    fa = [out / "alpha=0" / f"seed={s}" for s in range(3)]
    fb = [out / "alpha=2" / f"seed={s}" for s in range(3)]
    assert all(json.loads((f / "manifest.json").read_text())["seed"] == s for s, f in enumerate(fa))
    for key in ("clean", "fgsm"):
        va, vb = _by_hand(fa, key), _by_hand(fb, key)
        assert a[key] == pytest.approx(np.mean(va)) and a["sd"][key] == pytest.approx(np.std(va, ddof=1))
        half = sps.t.ppf(0.975, 2) * np.std(va, ddof=1) / math.sqrt(3)
        # the t interval of the mean, within 0–100 % where an accuracy lies
        assert a["ci95"][key] == pytest.approx([max(0.0, np.mean(va) - half), min(100.0, np.mean(va) + half)])
        test = summary["versus_first"][0]["rows"][key]
        assert test["difference"] == pytest.approx(np.mean(vb) - np.mean(va))
        if np.std(np.subtract(vb, va)) > 0:
            assert test["paired_t"]["p_value"] == pytest.approx(sps.ttest_rel(vb, va).pvalue)
        only_a = only_b = 0
        for x, y in zip(fa, fb, strict=True):  # the pooled test from the flags files, counted here
            ga, gb = load_flags(x / "eval_flags.safetensors")[0][key], load_flags(y / "eval_flags.safetensors")[0][key]
            only_a += int((ga & ~gb).sum())
            only_b += int((gb & ~ga).sum())
        pooled = test["per_image"]
        assert (pooled["a_only"], pooled["b_only"], pooled["strata"], pooled["n"]) == (only_a, only_b, 3, 3 * 360)
        if only_a + only_b:
            assert pooled["chi2"] == pytest.approx((only_a - only_b) ** 2 / (only_a + only_b))
    # the Rich table: one row per variant, mean ± sd, the change row naming both tests
    res = cli("sweep", p, "--seeds", "0-2", "--output", out)
    assert res.code == 0 and "3 seeds (0–2)" in res.out and "±" in res.out and "CMH p=" in res.out
    assert res.out.count("alpha=0") == 1 and "seed=1" not in res.out
    # a rerun reuses every seed's run; --seeds 0-3 adds only seed 3
    again = json.loads(cli("sweep", p, "--seeds", "0-3", "--output", out, "--json").out)["results"]
    assert [r["reused"] for r in again["rows"][0]["runs"]] == [True, True, True, False]


@pytest.mark.slow
def test_seeds_on_a_launcher_are_the_sequential_sweeps_runs(tmp_path, write_recipe, cli):
    p = write_recipe(FAMILY)
    out = tmp_path / "family"
    res = cli("sweep", p, "--seeds", "0,5", "--jobs", "2", "--output", out, "--json")
    assert res.code == 0, res.err
    launched = json.loads(res.out)["results"]
    assert sorted(x.name for x in out.iterdir()) == ["jobs", "seed=0", "seed=5"]
    again = json.loads(cli("sweep", p, "--seeds", "0,5", "--output", out, "--json").out)["results"]
    assert [r["reused"] for r in again["rows"][0]["runs"]] == [True, True]  # the same recipe, the same folder
    assert again["rows"][0]["clean"] == launched["rows"][0]["clean"]


def test_an_accuracys_interval_stays_within_0_and_100_percent():
    from igdm_kit._evaluation.aggregate import SeedRun, spreads

    v = [1.0, 2.0, 30.0]
    s = spreads([SeedRun(i, str(i), {"clean": x, "gd": x}) for i, x in enumerate(v)])
    m, half = 11.0, 4.302652729911275 * np.std(v, ddof=1) / math.sqrt(3)  # t(0.975, 2)
    assert m - half < 0 and s["clean"].mean == m
    assert s["clean"].ci95 == (0.0, pytest.approx(m + half))
    assert s["gd"].ci95 == (pytest.approx(m - half), pytest.approx(m + half))  # not a percentage: not clipped


def test_the_resume_command_keeps_the_seeds(monkeypatch, write_recipe, cli):
    from igdm_kit._cli import sweep as cli_sweep

    seen = {}
    monkeypatch.setattr(cli_sweep, "execute", lambda *a, **k: seen.update(k, grid=a[2]))
    assert cli("sweep", write_recipe(FAMILY), "--seeds", "0-2", "--jobs", "2").code == 0
    assert "--seeds 0-2" in seen["resume_command"] and "--resume" in seen["resume_command"]
    assert seen["grid"] == {"seeds": [0, 1, 2]}
    bad = cli("sweep", write_recipe(FAMILY), "--seeds", "0-x")
    assert bad.code == 1 and "--seeds: '0-x' is not a seed or a range of seeds" in bad.err
