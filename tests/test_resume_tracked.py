"""SIGKILL + ``--resume`` with validation, the weight average and the experiment trackers on: the same
final weights, the same ``best.safetensors`` and ``ema.safetensors`` as an uninterrupted run, and one
tracker run that logs each step once (W&B: at most once, see below)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import DIGITS_PGDAT
from safetensors.torch import load_file
from test_trackers import INSTALLED, STEPS, mlflow_client, tensorboard_scalars, wandb_records

from igdm_kit import _recipe as R
from igdm_kit._storage.io import read_jsonl
from igdm_kit._training.engine import run

EPOCHS = 4
RECIPE = DIGITS_PGDAT.replace("[data]\nname = \"digits\"", "[data]\nname = \"digits\"\ntrain_limit = 256\nval_size = 64") \
    .replace("epochs = 1", f"epochs = {EPOCHS}\nlr = 0.3").replace("milestones = []", "milestones = [3]") \
    .replace('[eval]\nattacks = ["clean"]',
             '[train.schedule]\nname = "cosine"\nwarmup_epochs = 1\n[train.optimizer]\nname = "adamw"\n'
             '[train.ema]\ndecay = 0.7\n[train.validate]\n[eval]\nattacks = ["clean"]\n'
             'checkpoints = ["last", "best", "ema"]') \
    + f"[log]\ntrackers = {json.dumps(INSTALLED)}\nstep_every = 1\n"
ALL_STEPS = list(range(1, EPOCHS * STEPS + 1))


def _same(a, b):
    a, b = load_file(str(a)), load_file(str(b))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _epoch_records(folder):
    path = folder / "log.jsonl"
    return [r for r in read_jsonl(path) if r.get("epoch") is not None] if path.exists() else []


@pytest.mark.slow
def test_sigkill_then_resume_with_validation_ema_and_trackers(tmp_path):
    p = tmp_path / "r.toml"
    p.write_text(RECIPE)
    ref = tmp_path / "ref"
    run(R.load(p), output_dir=ref)
    out = tmp_path / "run"
    # the reference run started W&B's service in this process: the runs below start their own, as from a shell
    env = {**{k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "igdm_kit", "run", str(p), "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    t0 = time.time()
    # the first epoch's records are in log.jsonl, the last tracker they reach: its state is saved
    while not _epoch_records(out):
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.time() - t0 < 300
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "results.json").exists()
    res = subprocess.run([sys.executable, "-m", "igdm_kit", "run", str(p), "--output", str(out), "--resume"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    for name in ("model.safetensors", "best.safetensors", "ema.safetensors"):
        _same(out / name, ref / name)
    assert [r["epoch"] for r in read_jsonl(out / "metrics.jsonl")] == list(range(1, EPOCHS + 1))
    assert read_jsonl(out / "metrics.jsonl") == [{**r, "seconds": r2["seconds"]} for r, r2 in
                                                 zip(read_jsonl(ref / "metrics.jsonl"),
                                                     read_jsonl(out / "metrics.jsonl"), strict=True)]
    # each tracker: one run, every step once
    records = read_jsonl(out / "log.jsonl")
    assert [r["step"] for r in records if "metrics" in r and r["epoch"] is None] == ALL_STEPS
    assert [r["epoch"] for r in records if r.get("epoch") is not None] == list(range(1, EPOCHS + 1))
    if "tensorboard" in INSTALLED:
        scalars = tensorboard_scalars(out)
        assert [s for s, _ in scalars["train/loss"]] == ALL_STEPS
        assert scalars["epoch/val_robust"] == [(e * STEPS, pytest.approx(r["val_robust"]))
                                               for e, r in enumerate(read_jsonl(ref / "metrics.jsonl"), 1)]
    if "wandb" in INSTALLED:
        recs = wandb_records(out)
        assert len({r["run_id"] for t, r in recs if t == "run"}) == 1  # two offline sessions of one run
        steps = [r["item"]["_step"] for t, r in recs if t == "history" and "train/loss" in r["item"]]
        assert len(steps) == len(set(steps)) and set(steps) <= set(ALL_STEPS)
        # W&B's own service writes what it is handed when it likes: SIGKILL may cost the records it had not
        # written yet (never a record twice); everything after the resume point is there
        epochs = [r["item"]["epoch"] for t, r in recs if t == "history" and "epoch" in r["item"]]
        assert len(epochs) == len(set(epochs)) and set(range(2, EPOCHS + 1)) <= set(epochs) <= set(range(1, EPOCHS + 1))
    if "mlflow" in INSTALLED:
        client = mlflow_client(out)
        runs = client.search_runs([client.get_experiment_by_name("igdm-kit").experiment_id])
        assert len(runs) == 1 and runs[0].info.status == "FINISHED"
        assert sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss")) == ALL_STEPS
