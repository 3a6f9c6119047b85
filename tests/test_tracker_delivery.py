"""Trackers receive each record exactly once across kills (issue 27): a SIGKILL right after an epoch's
training state is saved, after ``results.json`` is written, or inside the first epoch, then ``--resume``;
and ``--overwrite`` of a finished run. Each tracker is read back with its own reader — TensorBoard's
``EventAccumulator``, MLflow's ``MlflowClient`` on its file store — and ``log.jsonl`` line by line.

The kills come from a third party's callback installed as a distribution (``killer``): its ``order`` puts it
between the training state's save and the trackers (``Order.CHECKPOINT`` < 650 < ``Order.TRACKERS``), and
it SIGKILLs its own process at the moment ``IGDM_TEST_KILL`` names (unset: it does nothing, so the resumed
run has the same recipe). A tracker whose package does not import is skipped with its install line.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
from conftest import DIGITS_PGDAT

from igdm_kit._storage.io import read_jsonl

INSTALL = {"tensorboard": "pip install 'igdm-kit[tensorboard]'", "mlflow": "pip install 'igdm-kit[mlflow]'"}


def _imports(name: str) -> bool:
    """Whether the tracker's library really imports (a package another wheel ships may be found and fail)."""
    try:
        importlib.import_module(name)
    except Exception:  # noqa: BLE001 - any failure to import means the tracker cannot run here
        return False
    return True


TRACKERS = [name for name in INSTALL if _imports(name)]
STEPS = 3  # (256 − 64 validation images) / 64 per batch
EPOCHS = 2
ALL_STEPS = list(range(1, EPOCHS * STEPS + 1))

KILLER = '''
"""A third party's callback that SIGKILLs its own process where IGDM_TEST_KILL says."""

import os
import signal

import igdm_kit
from igdm_kit.interfaces import Callback


class Killer(Callback):
    order = 650  # after the training state is saved, before the trackers are handed its records

    @classmethod
    def build(cls, options, ctx):
        return cls(options)

    def _at(self, moment):
        if os.environ.get("IGDM_TEST_KILL") == moment:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_step_end(self, trainer, epoch, step):
        self._at(f"epoch {epoch} step {step + 1}")

    def on_epoch_end(self, trainer, epoch, row):
        self._at(f"epoch {epoch} saved")

    def on_run_end(self, trainer, results, files):
        self._at("results written")


@igdm_kit.hookimpl
def register_callbacks(register):
    register("killer", Killer)
'''

RECIPE = DIGITS_PGDAT.replace('[data]\nname = "digits"', '[data]\nname = "digits"\ntrain_limit = 256\nval_size = 64') \
    .replace("epochs = 1", f"epochs = {EPOCHS}") \
    .replace("milestones = []", 'milestones = []\ncallbacks = [{ name = "killer" }]') \
    .replace('[eval]\nattacks = ["clean"]', '[eval]\nattacks = ["clean", "fgsm"]') \
    + f"[log]\ntrackers = {json.dumps(TRACKERS)}\nstep_every = 1\n"


@pytest.fixture
def killer(tmp_path, monkeypatch):
    """The killer plugin as an installed distribution (entry point ``igdm_kit``), for this process and its
    children; the recipe naming it."""
    from igdm_kit._plugins import manager as plugins

    site = tmp_path / "site"
    site.mkdir()
    (site / "killer_plugin.py").write_text(textwrap.dedent(KILLER))
    info = site / "igdm_kit_killer-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: igdm-kit-killer\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[igdm_kit]\nkiller = killer_plugin\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    plugins.reset()
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE)
    yield recipe
    plugins.reset()


