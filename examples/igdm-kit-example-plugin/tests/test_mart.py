"""The example plugin is discovered through its entry point and computes MART's loss."""

import math

import torch

from igdm_kit._plugins.manager import registry
from igdm_kit._training.step import Step


def test_mart_is_registered_by_the_example_plugin():
    entry = registry("method").entry("mart")
    assert entry.plugin == "mart"  # the entry-point name, not a built-in


def test_mart_loss_matches_a_hand_computation():
    from igdm_kit_example.mart import MART

    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 3, bias=False).double()
    x = torch.rand(2, 3, dtype=torch.float64)
    x_adv = (x + 0.1).clamp(0, 1)
    y = torch.tensor([0, 2])
    step = Step(lin, None, x, y, epoch=1, epochs=1)
    step.set_input("x_adv", x_adv)
    terms = MART(MART.Options(beta=6.0)).loss(step)

    expected = 0.0
    for i in range(2):
        za, zn = (lin(x_adv[i]).tolist(), lin(x[i]).tolist())
        pa = [math.exp(v) / sum(math.exp(u) for u in za) for v in za]
        pn = [math.exp(v) / sum(math.exp(u) for u in zn) for v in zn]
        wrong = max((k for k in range(3) if k != y[i]), key=lambda k: pa[k])
        bce = -math.log(pa[y[i]]) - math.log(1.0001 - pa[wrong] + 1e-12)
        kl = sum(pn[k] * (math.log(pn[k] + 1e-12) - math.log(pa[k] + 1e-12)) for k in range(3))
        expected += (bce + 6.0 * kl * (1.0000001 - pn[y[i]])) / 2
    assert math.isclose(float(sum(terms.values()).detach()), expected, rel_tol=1e-9)


def test_the_readme_recipe_ships_and_trains(tmp_path):
    """The README runs `recipe.toml`: it exists, names this plugin's method and trains (briefly here)."""
    import json
    from pathlib import Path

    from igdm_kit._cli import main

    folder = Path(__file__).resolve().parents[1]
    recipe = folder / "recipe.toml"
    assert "igdm-kit run examples/igdm-kit-example-plugin/recipe.toml" in (folder / "README.md").read_text()
    out = tmp_path / "run"
    try:
        main(["run", str(recipe), "--set", "train.epochs=1", "--set", "data.train_limit=128",
              "--set", "eval.attacks=clean,", "--output", str(out), "--json"])
    except SystemExit as exc:
        assert exc.code in (0, None)
    results = json.loads((out / "results.json").read_text())
    assert json.loads((out / "manifest.json").read_text())["recipe"]["method"] == {"name": "mart", "beta": 6.0}
    assert 0 <= results["metrics"]["clean"]["accuracy"] <= 100
