"""Stop requests outside a run's epochs (issue 27): ``igdm-kit analyze`` (and ``eval --shifts``' shift
evaluation) ends on SIGINT/SIGTERM with one line and 128 + the signal; a second Ctrl-C ends a run at once
with one line and 130 — never click's "Aborted!" nor a traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import DIGITS_PGDAT, TINY

from igdm_kit import _recipe as R


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from igdm_kit._training.engine import run

    d = tmp_path_factory.mktemp("model")
    (d / "r.toml").write_text(TINY)
    return run(R.load(d / "r.toml"), output_dir=d / "run").output_dir / "model.safetensors"


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _signal_after(args: list[str], line: str, signum: int) -> subprocess.CompletedProcess:
    """Run ``igdm-kit args``; once ``line`` starts a line of its stderr, send ``signum``."""
    proc = subprocess.Popen([sys.executable, "-m", "igdm_kit", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())
    seen = []
    t0 = time.time()
    while True:
        text = proc.stderr.readline()
        assert text or proc.poll() is None, "".join(seen)[-3000:]
        seen.append(text)
        if text.startswith(line):
            break
        assert time.time() - t0 < 300
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(args, proc.returncode, out, "".join(seen) + err)


def _last_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()][-2:]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_analyze_stops_with_one_line_and_128_plus_the_signal(checkpoint, signum):
    res = _signal_after(["analyze", "pointwise", "-s", checkpoint, "-t", checkpoint, "--steps", "300",
                         "--batch-size", "32", "--json"], "ε = ", signum)
    assert res.returncode == 128 + signum, res.stderr[-3000:]
    assert "Traceback" not in res.stderr and "Aborted" not in res.stderr and not res.stdout
    error, hint = _last_lines(res.stderr)
    assert error == f"error: {signal.Signals(signum).name}: analysis stopped"
    assert hint == "hint: nothing was written: run the same command again"


@pytest.mark.slow
def test_analyze_ood_stops_on_sigterm(checkpoint):
    res = _signal_after(["analyze", "ood", checkpoint, "--shifts", "threats", "--batch-size", "16", "--json"],
                        "shifts of 1 model", signal.SIGTERM)
    assert res.returncode == 143 and "Traceback" not in res.stderr and not res.stdout, res.stderr[-3000:]
    assert _last_lines(res.stderr)[0] == "error: SIGTERM: shift evaluation stopped"


def test_a_second_sigint_raises_stop_now_not_keyboard_interrupt():
    from igdm_kit._runtime.signals import StopFlag, StopNow

    with pytest.raises(StopNow) as exc, StopFlag() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        assert stop.signum == signal.SIGINT  # the first: stop at the next check
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)  # the handler raises in this thread
    assert not isinstance(exc.value, KeyboardInterrupt) and exc.value.error().exit_code == 130


@pytest.mark.slow
def test_a_second_ctrl_c_ends_a_run_at_once_with_one_line(tmp_path):
    """Ctrl-C twice in a step of over a second: the second stops the run at once — 'error: SIGINT again: …',
    exit 130, no 'Aborted!', no traceback, the folder's lock released."""
    p = tmp_path / "slow.toml"
    p.write_text(DIGITS_PGDAT.replace("width = 8", "width = 32").replace("steps = 2", "steps = 20")
                 .replace("batch_size = 64", "batch_size = 512").replace("epochs = 1", "epochs = 2"))
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "igdm_kit", "run", str(p), "--output", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    t0 = time.time()
    while not (out / "manifest.json").exists():  # training starts right after the manifest is written
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() - t0 < 300
        time.sleep(0.02)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    assert "Aborted" not in err and "Traceback" not in err
    error, hint = _last_lines(err)
    assert error.startswith("error: SIGINT again: stopped at once")
    assert hint.startswith("hint: what was saved before is kept")
    assert not (out / ".igdm-kit.lock").exists()  # the lock released on the way out
