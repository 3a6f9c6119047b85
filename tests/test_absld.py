"""ABSLD (``absld.md``) against float64 oracles written from the spec: the loss with class-wise temperatures
(the paper's separate ones and the official code's product) and its gradients by central differences, the
attack's target, the temperature update at an epoch's end worked by hand (with and without an lr decay),
and a digits run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import DIGITS_PGDAT
from test_methods import data, linear, np_logits, step_for

from igdm_kit._training.loss import compute_loss
from igdm_kit.factories import create_attack, create_method
from igdm_kit.interfaces import EpochStats, ScheduleEvent

C = 4


def softmax_rows(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def klm(t, s):
    p, q = softmax_rows(t), softmax_rows(s)
    return float(np.mean(p * (np.log(p) - np.log(q))))


TAU = np.array([[0.5, 1.3, 2.0, 0.8], [1.5, 0.7, 1.0, 4.0]])


def targets(T, x, y, product):
    t = np_logits(T, x)
    if product:
        both = t / (TAU[0, y] * TAU[1, y])[:, None]
        return both, both
    return t / TAU[0, y][:, None], t / TAU[1, y][:, None]


def oracle(S, T, x, x_adv, y, product):
    t_adv, t_nat = targets(T, x, y, product)
    return 5 / 6 * klm(t_adv, np_logits(S, x_adv)) + 1 / 6 * klm(t_nat, np_logits(S, x))


@pytest.mark.parametrize("product", [False, True])
def test_loss_gradient_and_attack_target_equal_the_spec(product):
    student, teacher = linear(0), linear(1, scale=3.0)
    x, x_adv, y = data()
    method = create_method("absld", temperature_product=product)
    method.tau = torch.tensor(TAU)
    step = step_for(method, student, teacher, x, x_adv, y, 1, 10)
    np.testing.assert_allclose(method.attack_target(step).numpy(), targets(teacher, x, y.numpy(), product)[0],
                               rtol=1e-12)
    cached = step.teacher("x").clone()
    terms = method.loss(step)
    loss = terms["adv_kl"] + terms["nat_kl"]
    assert torch.equal(step.teacher("x"), cached)  # the temperatures divide copies
    assert loss.item() == pytest.approx(oracle(student, teacher, x, x_adv, y.numpy(), product), rel=1e-10)
    loss.backward()
    h = 1e-6
    for index in [(0, 0), (1, 5), (3, 11)]:
        f = []
        for sign in (1, -1):
            probe = linear(0)
            with torch.no_grad():
                probe[1].weight[index] += sign * h
            f.append(oracle(probe, teacher, x, x_adv, y.numpy(), product))
        assert student[1].weight.grad[index].item() == pytest.approx((f[0] - f[1]) / (2 * h), rel=1e-6, abs=1e-10)


def test_the_rslad_attack_maximizes_against_the_scaled_target():
    """Through the engine's step: the attack gets t^adv, not T(x) — the same x_adv as the attack given the
    oracle's t^adv by hand."""
    student, teacher = linear(0), linear(1, scale=3.0)
    x, _, y = data()
    method = create_method("absld")
    method.tau = torch.tensor(TAU)
    attack = create_attack("rslad", student, teacher=teacher, options={"steps": 3, "eps": 0.2, "step_size": 0.07})
    torch.manual_seed(5)
    res = compute_loss(student, teacher, method, None, attack, x, y, epoch=1, epochs=10)
    torch.manual_seed(5)
    by_hand = attack(x, y, teacher_logits=torch.from_numpy(targets(teacher, x, y.numpy(), False)[0]))
    torch.manual_seed(5)
    plain = attack(x, y, teacher_logits=teacher(x).detach())
    assert torch.equal(res.x_adv, by_hand) and not torch.equal(by_hand, plain)


@pytest.mark.parametrize("decayed", [False, True])
def test_the_temperatures_move_by_the_classes_error_by_hand(decayed):
    """A^adv = (4, 2, 1, 1): mean 2, g = (2, 0, −1, −1), max|g| = 2 → τ^adv = 1 − r·(1, 0, −½, −½);
    A^nat = (3, 3, 3, 7): mean 4, g = (−1, −1, −1, 3) → τ^nat = 1 − r·(−⅓, −⅓, −⅓, 1); r = 0.1, or 0.01 when the
    lr decayed at this epoch's end (before the update). Then clipped to [0.5, 5] on a second epoch with r = 10."""
    method = create_method("absld")
    stats = EpochStats(sums={"ce_adv": torch.tensor([4.0, 2, 1, 1]), "ce_nat": torch.tensor([3.0, 3, 3, 7])},
                       counts=torch.ones(C), num_samples=4, num_classes=C)
    method.on_epoch_end(1, stats, ScheduleEvent(lr=0.1, next_lr=0.01 if decayed else 0.1))
    r = 0.01 if decayed else 0.1
    want = [[1 - r, 1.0, 1 + r / 2, 1 + r / 2], [1 + r / 3, 1 + r / 3, 1 + r / 3, 1 - r]]
    np.testing.assert_allclose(method.tau.numpy(), want, rtol=1e-12)
    method.rate = 10.0
    method.on_epoch_end(2, stats, ScheduleEvent(lr=0.1, next_lr=0.1))
    np.testing.assert_allclose(method.tau.numpy()[0], [0.5, want[0][1], 5.0, 5.0], rtol=1e-12)
    assert method.state_dict()["rate"] == 10.0


def test_equal_class_errors_leave_the_temperatures_as_they_were():
    """g = 0 for every class (all classes' CE sums equal): the official τ − r·g/max|g| divides 0 by 0 and gives
    NaN temperatures (absld.md, quirks); igdm-kit keeps that row's temperatures, the other row still moves."""
    method = create_method("absld")
    stats = EpochStats(sums={"ce_adv": torch.tensor([5.0, 5, 5, 5]), "ce_nat": torch.tensor([3.0, 3, 3, 7])},
                       counts=torch.ones(C), num_samples=4, num_classes=C)
    method.on_epoch_end(1, stats, ScheduleEvent(lr=0.1, next_lr=0.1))
    np.testing.assert_allclose(method.tau.numpy(), [[1.0] * 4, [1 + 0.1 / 3] * 3 + [0.9]], rtol=1e-12)


def test_absld_trains_on_digits_and_keeps_its_temperatures(tmp_path, write_recipe, cli):
    from safetensors.torch import load_file

    teacher = write_recipe(DIGITS_PGDAT.replace("epochs = 1", "epochs = 4").replace("batch_size = 64",
                                                                                   "batch_size = 32")
                           + f'\n[output]\ndir = "{tmp_path / "teacher"}"\n', name="teacher.toml")
    student = DIGITS_PGDAT.replace('name = "pgd-at"', 'name = "absld"').replace("epochs = 1", "epochs = 3") + \
        f'\n[teacher]\nrecipe = "{teacher.name}"\n'
    res = cli("run", write_recipe(student, name="s.toml"), "--output", tmp_path / "s")
    assert res.code == 0, res.err
    r = json.loads((tmp_path / "s" / "results.json").read_text())
    assert r["metrics"]["clean"]["accuracy"] > 30 and "clean" in r["worst_class"]
    tau = next(v for k, v in load_file(str(tmp_path / "s" / "train_state.safetensors")).items() if k.endswith("m.tau"))
    assert tau.shape == (2, 10) and not torch.all(tau == 1)
