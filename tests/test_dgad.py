"""DGAD (Park et al., ECCV 2024) against a second float64 oracle written from ``shared/spec/recent-methods/dgad.md``
(numpy, sample by sample — not the plugin's code, nor ``test_methods_recent``'s): the loss and the student's parameter gradients (central
differences of the oracle), the swaps made on copies (the cached teacher outputs untouched), the nominal
batch size of the official code, and a short run on digits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import DIGITS_PGDAT, TINY
from test_methods import B, C, data, linear, np_logits, step_for

from igdm_kit.factories import create_method
from igdm_kit.interfaces import SampleTerm
from igdm_kit.losses import reduce_term


def _total(terms):
    """The scalar the engine adds: per-sample terms reduced as they say (``losses.reduce_term``)."""
    return sum(reduce_term(t) if isinstance(t, SampleTerm) else t for t in terms.values())


def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def _kl(t, s):  # KL_i(p(t) ‖ p(s)), summed over classes
    p = _softmax(t)
    return float(np.sum(p * (np.log(p) - np.log(_softmax(s)))))


def oracle(Sx, Sa, Tx, Ta, y, gamma=1.0, nominal=None) -> float:
    n = len(y)
    clean = adv = 0.0
    lam = [int(np.argmax(Tx[i]) != y[i]) for i in range(n)]
    M = sum(lam)
    for i in range(n):
        if lam[i]:  # MAP: the teacher is wrong on x → distil at x, its top class and y swapped (ELS)
            t = Tx[i].copy()
            j = int(np.argmax(t))
            t[y[i]], t[j] = t[j], t[y[i]]
            clean += _kl(t, Sx[i])
        else:  # distil at x_adv, y swapped with the strongest other class where the teacher is fooled
            t = Ta[i].copy()
            others = [j for j in range(len(t)) if j != y[i]]
            j = others[int(np.argmax(t[others]))]
            if t[y[i]] < t[j]:
                t[y[i]], t[j] = t[j], t[y[i]]
            adv += _kl(t, Sa[i])
    b = nominal or n
    l_clean = clean / (M + 1e-10)
    l_adv = adv / (n - M) if n > M else 0.0
    pcr = np.mean([(_softmax(Sa[i]) - _softmax(Sx[i])) ** 2 for i in range(n)])  # nn.MSELoss: ÷ (B·C)
    return (M / b) * l_clean + ((b - M) / b) * l_adv + gamma * pcr


def _setup():
    student, teacher = linear(0), linear(1, scale=3.0)
    x, x_adv, y = data()
    tx = np_logits(teacher, x)
    y = y.clone()
    y[: B // 2] = torch.as_tensor(tx[: B // 2].argmax(1))  # half the batch: the teacher is right on x
    return student, teacher, x, x_adv, y


CASES = [{}, {"gamma": 0.3}, {"nominal_batch": 128}]


@pytest.mark.parametrize("opts", CASES)
def test_loss_and_gradient_equal_the_spec(opts):
    student, teacher, x, x_adv, y = _setup()
    for p in teacher.parameters():
        p.requires_grad_(True)
    method = create_method("dgad", **opts)
    step = step_for(method, student, teacher, x, x_adv, y, 1, 10)
    t_before = step.teacher("x_adv").clone(), step.teacher("x").clone()
    terms = method.loss(step)
    gamma, nominal = opts.get("gamma", 1.0), opts.get("nominal_batch")
    yy = y.cpu().numpy()
    lam = (np_logits(teacher, x).argmax(1) != yy)
    assert 0 < lam.sum() < B  # both partitions are exercised
    want = oracle(np_logits(student, x), np_logits(student, x_adv), np_logits(teacher, x),
                  np_logits(teacher, x_adv), yy, gamma, nominal)
    total = _total(terms)
    assert total.item() == pytest.approx(want, rel=1e-10, abs=1e-12)
    assert torch.equal(step.teacher("x_adv"), t_before[0]) and torch.equal(step.teacher("x"), t_before[1])
    total.backward()
    assert all(p.grad is None for p in teacher.parameters())  # the teacher's outputs are constants
    grad = student[1].weight.grad.cpu().numpy()
    h = 1e-6
    for i, j in [(0, 0), (1, 5), (2, 11), (3, 7)]:
        vals = []
        for sign in (1, -1):
            probe = linear(0)
            with torch.no_grad():
                probe[1].weight[i, j] += sign * h
            vals.append(oracle(np_logits(probe, x), np_logits(probe, x_adv), np_logits(teacher, x),
                               np_logits(teacher, x_adv), yy, gamma, nominal))
        assert grad[i, j] == pytest.approx((vals[0] - vals[1]) / (2 * h), rel=1e-5, abs=1e-8)


def test_a_batch_the_teacher_gets_all_wrong_does_not_divide_by_zero():
    """The official code raises ZeroDivisionError when M = B (1/(B − M)); here the adversarial part is 0."""
    student, teacher, x, x_adv, y = _setup()
    y = torch.as_tensor((np_logits(teacher, x).argmax(1) + 1) % C)
    method = create_method("dgad")
    loss = _total(method.loss(step_for(method, student, teacher, x, x_adv, y, 1, 10)))
    want = oracle(np_logits(student, x), np_logits(student, x_adv), np_logits(teacher, x),
                  np_logits(teacher, x_adv), y.numpy())
    assert torch.isfinite(loss) and loss.item() == pytest.approx(want, rel=1e-10)


def test_dgad_trains_on_digits_and_reports_per_class(tmp_path, write_recipe, cli):
    teacher = write_recipe(DIGITS_PGDAT.replace("epochs = 1", "epochs = 4").replace("batch_size = 64",
                                                                                   "batch_size = 32")
                           + f'\n[output]\ndir = "{tmp_path / "teacher"}"\n', name="teacher.toml")
    student = DIGITS_PGDAT.replace('name = "pgd-at"', 'name = "dgad"').replace("epochs = 1", "epochs = 3") + \
        f'\n[teacher]\nrecipe = "{teacher.name}"\n'
    res = cli("run", write_recipe(student, name="s.toml"), "--output", tmp_path / "s")
    assert res.code == 0, res.err
    r = json.loads((tmp_path / "s" / "results.json").read_text())
    assert r["metrics"]["clean"]["accuracy"] > 30  # 10 classes: chance is 10 %
    assert "clean" in r["worst_class"]
