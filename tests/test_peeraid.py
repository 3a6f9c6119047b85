"""PeerAiD (``peeraid.md``) and the trained peer it needs (R2).

Oracles: numpy float64 of L_peer + L_S from the spec and the gradients of both models by central differences
(with the peer's target detached, the paper's, and not, the official code's); the attack's target is the
peer's eval-mode P(x), its BatchNorm untouched; the recipe checks; a digits run where both models train, and
SIGKILL + ``--resume`` ends with the student and the peer (weights, optimizer, schedule) bit-identical.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import DIGITS_PGDAT
from safetensors.torch import load_file
from test_methods import data, linear, np_logits
from test_resume import _same, _start, _wait_for
from torch import nn

from igdm_kit import _recipe as R
from igdm_kit._training.step import Step
from igdm_kit.errors import RecipeError
from igdm_kit.factories import create_method


def softmax_rows(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def klm(t, s):
    p, q = softmax_rows(t), softmax_rows(s)
    return float(np.mean(p * (np.log(p) - np.log(q))))


def ce(z, y):
    return float(np.mean(-np.log(softmax_rows(z)[np.arange(len(y)), y])))


OPTS = {"lambda_ce": 0.3, "gamma_kd": 0.5, "temperature": 4.0, "peer_temperature": 2.0}


def oracle(S, P, x, x_adv, y, *, s_target=None, p_target=None):
    """L_peer + L_S (peeraid.md, "Per step"); ``s_target``: the student whose S(x_adv) is the peer's target,
    ``p_target``: the peer whose (detached) P(x_adv) is the student's — by default the models themselves."""
    a, s, n = np_logits(P, x_adv), np_logits(S, x_adv), np_logits(S, x)
    st, at = np_logits(s_target or S, x_adv), np_logits(p_target or P, x_adv)
    tau, tau_r = OPTS["temperature"], OPTS["peer_temperature"]
    l_peer = ce(a, y) + OPTS["gamma_kd"] * tau_r ** 2 * klm(st / tau_r, a / tau_r)
    l_s = OPTS["lambda_ce"] * ce(s, y) + tau ** 2 * klm(at / tau, s / tau) + tau ** 2 * klm(n / tau, s / tau)
    return l_peer + l_s


@pytest.mark.parametrize("detach", [True, False])
def test_loss_and_both_models_gradients_equal_the_spec(detach):
    student, peer = linear(0), linear(1, scale=2.0)
    x, x_adv, y = data()
    method = create_method("peeraid", detach_peer_target=detach, **OPTS)
    step = Step(student, None, x, y, epoch=1, epochs=10, peer=peer)
    step.set_input("x_adv", x_adv)
    loss = sum(method.loss(step).values())
    yy = y.numpy()
    assert loss.item() == pytest.approx(oracle(student, peer, x, x_adv, yy), rel=1e-10)
    loss.backward()
    h = 1e-6
    for which, model in (("student", student), ("peer", peer)):
        for index in [(0, 0), (2, 7), (3, 11)]:
            f = []
            for sign in (1, -1):
                probe = linear(0 if which == "student" else 1, scale=1.0 if which == "student" else 2.0)
                with torch.no_grad():
                    probe[1].weight[index] += sign * h
                s, p = (probe, peer) if which == "student" else (student, probe)
                # a detached target: the student's perturbation does not move the peer's term
                f.append(oracle(s, p, x, x_adv, yy, s_target=student if detach and which == "student" else None,
                                p_target=peer))  # P(x_adv) is always a constant of L_S
            assert model[1].weight.grad[index].item() == pytest.approx((f[0] - f[1]) / (2 * h), rel=1e-6, abs=1e-10)


def test_the_attack_target_is_the_peers_eval_mode_output_and_leaves_it_as_it_was():
    torch.manual_seed(0)
    peer = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4)).double()
    peer.train()
    x, _, y = data()
    before = {k: v.clone() for k, v in peer.state_dict().items()}
    step = Step(linear(0), None, x, y, epoch=1, epochs=10, peer=peer)
    target = create_method("peeraid").attack_target(step)
    assert not target.requires_grad and peer.training and peer[2].training
    assert all(torch.equal(before[k], v) for k, v in peer.state_dict().items())  # BatchNorm untouched
    with torch.no_grad():
        assert torch.equal(target, peer.eval()(x))


RECIPE = DIGITS_PGDAT.replace('name = "pgd-at"', 'name = "peeraid"').replace(
    "epochs = 1", "epochs = 8\nthreads = 1").replace('[method]', '[peer]\nmodel = "small-cnn"\nwidth = 8\n[method]')


def test_the_recipe_has_a_peer_exactly_when_the_method_trains_one(write_recipe):
    r = R.load(write_recipe(RECIPE))
    assert r.attack_name == "rslad" and r.model.teacher is None  # the peer's P(x) is the attack's target
    assert r.resolved()["peer"] == {"model": "small-cnn", "width": 8}
    with pytest.raises(RecipeError, match=r"peer: method 'peeraid' trains a peer and the recipe has no \[peer\]"):
        R.load(write_recipe(RECIPE.replace('[peer]\nmodel = "small-cnn"\nwidth = 8\n', "")))
    with pytest.raises(RecipeError, match=r"peer: method 'pgd-at' trains no peer"):
        R.load(write_recipe(RECIPE.replace('name = "peeraid"', 'name = "pgd-at"')))
    with pytest.raises(RecipeError, match=r"peer.width"):
        R.load(write_recipe(RECIPE.replace("width = 8\n[method]", "width = -1\n[method]")))


@pytest.mark.slow
def test_peeraid_trains_on_digits_and_sigkill_resume_is_bit_identical_for_both_models(tmp_path):
    from igdm_kit._training.engine import run

    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE)
    reference = run(R.load(recipe), output_dir=tmp_path / "ref").output_dir
    results = json.loads((reference / "results.json").read_text())
    assert results["metrics"]["clean"]["accuracy"] > 25  # chance is 10 %; the peer starts from scratch too
    rows = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["peer_ce"] < rows[0]["peer_ce"]  # the peer learns
    out = tmp_path / "run"
    proc = _start(recipe, out)
    _wait_for(lambda: (out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text().count("\n") >= 3,
              proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    res = subprocess.run([sys.executable, "-m", "igdm_kit", "run", str(recipe), "--output", str(out), "--resume"],
                         capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    _same(load_file(str(out / "model.safetensors")), load_file(str(reference / "model.safetensors")))
    peer = {k: v for k, v in load_file(str(out / "train_state.safetensors")).items() if k.startswith("extra.sub.peer.")}
    assert any(".model." in k for k in peer) and any(".optim." in k for k in peer)
    _same(peer, {k: v for k, v in load_file(str(reference / "train_state.safetensors")).items()
                 if k.startswith("extra.sub.peer.")})
