"""Stop requests (issue 18): SIGTERM in every phase of a run — inside an epoch, between epochs, as the last
epoch is saved, during the final evaluation — and of ``igdm-kit eval`` (AutoAttack included) saves the
state, names the command that resumes, exits 128 + 15 = 143; resuming ends with the results of an
uninterrupted run."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import DIGITS_PGDAT, TINY
from safetensors.torch import load_file

from igdm_kit import _recipe as R
from igdm_kit._storage.io import read_jsonl
from igdm_kit._training.engine import run
from igdm_kit.errors import Interrupted

RECIPE = TINY.replace("epochs = 1", "epochs = 3").replace(
    'attacks = ["clean"]', 'attacks = ["clean", "pgd20"]\nlimit = 64')
STEPS = 4  # 256 images, batch 64


class SignalAt:
    """A Rich-Progress-like recorder (``run(progress=...)``) and log callback that send this process SIGTERM
    once, when the run reaches the phase: a step of training, an epoch's log line, an evaluation batch."""

    def __init__(self, *, step: int | None = None, log_line: str | None = None, eval_batch: bool = False):
        self.step, self.log_line, self.eval_batch = step, log_line, eval_batch
        self.tasks: dict[int, str] = {}
        self.steps = 0
        self.sent = False

    def _send(self) -> None:
        if not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)

    def add_task(self, description: str, total=None, **_) -> int:
        self.tasks[len(self.tasks)] = description
        return len(self.tasks) - 1

    def update(self, task: int, advance: int = 0, completed=None, **_) -> None:
        if " eval " in self.tasks[task]:
            if self.eval_batch:
                self._send()
            return
        self.steps += advance
        if self.step is not None and self.steps == self.step:
            self._send()

    def log(self, line: str) -> None:
        if self.log_line is not None and line.startswith(self.log_line):
            self._send()


@pytest.fixture
def sigterm_guard():
    """A SIGTERM that no igdm-kit handler takes fails the test instead of killing pytest."""
    def unhandled(signum, frame):
        raise RuntimeError("SIGTERM reached the test: the run had no handler installed")

    old = signal.signal(signal.SIGTERM, unhandled)
    yield
    signal.signal(signal.SIGTERM, old)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    base = tmp_path_factory.mktemp("stop")
    p = base / "r.toml"
    p.write_text(RECIPE)
    result = run(R.load(p), output_dir=base / "ref")
    return p, result


def _same_run(out, reference):
    _, ref = reference
    a, b = load_file(str(out / "model.safetensors")), load_file(str(ref.output_dir / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((out / "results.json").read_text())["metrics"] == ref.results["metrics"]
    strip = [{k: v for k, v in row.items() if k != "seconds"} for row in read_jsonl(out / "metrics.jsonl")]
    assert strip == [{k: v for k, v in row.items() if k != "seconds"} for row in ref.metrics]


@pytest.mark.parametrize("phase, trigger, words", [
    ("inside an epoch", dict(step=STEPS + 2), "training stopped and saved at epoch 2, step 2"),
    ("between epochs", dict(log_line="t epoch 1/3"), "training stopped and saved at the start of epoch 2"),
    ("as the last epoch is saved", dict(log_line="t epoch 3/3"), "stopped after the last epoch"),
    ("during the final evaluation", dict(eval_batch=True), "the final evaluation stopped"),
])
def test_sigterm_in_every_phase_saves_exits_143_and_resumes_exactly(phase, trigger, words, reference, tmp_path,
                                                                    sigterm_guard):
    p, _ = reference
    out = tmp_path / "run"
    at = SignalAt(**trigger)
    with pytest.raises(Interrupted) as exc:
        run(R.load(p), output_dir=out, progress=at, log=at.log)
    assert at.sent and exc.value.exit_code == 143, phase
    assert exc.value.message.startswith("SIGTERM: ") and words in exc.value.message
    assert "--resume" in exc.value.hint and str(out) in exc.value.hint
    assert not (out / "results.json").exists() and (out / "train_state.safetensors").exists()
    resumed = run(R.load(p), output_dir=out, resume=True)
    assert not resumed.reused
    _same_run(out, reference)


def _stop_when_exists(cmd: list[str], marker, env) -> subprocess.CompletedProcess:
    """Run ``igdm-kit cmd``; SIGTERM it as soon as ``marker`` exists (AutoAttack's state: it is mid-way)."""
    proc = subprocess.Popen([sys.executable, "-m", "igdm_kit", *cmd], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    t0 = time.time()
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() - t0 < 300
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _last_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()][-2:]


@pytest.mark.slow
def test_sigterm_during_autoattack_at_the_cli_resumes_to_an_uninterrupted_result(tmp_path):
    """At the command line, in the final evaluation of ``igdm-kit run`` and in ``igdm-kit eval --aa-state``:
    SIGTERM once AutoAttack's state exists → 'error: SIGTERM: …' + 'hint: <the command>', exit 143, no
    traceback; that command finishes with the numbers of an uninterrupted evaluation."""
    from igdm_kit._evaluation.runner import evaluate, load_eval_data, report_json
    from igdm_kit._storage.checkpoint import load_model

    p = tmp_path / "r.toml"
    p.write_text(DIGITS_PGDAT.replace("epochs = 1", "epochs = 4").replace(
        'attacks = ["clean"]', 'attacks = ["clean", "autoattack"]\nlimit = 8\nbatch_size = 4\neps = 0.2'))
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = _stop_when_exists(["run", str(p), "--output", str(out)], out / "autoattack.state", env)
    assert res.returncode == 143 and "Traceback" not in res.stderr, res.stderr[-2000:]
    error, hint = _last_lines(res.stderr)
    assert error.startswith("error: SIGTERM: the final evaluation stopped")
    assert hint == f"hint: resume with: igdm-kit run {p} --resume --output {out}"
    again = subprocess.run([sys.executable, "-m", "igdm_kit", "run", str(p), "--resume", "--output", str(out)],
                           capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())

    x, y = load_eval_data("digits", 8)
    reference = report_json(evaluate(load_model(out / "model.safetensors"), x, y, attacks=("clean", "autoattack"),
                                     batch_size=4, eps=0.2))  # uninterrupted, in this process
    assert results["metrics"] == reference["metrics"] and results["details"] == reference["details"]

    state = tmp_path / "aa.state"
    cmd = ["eval", "--model", str(out / "model.safetensors"), "--attacks", "clean,autoattack", "--limit", "8",
           "--batch-size", "4", "--eps", "0.2", "--aa-state", str(state), "--json", "--no-progress"]
    res = _stop_when_exists(cmd, state, env)
    assert res.returncode == 143 and "Traceback" not in res.stderr and not res.stdout, res.stderr[-2000:]
    error, hint = _last_lines(res.stderr)
    assert error == "error: SIGTERM: evaluation stopped"
    assert hint.startswith(f"hint: run it again, AutoAttack resumes from {state}: igdm-kit eval --model")
    command = shlex.split(hint.split(": ", 2)[2])
    assert command[:2] == ["igdm-kit", "eval"] and all(a in command for a in cmd[1:])  # every option kept
    again = subprocess.run([sys.executable, "-m", "igdm_kit", *command[1:]], capture_output=True, text=True,
                           env=env, timeout=600)  # the printed command itself
    assert again.returncode == 0, again.stderr[-2000:]
    resumed = json.loads(again.stdout)["results"]
    assert resumed["metrics"] == reference["metrics"] and resumed["details"] == reference["details"]
