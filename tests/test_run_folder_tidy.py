"""Small things a first run trips over: a finished run folder keeps no AutoAttack resume state, and a
recipe named without its path or extension is found for the hint."""

from __future__ import annotations

import pytest
from conftest import DIGITS_PGDAT, ROOT


@pytest.mark.slow
def test_a_finished_run_keeps_no_autoattack_state(cli, write_recipe, tmp_path):
    text = DIGITS_PGDAT.replace('name = "digits"', 'name = "digits"\ntrain_limit = 64\ntest_limit = 8') \
        .replace('attacks = ["clean"]', 'attacks = ["clean", "autoattack"]\neps = 0.1')
    out = tmp_path / "run"
    res = cli("run", write_recipe(text), "--output", out)
    assert res.code == 0, res.err
    assert (out / "results.json").is_file() and not (out / "autoattack.state").exists()


@pytest.mark.parametrize("typed, meant", [("quickstart", "recipes/quickstart.toml"),
                                          ("quickstart.toml", "recipes/quickstart.toml"),
                                          ("recipes/quickstrat.toml", "recipes/quickstart.toml"),
                                          ("svhn_pgdat", "recipes/paper/svhn_resnet18/svhn_pgdat.toml")])
def test_a_recipe_named_loosely_is_suggested(cli, monkeypatch, typed, meant):
    monkeypatch.chdir(ROOT)
    res = cli("run", typed)
    assert res.code == 1 and "does not exist" in res.err
    assert f"did you mean {meant}" in res.err
