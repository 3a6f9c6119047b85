"""Interruptions: SIGKILL after a checkpoint, then --resume, ends bit-identical to an uninterrupted run;
SIGINT finishes the step, saves, says how to resume; a non-finite loss stops with the last good checkpoint.
The runs train on ``pytest --device`` (``train.device``; cpu unless asked), in fp32 and with
``train.amp = "bf16"`` (#28: the bf16 path keeps the resume contract — exactly, on the same device)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import DIGITS_PGDAT
from safetensors.torch import load_file

from igdm_kit import _recipe as R
from igdm_kit._training.engine import run
from igdm_kit.errors import TrainingError

RECIPE = DIGITS_PGDAT.replace("epochs = 1", "epochs = 4").replace("milestones = []", "milestones = [3]") \
    .replace("steps = 2", "steps = 5")


def on(text: str, device, amp: str = "off") -> str:
    """A recipe with ``train.device`` set to the tests' device (and ``train.amp``)."""
    return text.replace("[train]\n", f'[train]\ndevice = "{device}"\namp = "{amp}"\n', 1)


def _weights(path):
    return load_file(str(path))


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _start(recipe, out):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "igdm_kit", "run", str(recipe), "--output", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for(pred, proc, timeout=300):
    t0 = time.time()
    while not pred():
        assert proc.poll() is None, "the run ended before it could be interrupted"
        assert time.time() - t0 < timeout
        time.sleep(0.02)


@pytest.fixture(scope="module", params=["off", "bf16"], ids=["fp32", "bf16"])
def reference(tmp_path_factory, device, request):
    out = tmp_path_factory.mktemp("ref") / "run"
    p = out.parent / "r.toml"
    p.write_text(on(RECIPE, device, request.param))
    run(R.load(p), output_dir=out)
    return p, _weights(out / "model.safetensors")


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(reference, tmp_path):
    recipe, expected = reference
    out = tmp_path / "run"
    proc = _start(recipe, out)
    _wait_for(lambda: (out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text().count("\n") >= 1,
              proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "results.json").exists()
    res = subprocess.run([sys.executable, "-m", "igdm_kit", "run", str(recipe), "--output", str(out),
                          "--resume"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    _same(_weights(out / "model.safetensors"), expected)
    assert [int(line.split('"epoch": ')[1].split(",")[0]) for line in
            (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


@pytest.mark.slow
def test_sigint_finishes_the_step_saves_and_resumes_exactly(reference, tmp_path):
    recipe, expected = reference
    out = tmp_path / "run"
    proc = _start(recipe, out)
    _wait_for(lambda: (out / "manifest.json").exists(), proc)
    time.sleep(1.0)  # somewhere inside an epoch
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert "SIGINT" in err and "--resume" in err and "Traceback" not in err
    assert (out / "train_state.safetensors").exists()
    res = subprocess.run([sys.executable, "-m", "igdm_kit", "run", str(recipe), "--output", str(out),
                          "--resume"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    _same(_weights(out / "model.safetensors"), expected)


def test_non_finite_loss_stops_with_last_good_checkpoint(tmp_path, monkeypatch, write_recipe, device):
    from igdm_kit_plugins.methods.pgd_at import PGDAT

    real = PGDAT.loss

    def poisoned(self, ctx):
        terms = real(self, ctx)
        if ctx.epoch == 2:
            terms["adv_ce"] = terms["adv_ce"] * float("nan")
        return terms

    monkeypatch.setattr(PGDAT, "loss", poisoned)
    p = write_recipe(on(DIGITS_PGDAT.replace("epochs = 1", "epochs = 3"), device))
    out = tmp_path / "run"
    with pytest.raises(TrainingError) as exc:
        run(R.load(p), output_dir=out)
    msg = str(exc.value)
    assert "'adv_ce'" in msg and "epoch 2" in msg and "step 1" in msg
    from igdm_kit._storage.checkpoint import read_metadata

    assert read_metadata(out / "last.safetensors")["epoch"] == 1  # the last good one, loadable


def test_training_state_round_trips_optimizer_scheduler_rng_and_grad_scaler(tmp_path):
    from igdm_kit._storage.train_state import load_train_state, save_train_state
    from igdm_kit.factories import create_model

    torch.manual_seed(0)
    model = create_model("small-cnn", num_classes=10, in_channels=1, image_size=8, width=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[1, 3], gamma=0.1)
    model(torch.rand(4, 1, 8, 8)).sum().backward()
    opt.step()
    sched.step()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler_state = scaler.state_dict()
    rng = torch.get_rng_state()
    save_train_state(tmp_path / "s.safetensors", model=model, optimizer=opt, scheduler=sched, epoch=1,
                     extra={"grad_scaler": scaler_state}, extra_tensors={"g": torch.arange(3)})
    expected_next = torch.rand(3)  # what the RNG gives right after the save

    fresh = create_model("small-cnn", num_classes=10, in_channels=1, image_size=8, width=4)
    opt2 = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    sched2 = torch.optim.lr_scheduler.MultiStepLR(opt2, milestones=[1, 3], gamma=0.1)
    torch.manual_seed(123)
    meta = load_train_state(tmp_path / "s.safetensors", model=fresh, optimizer=opt2, scheduler=sched2)
    assert torch.equal(torch.get_rng_state(), rng) and torch.equal(torch.rand(3), expected_next)
    assert meta["epoch"] == 1 and torch.equal(meta["extra_tensors"]["g"], torch.arange(3))
    scaler2 = torch.amp.GradScaler("cpu")
    scaler2.load_state_dict(meta["extra"]["grad_scaler"])
    assert scaler2.state_dict()["scale"] == 1024.0
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.01) and sched2.last_epoch == 1
    for p, q in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(p, q)
        assert torch.equal(opt.state[p]["momentum_buffer"], opt2.state[q]["momentum_buffer"])


def test_resume_hint_repeats_the_set_overrides(tmp_path, write_recipe):
    import signal as sig

    from igdm_kit._recipe import resume_command
    from igdm_kit._training.trainer import interruption
    from igdm_kit.errors import Interrupted

    p = write_recipe(DIGITS_PGDAT)
    r = R.load(p, ["train.epochs=3", 'eval.attacks=["clean","pgd20"]'])
    with pytest.raises(Interrupted) as exc:
        raise interruption(sig.SIGINT, tmp_path / "out", resume_command(r, tmp_path / "out"), 2, 5)
    hint = exc.value.hint
    assert "--set train.epochs=3" in hint and "--set 'eval.attacks=[\"clean\",\"pgd20\"]'" in hint
    assert "--resume --output" in hint and exc.value.exit_code == 130


def test_resume_with_other_options_names_the_key(tmp_path, write_recipe, cli):
    p = write_recipe(DIGITS_PGDAT)
    out = tmp_path / "run"
    run(R.load(p, ["train.epochs=1"]), output_dir=out)
    (out / "results.json").unlink()  # make it look unfinished
    res = cli("run", p, "--set", "train.epochs=2", "--set", "train.lr=0.05", "--output", out, "--resume")
    assert res.code == 1 and "different recipe" in res.err and "train.epochs differs" in res.err
    res = cli("run", p, "--output", out, "--resume", "--overwrite")
    assert res.code == 1 and "exclude each other" in res.err
    assert (out / "model.safetensors").exists()
