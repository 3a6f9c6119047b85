"""The example plugin's evaluation attack runs from a recipe and from ``igdm-kit eval`` like a built-in."""

import json

from igdm_kit._plugins.manager import registry

RECIPE = """
name = "mim"
[data]
name = "digits"
train_limit = 128
[student]
model = "small-cnn"
width = 4
[method]
name = "pgd-at"
[attack]
eps = 0.1
step_size = 0.05
steps = 1
[train]
epochs = 1
batch_size = 64
milestones = []
[eval]
attacks = ["clean", { name = "mim", steps = 3 }]
eps = 0.1
limit = 40
"""


def test_mim_is_registered_by_the_example_plugin():
    assert registry("eval_attack").entry("mim").plugin == "mart"  # the distribution's entry point


def test_mim_runs_from_a_recipe_and_from_eval(tmp_path, capsys):
    from igdm_kit import _recipe as R
    from igdm_kit._cli import main
    from igdm_kit._training.engine import run

    p = tmp_path / "r.toml"
    p.write_text(RECIPE)
    result = run(R.load(p), output_dir=tmp_path / "run")
    metrics = result.results["metrics"]
    assert list(metrics) == ["clean", "mim(steps=3)"] and metrics["mim(steps=3)"]["label"] == "MIM (steps=3)"
    assert metrics["mim(steps=3)"]["correct"] <= metrics["clean"]["correct"]
    capsys.readouterr()
    try:
        main(["eval", "--model", str(tmp_path / "run" / "model.safetensors"), "--limit", "40",
              "--attacks", "clean", "--attack", "mim:steps=3", "--json", "--no-progress"])
    except SystemExit as exc:
        assert exc.code in (0, None)
    again = json.loads(capsys.readouterr().out)["results"]["metrics"]
    # the same images and seed: eval reproduces the run's own numbers
    assert again["mim(steps=3)"]["correct"] == metrics["mim(steps=3)"]["correct"]
