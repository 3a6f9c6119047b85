"""A run never 'succeeds' with garbage (issue 18): inf/nan and absurd magnitudes are refused when the recipe
is validated; a non-finite gradient or weight stops the run with one line (exit 1) before it is saved;
every JSON file is strict JSON."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import TINY

from igdm_kit._plugins import manager as plugins
from igdm_kit.interfaces import Method, Options


@pytest.mark.parametrize("setting, words", [
    ("train.lr=inf", "train.lr: must be a finite number"),
    ("train.lr=nan", "train.lr: must be a finite number"),
    ("train.lr=1e300", "train.lr"),
    ("train.seed=1e20", "train.seed"),
    ("train.seed=-1", "train.seed"),
    ("train.device=foo", "train.device: 'foo' is not a device"),
    ("eval.eps=inf", "eval.eps: must be a finite number"),
    ("eval.eps='inf/1'", "eval.eps"),
    ("eval.eps=3", "eval.eps"),
    ("attack.eps=inf", "attack.eps"),
    ("attack.step_size=nan", "attack.step_size"),
    ("train.weight_decay=1e200", "train.weight_decay"),
])
def test_non_finite_and_absurd_recipe_values_are_refused_at_validation(setting, words, write_recipe, cli):
    p = write_recipe(TINY)
    res = cli("recipe", "check", p, "--set", setting)
    assert res.code == 1 and "Traceback" not in res.err, res.err
    assert res.err.strip().splitlines()[0].startswith(f"error: {words}"), res.err


@pytest.fixture
def registered():
    """Register components for one test (real plugins of the registry, removed afterwards)."""
    added: list[tuple[str, str]] = []

    def add(kind: str, name: str, component) -> None:
        plugins.registry(kind).add(name, component, "tests")
        added.append((kind, name))

    yield add
    for kind, name in added:
        plugins.registry(kind)._entries.pop(name)


class BatchNormBlowUp:
    """small-cnn whose first BatchNorm's running variance turns NaN after a given number of training
    forwards — the loss (batch statistics) and the gradients stay finite; only the saved model is garbage."""

    class Options(Options):
        width: int = 4
        after: int = 8

    @classmethod
    def build(cls, options, *, num_classes, in_channels, image_size):
        net = plugins.registry("model").get("small-cnn").build(
            plugins.registry("model").get("small-cnn").Options(width=options.width), num_classes=num_classes,
            in_channels=in_channels, image_size=image_size)
        seen = [0]

        def hook(module, args):
            if module.training:
                seen[0] += 1
                if seen[0] == options.after:  # the forward then folds NaN into the running statistics
                    with torch.no_grad():
                        net[1].running_var.fill_(float("nan"))

        net.register_forward_pre_hook(hook)
        return net


def test_nan_in_the_weights_stops_the_run_before_it_is_saved(registered, tmp_path, write_recipe, cli):
    registered("model", "bn-blow-up", BatchNormBlowUp)
    # 4 steps an epoch: the 8th training forward is the last step of epoch 2, the last epoch
    p = write_recipe(TINY.replace('model = "small-cnn"\nwidth = 4', 'model = "bn-blow-up"\nafter = 8')
                     .replace("epochs = 1", "epochs = 2"))
    out = tmp_path / "run"
    res = cli("run", p, "--output", out)
    assert res.code == 1, res.err
    assert "error: the student's weights are not finite after epoch 2 (net.1.running_var: 4 of 4 values)" \
        in res.err and "Traceback" not in res.err
    assert not (out / "results.json").exists() and not (out / "model.safetensors").exists()
    from safetensors.torch import load_file

    from igdm_kit._storage.checkpoint import read_metadata

    assert read_metadata(out / "last.safetensors")["epoch"] == 1  # the last good one
    assert all(bool(t.isfinite().all()) for t in load_file(str(out / "last.safetensors")).values())
    assert [row["epoch"] for row in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())] == [1]


class NaNGradient(Method):
    """Cross-entropy plus 0·sqrt(z − z): the loss is finite, its gradient is NaN (0·∞)."""

    class Options(Options):
        pass

    def loss(self, ctx):
        logits = ctx.student("x_adv")
        z = logits.sum()
        return {"adv_ce": torch.nn.functional.cross_entropy(logits, ctx.y) + 0.0 * torch.sqrt(z - z.detach())}


def test_a_non_finite_gradient_stops_the_run_before_the_step(registered, tmp_path, write_recipe, cli):
    registered("method", "nan-grad", NaNGradient)
    p = write_recipe(TINY.replace('name = "pgd-at"', 'name = "nan-grad"'))
    out = tmp_path / "run"
    res = cli("run", p, "--output", out)
    assert res.code == 1 and "Traceback" not in res.err, res.err
    assert "is not finite at epoch 1, step 1" in res.err and "error: the gradient of 'net." in res.err
    assert not (out / "last.safetensors").exists()


def _strict(text: str):
    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_every_json_written_is_strict_json(tmp_path, capsys):
    from igdm_kit._cli.console import print_json
    from igdm_kit._storage.io import atomic_write_json, atomic_write_jsonl

    values = {"lr": math.inf, "gc": math.nan, "ok": 0.5, "rows": [-math.inf, 1.0], "nested": {"x": math.nan}}
    atomic_write_json(tmp_path / "results.json", values)
    assert _strict((tmp_path / "results.json").read_text()) == {
        "lr": None, "gc": None, "ok": 0.5, "rows": [None, 1.0], "nested": {"x": None}}
    atomic_write_jsonl(tmp_path / "metrics.jsonl", [values, {"epoch": 2, "lr": math.nan}])
    assert [_strict(line)["lr"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [None, None]
    capsys.readouterr()
    print_json("run", values)
    assert _strict(capsys.readouterr().out)["results"]["gc"] is None


def test_the_files_of_a_run_are_strict_json(tmp_path, write_recipe):
    from igdm_kit import _recipe as R
    from igdm_kit._training.engine import run

    out = tmp_path / "run"
    run(R.load(write_recipe(TINY)), output_dir=out)
    for name in ("manifest.json", "results.json"):
        _strict((out / name).read_text())
    for line in (out / "metrics.jsonl").read_text().splitlines():
        _strict(line)
