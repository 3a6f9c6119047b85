"""Training callbacks are a plugin kind: a third-party package adds one (the mean gradient norm per epoch),
written against ``igdm_kit.interfaces`` and ``igdm_kit.hookimpl`` alone, installed as a distribution with an
entry point; it runs in the engine in its documented place (``Order.USER``: after the row's built-ins, before
the metrics log and the checkpoint), and its state survives SIGKILL + ``--resume``.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import DIGITS_PGDAT

from igdm_kit import _recipe as R
from igdm_kit._plugins import manager as plugins
from igdm_kit.interfaces import Order

PLUGIN = '''
"""A third party's callback: the mean L2 norm of the student's gradient over each epoch's steps."""

import json
from pathlib import Path

from pydantic import Field

import igdm_kit
from igdm_kit.files import atomic_write_text
from igdm_kit.interfaces import Callback, Options


class GradNorm(Callback):
    """Mean ‖∇θ L‖₂ of each epoch, in the epoch's row as ``grad_norm``."""

    state_key = "grad-norm"

    class Options(Options):
        key: str = Field("grad_norm", description="the column in metrics.jsonl")

    @classmethod
    def build(cls, options, ctx):
        callback = cls(options)
        callback.run_dir, callback.is_main = ctx.run_dir, ctx.is_main
        callback.epochs = ctx.recipe["train"]["epochs"]
        return callback

    def __init__(self, options):
        super().__init__(options)
        self.total, self.steps, self.history = 0.0, 0, []
        self.events = []

    def state_dict(self):
        return {"total": self.total, "steps": self.steps, "history": self.history}, {}

    def load_state_dict(self, values, tensors):
        self.total, self.steps, self.history = values["total"], values["steps"], values["history"]

    def on_step_end(self, trainer, epoch, step):
        sq = sum(float((p.grad.double() ** 2).sum()) for p in trainer.student.parameters() if p.grad is not None)
        self.total += sq ** 0.5
        self.steps += 1

    def on_epoch_metrics(self, trainer, epoch, row):
        # the built-ins that fill the row run before it (Order.CLEAN_ACCURACY < Order.USER)
        assert "test_clean_acc" in row
        row[self.options.key] = self.total / self.steps
        self.history.append([epoch, self.total / self.steps])
        self.total, self.steps = 0.0, 0

    def on_epoch_end(self, trainer, epoch, row):
        # before the metrics log (Order.METRICS_LOG) writes this epoch's row
        path = Path(self.run_dir) / "metrics.jsonl"
        rows = path.read_text().splitlines() if path.exists() else []
        assert all(json.loads(r)["epoch"] < epoch for r in rows)

    def on_run_end(self, trainer, results, files):
        if self.is_main:
            atomic_write_text(Path(self.run_dir) / "grad_norm.json", json.dumps(self.history))


@igdm_kit.hookimpl
def register_callbacks(register):
    register("grad-norm", GradNorm)
'''

RECIPE = DIGITS_PGDAT.replace("epochs = 1", "epochs = 4").replace(
    "milestones = []", 'milestones = []\ncallbacks = [{ name = "grad-norm", key = "gnorm" }]')


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """The plugin as an installed distribution: its module and a dist-info with the entry point."""
    site = tmp_path / "site"
    (site / "gradnorm_plugin.py").parent.mkdir(parents=True)
    (site / "gradnorm_plugin.py").write_text(textwrap.dedent(PLUGIN))
    info = site / "igdm_kit_gradnorm-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: igdm-kit-gradnorm\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[igdm_kit]\ngradnorm = gradnorm_plugin\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    plugins.reset()
    yield site
    plugins.reset()


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_third_party_callback_is_registered_and_placed_by_its_order(installed, tmp_path):
    entry = plugins.registry("callback").entry("grad-norm")
    assert entry.plugin == "gradnorm" and entry.component.order == Order.USER
    p = tmp_path / "r.toml"
    p.write_text(RECIPE)
    r = R.load(p)
    assert r.resolved()["train"]["callbacks"] == [{"name": "grad-norm", "key": "gnorm"}]
    # the documented order: the row's built-ins, progress, the user's callback, metrics log, checkpoint, ...
    order = sorted([(e.component.order, e.name) for e in plugins.registry("callback")])
    names = [n for _, n in order]
    assert names.index("validation") < names.index("progress") < names.index("grad-norm") \
        < names.index("metrics-log") < names.index("checkpoint") < names.index("best") < names.index("trackers")


def test_unknown_callbacks_and_bad_options_are_one_line(installed, write_recipe):
    from igdm_kit.errors import RecipeError

    with pytest.raises(RecipeError, match=r"train\.callbacks\[0\]: unknown callback 'grad-nrom'"):
        R.load(write_recipe(RECIPE.replace('name = "grad-norm"', 'name = "grad-nrom"')))
    with pytest.raises(RecipeError, match=r"train\.callbacks\[0\]\.colour"):
        R.load(write_recipe(RECIPE.replace('key = "gnorm"', 'colour = 1')))
    with pytest.raises(RecipeError, match=r"train\.callbacks\[1\]: callback 'checkpoint' is always on"):
        R.load(write_recipe(RECIPE.replace('callbacks = [{ name = "grad-norm", key = "gnorm" }]',
                                           'callbacks = ["grad-norm", "checkpoint"]')))
    # a recipe without callbacks keeps its digest: the key is absent from what is hashed
    plain = R.load(write_recipe(DIGITS_PGDAT, "plain.toml"))
    assert "callbacks" not in plain.resolved()["train"]


@pytest.mark.slow
def test_the_callbacks_state_survives_sigkill_and_resume(installed, tmp_path):
    p = tmp_path / "r.toml"
    p.write_text(RECIPE)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = tmp_path / "ref"
    done = subprocess.run([sys.executable, "-m", "igdm_kit", "run", str(p), "--output", str(ref)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    expected = json.loads((ref / "grad_norm.json").read_text())
    assert [e for e, _ in expected] == [1, 2, 3, 4]
    assert all(math.isfinite(v) and v > 0 for _, v in expected)
    assert [r["gnorm"] for r in _rows(ref)] == [v for _, v in expected]

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "igdm_kit", "run", str(p), "--output", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    t0 = time.time()
    while not ((out / "metrics.jsonl").exists() and len((out / "metrics.jsonl").read_text().splitlines()) >= 2):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() - t0 < 300
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "results.json").exists()
    res = subprocess.run([sys.executable, "-m", "igdm_kit", "run", str(p), "--output", str(out), "--resume"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    # the history kept before the kill came back from the training state, and the epochs after it are the
    # uninterrupted run's, bit for bit (same threads, exact resume)
    assert json.loads((out / "grad_norm.json").read_text()) == expected
    assert [r["gnorm"] for r in _rows(out)] == [v for _, v in expected]
