"""AutoAttack's state file (``igdm_kit.attacks.run_autoattack``): a resumed evaluation is the uninterrupted one,
whatever batch size the rerun asks for, and a state that is not this evaluation's — foreign, edited, malformed —
is refused in one line, never trusted.

Oracles: the uninterrupted run of the same evaluation (same seed and batches: pyautoattack's random starts
depend on which images share a batch), and a linear model's exact L∞ robust set (``linear_problem``).
"""

from __future__ import annotations

import copy
import json
import random

import pytest
import torch
import torch.nn.functional as F
from test_evaluation import EPS, linear_problem

from igdm_kit.attacks import run_autoattack
from igdm_kit.errors import IgdmKitError

CUSTOM = {"version": "custom", "attacks": ["apgd-ce"]}


class Stop(Exception):
    """What the stop check raises between batches (SIGINT in the CLI)."""


def stop_after(batches: int, calls: list | None = None):
    """A progress callback that stops the evaluation after ``batches`` batches of AutoAttack."""
    seen = [0]

    def progress(task: str, done: int, total: int) -> None:
        if calls is not None:
            calls.append((task, done, total))
        seen[0] += 1
        if seen[0] >= batches:
            raise Stop

    return progress


@pytest.fixture(scope="module")
def cnn():
    """A small CNN trained naturally on digits (≈1 s) and 96 test images: not linear, so APGD's random starts
    (and so the batches) decide some images."""
    from igdm_kit.factories import create_dataset, create_model

    torch.manual_seed(0)
    ds = create_dataset("digits")
    xtr, ytr = ds.load("train")
    xte, yte = ds.load("test")
    m = create_model("small-cnn", num_classes=10, in_channels=1, image_size=8, width=8)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(3):
        perm = torch.randperm(len(xtr))
        for i in range(0, len(xtr), 64):
            idx = perm[i:i + 64]
            loss = F.cross_entropy(m(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return m.eval(), xte[:96], yte[:96]


def aa(model, x, y, **kw):
    return run_autoattack(model, x, y, eps=kw.pop("eps", 0.1), **{**CUSTOM, **kw})


# -- the issue's scenario --------------------------------------------------------------------------------
def test_resumed_with_another_batch_size_is_the_uninterrupted_run(cnn, tmp_path):
    """96 images, batch size 4, stopped after 3 batches, rerun with batch size 96: the uninterrupted run's
    robust set (22 of 96 at ε = 0.1). Before the fix the rerun skipped every image
    of the 21 batches left (its progress counted batches of 4 as batches of 96): 94/96 robust."""
    model, x, y = cnn
    full = aa(model, x, y, batch_size=4, seed=0)
    state = tmp_path / "aa.state"
    with pytest.raises(Stop):
        aa(model, x, y, batch_size=4, seed=0, state_path=state, progress=stop_after(3))
    warnings: list[str] = []
    resumed = aa(model, x, y, batch_size=96, seed=0, state_path=state, warnings=warnings)
    assert int(resumed["robust"].sum()) == int(full["robust"].sum()) < int(resumed["robust"].numel()) - 10
    assert torch.equal(resumed["robust"], full["robust"])
    assert resumed["after"] == pytest.approx(full["after"])
    assert any("batch size 4" in w for w in warnings)  # the state's batches are kept, and said so


def test_interrupted_at_random_batches_and_resumed_with_other_batch_sizes(cnn, tmp_path, device):
    """Stopped at a random batch (several times over), resumed with random other batch sizes: the robust
    flags and the accuracy after each attack are the uninterrupted run's (on ``--device``, cpu by default)."""
    model, x, y = cnn
    model = copy.deepcopy(model).to(device)
    x, y = x[:40], y[:40]
    rng = random.Random(26)
    kinds = {"version": "custom", "attacks": ["apgd-ce", "apgd-t"]}
    full = run_autoattack(model, x, y, eps=0.1, batch_size=6, seed=1, **kinds)
    for trial in range(3):
        state = tmp_path / f"aa{trial}.state"
        size = 6
        for _ in range(2):  # two interruptions, each resumed with another batch size
            try:
                run_autoattack(model, x, y, eps=0.1, batch_size=size, seed=1, state_path=state,
                               progress=stop_after(rng.randint(1, 5)), **kinds)
            except Stop:
                pass
            size = rng.choice([1, 3, 5, 7, 40, 64])
        resumed = run_autoattack(model, x, y, eps=0.1, batch_size=size, seed=1, state_path=state, **kinds)
        assert torch.equal(resumed["robust"], full["robust"]), trial
        assert resumed["after"] == pytest.approx(full["after"])


def test_resumed_on_another_device_with_another_batch_size_is_the_exact_robust_set(tmp_path, device):
    """Stopped on the CPU, resumed on the GPU (``--device cuda``; ``benchmarks/device_check.py`` runs it) with
    another batch size: the linear model's exact robust set, as the uninterrupted CPU run finds it."""
    if device.type == "cpu":
        pytest.skip("needs a second device: run with --device cuda")
    model, x, y, robust, _ = linear_problem(n=12, scale=0.4)
    state = tmp_path / "aa.state"
    full = run_autoattack(model, x, y, eps=EPS, batch_size=2, **CUSTOM)
    with pytest.raises(Stop):
        run_autoattack(model, x, y, eps=EPS, batch_size=2, **CUSTOM, state_path=state, progress=stop_after(2))
    res = run_autoattack(copy.deepcopy(model).to(device), x, y, eps=EPS, batch_size=12, **CUSTOM, state_path=state)
    assert res["robust"].tolist() == robust.tolist() == full["robust"].tolist()


def test_resumed_linear_model_is_its_exact_robust_set(tmp_path):
    """Independent oracle: the linear model's exact robust set, after a stop and a rerun with another batch
    size."""
    model, x, y, robust, _ = linear_problem(n=12, scale=0.4)
    state = tmp_path / "aa.state"
    with pytest.raises(Stop):
        run_autoattack(model, x, y, eps=EPS, batch_size=2, **CUSTOM, state_path=state, progress=stop_after(2))
    res = run_autoattack(model, x, y, eps=EPS, batch_size=12, **CUSTOM, state_path=state)
    assert res["robust"].tolist() == robust.tolist()


# -- state that is not this evaluation's ----------------------------------------------------------------------
@pytest.fixture
def stopped(tmp_path):
    """A linear problem and the state of its AutoAttack stopped after 2 batches of 2."""
    model, x, y, _, _ = linear_problem(n=12, scale=0.4)
    state = tmp_path / "aa.state"
    with pytest.raises(Stop):
        run_autoattack(model, x, y, eps=EPS, batch_size=2, **CUSTOM, state_path=state, progress=stop_after(2))
    return model, x, y, state


def _edit(state, change) -> None:
    data = json.loads(state.read_text())
    change(data)
    state.write_text(json.dumps(data))


def _refused(model, x, y, state, match: str) -> None:
    with pytest.raises(IgdmKitError, match=match) as exc:
        run_autoattack(model, x, y, eps=EPS, batch_size=2, **CUSTOM, state_path=state)
    assert "\n" not in exc.value.message and exc.value.hint


def test_an_edited_state_is_refused(stopped):
    """Robust flags set by hand (every image robust: the number a tampered file would publish)."""
    model, x, y, state = stopped
    _edit(state, lambda d: d.update(robust=[True] * len(d["robust"])))
    _refused(model, x, y, state, "changed since igdm-kit wrote it")


def test_an_edited_state_with_its_checksum_recomputed_is_still_checked(stopped):
    """Edited and re-sealed (the checksum is no secret): the contents must still be consistent — an image
    wrong without any attack cannot be robust, images of batches not yet attacked are all still standing."""
    from igdm_kit._storage.aa_state import checksum as _state_checksum

    model, x, y, state = stopped

    def forge(d):
        d["robust"] = [True] * len(d["robust"])
        d["checksum"] = _state_checksum(d)

    _edit(state, forge)
    _refused(model, x, y, state, "inconsistent")


@pytest.mark.parametrize(("what", "change", "match"), [
    ("robust flags of another length", lambda d: d.update(robust=d["robust"][:-1]), "robust"),
    ("a counter past the end", lambda d: d.update(chunks_done=10**6), "chunks_done"),
    ("a negative counter", lambda d: d.update(chunks_done=-1), "chunks_done"),
    ("a counter of the wrong type", lambda d: d.update(chunks_done="3"), "chunks_done"),
    ("an attack it does not run", lambda d: d.update(current="fab"), "current"),
    ("attacks done twice", lambda d: d.update(done=["apgd-ce", "apgd-ce"]), "done"),
    ("flags that are not booleans", lambda d: d.update(robust=[1] * len(d["robust"])), "robust"),
    ("a batch size of 0", lambda d: d.update(batch_size=0), "batch_size"),
    ("an accuracy above 100", lambda d: d["after"].update(clean=150.0), "after"),
    ("no checksum", lambda d: d.pop("checksum"), "checksum"),
])
def test_a_malformed_state_is_refused_in_one_line(stopped, what, change, match):
    from igdm_kit._storage.aa_state import checksum as _state_checksum

    model, x, y, state = stopped

    def malformed(d):
        change(d)
        if "checksum" in d:
            d["checksum"] = _state_checksum(d)  # sealed: the contents' own check must catch it

    _edit(state, malformed)
    _refused(model, x, y, state, match)


def test_a_state_of_another_evaluation_is_refused(stopped):
    model, x, y, state = stopped
    for other in ({"eps": 4 / 255}, {"seed": 1}):
        with pytest.raises(IgdmKitError, match="another model"):
            run_autoattack(model, x, y, batch_size=2, **CUSTOM, state_path=state, **{"eps": EPS, **other})
    with pytest.raises(IgdmKitError, match="another model"):
        run_autoattack(model, x[:-1], y[:-1], eps=EPS, batch_size=2, **CUSTOM, state_path=state)


def test_a_state_of_an_older_format_is_refused(stopped):
    model, x, y, state = stopped
    _edit(state, lambda d: d.update(format="igdm-kit/autoattack-state/1"))
    _refused(model, x, y, state, "older igdm-kit")


@pytest.mark.slow
def test_the_issue_s_command_line_scenario(cnn, tmp_path, cli, monkeypatch):
    """``eval --attack 'autoattack:version=custom,attacks=["apgd-ce"]' --limit 96 --batch-size 4 --aa-state
    aa.state``, SIGINT after 3 batches (exit 130), rerun with ``--batch-size 96``: the uninterrupted count."""
    import os
    import signal

    from igdm_kit._storage import aa_state
    from igdm_kit._storage.checkpoint import save_model

    model, _, _ = cnn
    ckpt = save_model(tmp_path / "m.safetensors", model, {
        "model": "small-cnn", "model_options": {"width": 8}, "num_classes": 10, "in_channels": 1, "image_size": 8,
        "mean": None, "std": None, "dataset": {"name": "digits", "options": {}}})
    args = ["eval", "--model", ckpt, "--attack", 'autoattack:version=custom,attacks=["apgd-ce"]', "--limit", "96",
            "--eps", "0.1", "--json", "--no-progress"]
    full = cli(*args, "--batch-size", "4")
    assert full.code == 0, full.err
    (correct,) = (m["correct"] for m in json.loads(full.out)["results"]["metrics"].values())

    state, saved, real = tmp_path / "aa.state", [0], aa_state.save

    def sigint_after_3_batches(path, s):
        real(path, s)
        saved[0] += bool(s.get("chunks_done"))
        if saved[0] == 3:
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C: the stop check ends the evaluation after the batch

    monkeypatch.setattr(aa_state, "save", sigint_after_3_batches)
    stopped = cli(*args, "--batch-size", "4", "--aa-state", state)
    assert stopped.code == 130 and "AutoAttack resumes from" in stopped.err
    monkeypatch.setattr(aa_state, "save", real)
    again = cli(*args, "--batch-size", "96", "--aa-state", state)
    assert again.code == 0, again.err
    metrics = json.loads(again.out)["results"]["metrics"]
    assert list(metrics.values())[0]["correct"] == correct  # 74/96 and 94/96 in the issue; here as uninterrupted
    assert "with its batch size 4, not 96" in again.err
