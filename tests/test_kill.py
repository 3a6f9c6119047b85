"""SIGKILL at random moments of a tiny 3-epoch run, then ``--resume`` (issue 18): every resumed run ends with
weights bit-identical to an uninterrupted run, and every file a kill left behind loads.

The kills come from ``kill_worker.py`` (children forked from one warm process, so a trial costs its run
alone); trials go on until ``IGDM_KIT_KILLS`` (20) kills landed inside a run. ``IGDM_KIT_KILL_SEED``
replays a failing seed.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from conftest import TINY
from safetensors import safe_open
from safetensors.torch import load_file

from igdm_kit._storage.checkpoint import load_model
from igdm_kit._storage.io import is_writer_temp, read_jsonl

RECIPE = TINY.replace("epochs = 1", "epochs = 3").replace("milestones = []",
                                                         "milestones = [2]\nsave_every_epoch = true")
KILLS = int(os.environ.get("IGDM_KIT_KILLS", "20"))


def _strict_json(text: str):
    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def _loads(f: Path) -> None:
    """Open every kind of file a run writes, as its reader does."""
    if f.suffix == ".safetensors":
        if f.name == "train_state.safetensors":
            with safe_open(str(f), framework="pt") as fh:
                _strict_json(fh.metadata()["train_state"])
            load_file(str(f))
        elif f.name.startswith("eval_flags"):  # per-image robust flags, read by their own reader
            from igdm_kit._evaluation.runner import load_flags

            load_flags(f)
        else:
            load_model(f)
    elif f.suffix == ".json" or f.name.startswith("autoattack.state"):
        _strict_json(f.read_text())
    elif f.suffix == ".jsonl":
        for line in f.read_text().splitlines():
            _strict_json(line)
    elif f.suffix == ".toml":
        tomllib.loads(f.read_text())
    else:
        raise AssertionError(f"a file igdm-kit does not write: {f}")


def _rows(folder: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in read_jsonl(folder / "metrics.jsonl")]


@pytest.mark.slow
def test_random_sigkills_then_resume_are_bit_identical_and_leave_only_loadable_files(tmp_path):
    seed = int(os.environ.get("IGDM_KIT_KILL_SEED", random.randrange(2**31)))
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE)
    base = tmp_path / "runs"
    base.mkdir()
    worker = Path(__file__).with_name("kill_worker.py")
    res = subprocess.run([sys.executable, str(worker), str(recipe), str(base), str(KILLS), str(seed)],
                         capture_output=True, text=True, timeout=1200, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    replay = f"(replay with IGDM_KIT_KILL_SEED={seed})"
    assert report["reference_codes"] == [0, 0], (base / "ref.log").read_text()[-3000:]
    ref = base / "ref"
    expected = load_file(str(ref / "model.safetensors"))
    again = load_file(str(base / "ref2" / "model.safetensors"))
    assert all(torch.equal(again[k], expected[k]) for k in expected)  # the run itself is deterministic
    killed = 0
    for i, trial in enumerate(report["trials"]):
        out, log = base / f"t{i:02d}", base / f"t{i:02d}.log"
        where = f"trial {i}, killed after {trial['delay']} s {replay}: {log.read_text()[-1500:]}"
        killed += trial["killed"]
        left = base / f"t{i:02d}.killed"
        for f in (left.rglob("*") if left.exists() else []):
            if f.is_file() and not (f.name.endswith(".tmp") or is_writer_temp(f.name)) and f.name != ".igdm-kit.lock":
                _loads(f)  # temporaries and the lock are what resume cleans up, checked below
        assert trial["resume_code"] == 0, where
        got = load_file(str(out / "model.safetensors"))
        assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got), where
        assert _rows(out) == _rows(ref) and [r["epoch"] for r in _rows(out)] == [1, 2, 3], where
        assert _strict_json((out / "results.json").read_text())["metrics"] == \
            _strict_json((ref / "results.json").read_text())["metrics"], where
        assert sorted(p.name for p in out.rglob("*")) == sorted(p.name for p in ref.rglob("*")), where
    assert killed >= KILLS, \
        f"only {killed} of {len(report['trials'])} kills landed inside a run {replay}: {report}"
