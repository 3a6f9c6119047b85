"""SAAD (Lee et al., TMLR 2026) against a float64 oracle written from ``shared/spec/recent-methods/saad.md``
(numpy, sample by sample): the whole step's loss — entropy weights on the KD term and on IGDM's term, the
clean term under 1 − ŵ — and the student's parameter gradients (central differences of the oracle); the
attack's cost (one teacher pass, K student passes); a short digits run with SWA. The attack's own objective
and one step's sign are checked with the other attacks in ``test_attacks``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import DIGITS_PGDAT
from test_methods import B, data, linear, np_logits

from igdm_kit._training.loss import compute_loss
from igdm_kit.factories import create_attack, create_method, create_module


def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def _kl(t, s):  # KL_i(p(t) ‖ p(s)), summed over classes
    p = _softmax(t)
    return float(np.sum(p * (np.log(p) - np.log(_softmax(s)))))


def _entropy(t, order):
    p = _softmax(t)
    if order == 1:
        return float(-np.sum(p * np.log(p + 1e-12)))
    return float(np.log(np.sum(p ** order)) / (1 - order))


def oracle(S, T, x, x_adv, y, *, ramp, beta, order, scale=5.0) -> float:
    """L = (1/B) Σ_i [w_i (KL(t⁺‖s⁺) + ramp·KL(t⁺ − t⁻ ‖ s⁺ − s⁻)) + β (1 − ŵ_i) KL(t⁰‖s⁰)], x⁻ = x − δ unclamped."""
    x_minus = 2 * x - x_adv
    sx, sa, sm = (np_logits(S, v) for v in (x, x_adv, x_minus))
    tx, ta, tm = (np_logits(T, v) for v in (x, x_adv, x_minus))
    h = np.array([_entropy(ta[i], order) for i in range(len(y))])
    w = np.maximum(0.0, scale * (h - h.min()))
    w_hat = w / (w.max() + 1e-8)
    total = 0.0
    for i in range(len(y)):
        total += w[i] * (_kl(ta[i], sa[i]) + ramp * _kl(ta[i] - tm[i], sa[i] - sm[i]))
        total += beta * (1 - w_hat[i]) * _kl(tx[i], sx[i])
    return total / len(y)


CASES = [{"beta": 0.0, "order": 1.0}, {"beta": 0.5, "order": 1.0}, {"beta": 1.0, "order": 2.0}]


@pytest.mark.parametrize("opts", CASES)
def test_loss_and_gradient_equal_the_spec(opts):
    student, teacher = linear(0), linear(1, scale=3.0)
    x, _, y = data()
    method, module = create_method("saad", **opts), create_module("igdm", alpha=2.0)
    attack = create_attack("saad", student, teacher=teacher, steps=3, eps=0.1, step_size=0.04)
    torch.manual_seed(0)
    res = compute_loss(student, teacher, method, module, attack, x, y, epoch=3, epochs=10)
    x_adv = res.x_adv.detach()
    assert (x_adv - x).abs().max() <= 0.1 + 1e-12 and not torch.equal(x_adv, x)
    want = oracle(student, teacher, x, x_adv, y.cpu().numpy(), ramp=2.0 * 3 / 10, **opts)
    assert res.loss.item() == pytest.approx(want, rel=1e-10)
    res.loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    grad = student[1].weight.grad.cpu().numpy()
    h = 1e-6
    for i, j in [(0, 0), (1, 5), (2, 11), (3, 7)]:
        vals = []
        for sign in (1, -1):
            probe = linear(0)
            with torch.no_grad():
                probe[1].weight[i, j] += sign * h
            vals.append(oracle(probe, teacher, x, x_adv, y.cpu().numpy(), ramp=0.6, **opts))
        assert grad[i, j] == pytest.approx((vals[0] - vals[1]) / (2 * h), rel=1e-5, abs=1e-9)


def test_the_entropy_weights_are_the_teachers_and_the_most_confident_sample_gets_zero():
    student, teacher = linear(0), linear(1, scale=3.0)
    x, _, y = data()
    method = create_method("saad")
    attack = create_attack("saad", student, teacher=teacher, steps=2, eps=0.1, step_size=0.05)
    res = compute_loss(student, teacher, method, create_module("igdm", alpha=1.0), attack, x, y, epoch=1, epochs=2)
    w = method.module_weights(res.step).cpu().numpy()
    ta = np_logits(teacher, res.x_adv)
    h = np.array([_entropy(ta[i], 1) for i in range(B)])
    np.testing.assert_allclose(w, 5 * (h - h.min()), rtol=1e-12, atol=1e-15)
    assert w[np.argmin(h)] == 0 and (w > 0).sum() == B - 1


def test_the_attack_runs_the_teacher_once_and_the_student_k_times():
    student, teacher = linear(0), linear(1)
    calls = {"s": 0, "t": 0}
    student.register_forward_hook(lambda *_: calls.__setitem__("s", calls["s"] + 1))
    teacher.register_forward_hook(lambda *_: calls.__setitem__("t", calls["t"] + 1))
    x, _, y = data()
    create_attack("saad", student, teacher=teacher, steps=7)(x, y)
    assert calls == {"s": 7, "t": 1}


def test_saad_with_swa_trains_on_digits_and_reports_per_class(tmp_path, write_recipe, cli):
    teacher = write_recipe(DIGITS_PGDAT.replace("epochs = 1", "epochs = 4").replace("batch_size = 64",
                                                                                   "batch_size = 32")
                           + f'\n[output]\ndir = "{tmp_path / "teacher"}"\n', name="teacher.toml")
    student = DIGITS_PGDAT.replace('name = "pgd-at"', 'name = "saad"').replace("epochs = 1", "epochs = 3") \
        .replace('[eval]\nattacks = ["clean"]', '[train.swa]\nstart = 2\n[module]\nname = "igdm"\nalpha = 1.0\n'
                 '[eval]\nattacks = ["clean"]\ncheckpoints = ["swa", "last"]') + \
        f'\n[teacher]\nrecipe = "{teacher.name}"\n'
    res = cli("run", write_recipe(student, name="s.toml"), "--output", tmp_path / "s")
    assert res.code == 0, res.err
    r = json.loads((tmp_path / "s" / "results.json").read_text())
    assert r["checkpoint"] == "swa" and r["metrics"]["clean"]["accuracy"] > 30  # 10 classes: chance is 10 %
    assert "clean" in r["worst_class"]
