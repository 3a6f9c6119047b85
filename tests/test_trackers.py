"""Experiment trackers, for real and offline, each read back with its own library: TensorBoard's event
reader, W&B's offline run (through ``wandb leet inspect``), MLflow's file store through ``MlflowClient``, and
``log.jsonl``. A tracker whose package is missing is skipped with its install line; CI installs them."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DIGITS_PGDAT

from igdm_kit import _recipe as R
from igdm_kit._storage.io import read_jsonl

INSTALL = {"tensorboard": "pip install 'igdm-kit[tensorboard]'", "wandb": "pip install 'igdm-kit[wandb]'",
           "mlflow": "pip install 'igdm-kit[mlflow]'"}
INSTALLED = [name for name in INSTALL if importlib.util.find_spec(name) is not None]
STEPS = 3  # (256 − 64 validation images) / 64 per batch

TRACKED = DIGITS_PGDAT.replace("[data]\nname = \"digits\"",
                               "[data]\nname = \"digits\"\ntrain_limit = 256\nval_size = 64") \
    .replace("epochs = 1", "epochs = 2") \
    .replace('[eval]\nattacks = ["clean"]', '[train.validate]\n[eval]\nattacks = ["clean", "fgsm"]\n'
             'checkpoints = ["last", "best"]')


def tracked(trackers: list[str]) -> str:
    return TRACKED + f"[log]\ntrackers = {json.dumps(trackers)}\nstep_every = 1\nartifacts = true\n"


def needs(name: str):
    if name not in INSTALLED:
        pytest.skip(f"{name} is not installed: {INSTALL[name]}")


def wandb_records(folder: Path) -> list[tuple[str, dict]]:
    """Every record of every offline run under ``folder``, read by W&B's own ``wandb leet inspect``."""
    out = []
    for f in sorted(folder.glob("wandb/offline-run-*/run-*.wandb")):
        res = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(f)],
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr[-2000:]
        for line in res.stdout.splitlines():
            if line.startswith("{"):
                rec = json.loads(line)
                out.append((rec["type"], rec.get(rec["type"], {})))
    return out


def mlflow_client(folder: Path):
    import os

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=(folder / "mlruns").resolve().as_uri())


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder / "tensorboard"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    from igdm_kit._training.engine import run

    d = tmp_path_factory.mktemp("tracked")
    (d / "r.toml").write_text(tracked(INSTALLED))
    res = run(R.load(d / "r.toml"), output_dir=d / "run")
    return res.output_dir, read_jsonl(res.output_dir / "metrics.jsonl"), res.results


def test_jsonl_is_always_on(tracked_run):
    folder, rows, results = tracked_run
    assert R.load(folder / "recipe.toml").digest() == R.load(folder.parent / "r.toml").digest()
    records = read_jsonl(folder / "log.jsonl")
    assert records[0]["config"] == json.loads((folder / "manifest.json").read_text())
    steps = [r["step"] for r in records if "metrics" in r and r["epoch"] is None]
    assert steps == list(range(1, 2 * STEPS + 1))
    epochs = [r for r in records if r.get("epoch") is not None]
    assert [r["metrics"]["epoch/val_robust"] for r in epochs] == [row["val_robust"] for row in rows]
    assert records[-1]["summary"]["test/best/fgsm"] == results["checkpoints"]["best"]["metrics"]["fgsm"]["accuracy"]


def test_tensorboard_event_files_read_back(tracked_run):
    needs("tensorboard")
    folder, rows, results = tracked_run
    scalars = tensorboard_scalars(folder)
    assert [s for s, _ in scalars["train/loss"]] == list(range(1, 2 * STEPS + 1))
    assert scalars["epoch/val_robust"] == [(e * STEPS, pytest.approx(r["val_robust"])) for e, r in
                                           enumerate(rows, 1)]
    assert scalars["epoch/lr"][0][1] == pytest.approx(rows[0]["lr"])
    assert scalars["test/last/clean"][0][1] == pytest.approx(results["metrics"]["clean"]["accuracy"])
    assert "test/best/fgsm" in scalars


def test_wandb_offline_run_reads_back(tracked_run):
    needs("wandb")
    folder, rows, results = tracked_run
    records = wandb_records(folder)
    runs = [r for t, r in records if t == "run"]
    assert len(runs) == 1
    config = runs[0]["config"]["update"]
    assert config["recipe_digest"] == json.loads((folder / "manifest.json").read_text())["recipe_digest"]
    history = [r["item"] for t, r in records if t == "history"]
    assert [h["epoch/val_robust"] for h in history if "epoch/val_robust" in h] == \
        pytest.approx([r["val_robust"] for r in rows])
    assert sorted(h["_step"] for h in history if "train/loss" in h) == list(range(1, 2 * STEPS + 1))
    summary = {}
    for t, r in records:
        if t == "summary":
            summary.update(r.get("update", {}))
    assert summary["test/best/clean"] == pytest.approx(results["checkpoints"]["best"]["metrics"]["clean"]["accuracy"])
    assert any(t == "artifact" for t, _ in records)  # the checkpoints, kept for `wandb sync`
    assert [r for t, r in records if t == "exit"][-1].get("exit_code", 0) == 0


def test_mlflow_file_store_reads_back(tracked_run):
    needs("mlflow")
    folder, rows, results = tracked_run
    client = mlflow_client(folder)
    exp = client.get_experiment_by_name("igdm-kit")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run_id = runs[0].info.run_id
    manifest = json.loads((folder / "manifest.json").read_text())
    assert runs[0].data.params["recipe_digest"] == manifest["recipe_digest"]
    assert runs[0].data.params["recipe.train.epochs"] == "2"
    hist = client.get_metric_history(run_id, "epoch/val_robust")
    assert sorted((m.step, m.value) for m in hist) == [(e * STEPS, pytest.approx(r["val_robust"]))
                                                       for e, r in enumerate(rows, 1)]
    assert sorted(m.step for m in client.get_metric_history(run_id, "train/loss")) == list(range(1, 2 * STEPS + 1))
    assert runs[0].data.metrics["test/last/clean"] == pytest.approx(results["metrics"]["clean"]["accuracy"])
    artifacts = {a.path for a in client.list_artifacts(run_id)} | \
        {a.path for a in client.list_artifacts(run_id, "checkpoints")}
    assert {"manifest.json", "checkpoints/model.safetensors", "checkpoints/best.safetensors"} <= artifacts


def test_a_missing_or_unknown_tracker_is_refused_before_training(write_recipe, monkeypatch):
    from igdm_kit.errors import RecipeError

    with pytest.raises(RecipeError, match="log.trackers: unknown logger 'tensorbord'.*"):
        R.load(write_recipe(TRACKED + '[log]\ntrackers = ["tensorbord"]\n'))
    with pytest.raises(RecipeError, match="log.wandb: unknown key"):
        R.load(write_recipe(TRACKED + '[log]\n[log.wandb]\nproject = "x"\n'))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "wandb" else real(n, *a))
    with pytest.raises(RecipeError) as exc:
        R.load(write_recipe(TRACKED + '[log]\ntrackers = ["wandb"]\n'))
    assert "pip install 'igdm-kit[wandb]'" in exc.value.hint