def _igdm(*args, kill: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("IGDM_TEST_KILL", None)
    if kill is not None:
        env["IGDM_TEST_KILL"] = kill
    return subprocess.run([sys.executable, "-m", "igdm_kit", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600)


def _killed_then_resumed(recipe, out, moment: str) -> None:
    first = _igdm("run", recipe, "--output", out, kill=moment)
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    again = _igdm("run", recipe, "--output", out, "--resume")
    assert again.returncode == 0, again.stderr[-2000:]


# -- the trackers' own readers -----------------------------------------------------------------------------
def tensorboard_events(folder):
    """(scalars by tag: [(step, value)], how many manifest texts) through TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    texts = sum(len(acc.Tensors(t)) for t in acc.Tags()["tensors"] if t.startswith("manifest"))
    return scalars, texts


def mlflow_runs(folder):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(folder / "mlruns").resolve().as_uri())
    exp = client.get_experiment_by_name("igdm-kit")
    return client, client.search_runs([exp.experiment_id]) if exp else []


def check_every_record_once(folder, *, finished: bool = True) -> None:
    """Each tracker holds one run with every step and epoch once, the manifest once and, when the run
    finished, the final results once and its run closed."""
    results = json.loads((folder / "results.json").read_text()) if finished else None
    records = read_jsonl(folder / "log.jsonl")
    assert [r["step"] for r in records if "metrics" in r and r["epoch"] is None] == ALL_STEPS
    assert sum("config" in r for r in records) == 1
    assert [r["epoch"] for r in records if r.get("epoch") is not None] == list(range(1, EPOCHS + 1))
    summaries = [r["summary"] for r in records if "summary" in r]
    assert len(summaries) == (1 if finished else 0)
    if finished:
        assert summaries[0]["test/last/fgsm"] == results["metrics"]["fgsm"]["accuracy"]
    rows = read_jsonl(folder / "metrics.jsonl")
    if "tensorboard" in TRACKERS:
        scalars, texts = tensorboard_events(folder)
        assert texts == 1
        assert [s for s, _ in scalars["train/loss"]] == ALL_STEPS
        assert scalars["epoch/test_clean_acc"] == [(e * STEPS, pytest.approx(r["test_clean_acc"]))
                                               for e, r in enumerate(rows, 1)]
        if finished:
            assert scalars["test/last/fgsm"] == [(EPOCHS * STEPS, pytest.approx(results["metrics"]["fgsm"]["accuracy"]))]
    if "mlflow" in TRACKERS:
        client, runs = mlflow_runs(folder)
        assert len(runs) == 1
        run_id = runs[0].info.run_id
        assert sorted(m.step for m in client.get_metric_history(run_id, "train/loss")) == ALL_STEPS
        assert sorted(m.step for m in client.get_metric_history(run_id, "epoch/test_clean_acc")) == \
            [e * STEPS for e in range(1, EPOCHS + 1)]
        if finished:
            assert runs[0].info.status == "FINISHED"
            history = client.get_metric_history(run_id, "test/last/fgsm")
            assert [m.value for m in history] == [pytest.approx(results["metrics"]["fgsm"]["accuracy"])]
        manifest = client.list_artifacts(run_id)
        assert [a.path for a in manifest] == ["manifest.json"]


@pytest.fixture
def trackers_installed():
    missing = [name for name in INSTALL if name not in TRACKERS]
    if missing:
        pytest.skip("; ".join(f"{n} does not import: {INSTALL[n]}" for n in missing))


@pytest.mark.slow
def test_sigkill_right_after_an_epochs_state_save_loses_no_record(killer, tmp_path, trackers_installed):
    """Killed after epoch 1's training state is saved, before the trackers got its records: the resumed run
    hands them over, each once."""
    out = tmp_path / "run"
    _killed_then_resumed(killer, out, "epoch 1 saved")
    check_every_record_once(out)


@pytest.mark.slow
def test_sigkill_after_results_json_delivers_the_results_on_resume(killer, tmp_path, trackers_installed):
    """Killed once ``results.json`` is written, before the trackers got the final results: ``--resume`` of
    the finished run delivers them, once, and closes each tracker's run."""
    out = tmp_path / "run"
    _killed_then_resumed(killer, out, "results written")
    check_every_record_once(out)
    again = _igdm("run", killer, "--output", out, "--resume")  # delivered already: nothing twice
    assert again.returncode == 0, again.stderr[-2000:]
    check_every_record_once(out)


@pytest.mark.slow
def test_sigkill_in_the_first_epoch_reopens_the_same_tracker_runs(killer, tmp_path, trackers_installed):
    """Killed in epoch 1, before any training state: the resumed run reopens each tracker's run (one MLflow
    run, one manifest text), not a second one beside an orphan."""
    out = tmp_path / "run"
    _killed_then_resumed(killer, out, "epoch 1 step 2")
    check_every_record_once(out)


@pytest.mark.slow
def test_overwrite_deletes_the_tracker_folders_igdm_kit_created(killer, tmp_path, trackers_installed):
    out = tmp_path / "run"
    assert _igdm("run", killer, "--output", out).returncode == 0
    (out / "notes.txt").write_text("mine")  # a file of the user's stays
    res = _igdm("run", killer, "--output", out, "--overwrite")
    assert res.returncode == 0, res.stderr[-2000:]
    check_every_record_once(out)
    assert (out / "notes.txt").read_text() == "mine"
