"""``[train.swa]``: the equal average of the student's epoch-end weights, its BatchNorm statistics recomputed.

Oracles: the averaged parameters equal the float64 mean of the per-epoch checkpoints (``save_every_epoch``);
every BatchNorm's running mean and variance equal, by hand, the mean over the training batches of each
batch's mean and unbiased variance of that layer's input in train mode (the cumulative average
``update_bn`` is documented to keep); SIGKILL + ``--resume`` ends bit-identical; the recipe checks.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
import torch
from conftest import TINY
from safetensors.torch import load_file
from test_resume import _same, _start, _wait_for

import igdm_kit
from igdm_kit import _recipe as R
from igdm_kit._storage.checkpoint import read_metadata
from igdm_kit._training.engine import run
from igdm_kit.errors import RecipeError

# a WideResNet-10-1 (BatchNorm throughout) on 250 digits: batches of 64, 64, 64, 58; no augmentation, so the
# BatchNorm pass sees exactly the training images in order
RECIPE = TINY.replace('model = "small-cnn"\nwidth = 4', 'model = "wideresnet"\ndepth = 10\nwiden_factor = 1') \
    .replace("train_limit = 256", "train_limit = 250") \
    .replace("epochs = 1", "epochs = 3\nsave_every_epoch = true\nthreads = 1") \
    .replace('[eval]\nattacks = ["clean"]', '[train.swa]\nstart = 2\n[eval]\nattacks = ["clean"]\n'
                                            'checkpoints = ["swa", "last"]')


@pytest.fixture(scope="module")
def swa_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("swa") / "r.toml"
    path.write_text(RECIPE)
    return path, run(R.load(path), output_dir=path.parent / "run").output_dir


def test_the_average_is_the_mean_of_the_epochs_weights(swa_run):
    _, out = swa_run
    swa = load_file(str(out / "swa.safetensors"))
    epochs = [load_file(str(out / "checkpoints" / f"epoch_{e:03d}.safetensors")) for e in (2, 3)]
    assert read_metadata(out / "swa.safetensors")["swa"] == {"start": 2, "epochs_averaged": 2}
    params = [k for k in swa if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert len(params) > 10
    for k in params:
        mean = (epochs[0][k].double() + epochs[1][k].double()) / 2
        torch.testing.assert_close(swa[k].double(), mean, rtol=1e-6, atol=1e-7)
    assert not torch.equal(swa[params[0]], epochs[1][params[0]])  # an average, not the last epoch


def test_batchnorm_statistics_are_the_mean_of_the_batches_statistics(swa_run):
    path, out = swa_run
    r = R.load(path)
    swa = load_file(str(out / "swa.safetensors"))
    model = igdm_kit.load_model(str(out / "swa.safetensors"))
    x, _ = igdm_kit.create_dataset("digits").load("train")
    x = x[:250].double()
    model = model.double().train()
    seen: dict[str, list[torch.Tensor]] = {}
    names = {m: n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    for m in names:
        m.register_forward_hook(lambda mod, inp, _: seen.setdefault(names[mod], []).append(inp[0]))
    with torch.no_grad():
        for i in range(0, 250, r.model.train.batch_size):
            model(x[i:i + 64])
    assert len(names) >= 5 and all(len(v) == 4 for v in seen.values())
    for name, inputs in seen.items():
        means = torch.stack([t.mean(dim=(0, 2, 3)) for t in inputs])
        variances = torch.stack([t.transpose(0, 1).flatten(1).var(dim=1, unbiased=True) for t in inputs])
        key = name.removeprefix("module.")
        stored = next(k for k in swa if k.endswith(f"{key}.running_mean"))
        torch.testing.assert_close(swa[stored].double(), means.mean(0), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(swa[stored.replace("running_mean", "running_var")].double(), variances.mean(0),
                                   rtol=1e-4, atol=1e-5)


def test_the_run_reports_and_saves_the_average_as_its_headline(swa_run):
    _, out = swa_run
    results = json.loads((out / "results.json").read_text())
    assert results["checkpoint"] == "swa" and set(results["checkpoints"]) == {"swa", "last"}
    _same(load_file(str(out / "model.safetensors")), load_file(str(out / "swa.safetensors")))


@pytest.mark.slow
def test_sigkill_and_resume_give_the_same_average(swa_run, tmp_path):
    _, out = swa_run
    expected = load_file(str(out / "swa.safetensors"))
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE)
    run_dir = tmp_path / "run"
    proc = _start(recipe, run_dir)
    metrics = run_dir / "metrics.jsonl"
    _wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 2, proc)  # after the first average
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    res = subprocess.run([sys.executable, "-m", "igdm_kit", "run", str(recipe), "--output", str(run_dir),
                          "--resume"], capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    _same(load_file(str(run_dir / "swa.safetensors")), expected)


def test_the_recipe_is_checked(write_recipe):
    with pytest.raises(RecipeError, match=r"train.swa.start: epoch 5 is after the last \(3\)"):
        R.load(write_recipe(RECIPE.replace("start = 2", "start = 5")))
    with pytest.raises(RecipeError, match=r"eval.checkpoints: 'swa' needs \[train.swa\]"):
        R.load(write_recipe(RECIPE.replace("[train.swa]\nstart = 2\n", "")))
    assert R.load(write_recipe(TINY)).digest() == R.load(write_recipe(TINY)).digest()
    assert "swa" not in R.load(write_recipe(TINY)).resolved()["train"]  # recipes without it keep their digest
