"""Fair-IAD and Fair-RSLAD (``fair_ard.md``) against float64 oracles written from the spec's formulas (numpy,
sample by sample): their losses and the student's parameter gradients (central differences), Fair-RSLAD's
class weights by hand (with and without the official code's missing offset), the rslad attack's κ by hand,
and a short digits run of each."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import DIGITS_PGDAT
from test_methods import SHAPE, B, C, data, linear, np_logits, step_for
from test_methods_recent import Loop, Parts, kappa_step
from torch import nn

from igdm_kit.factories import create_attack, create_method
from igdm_kit.interfaces import SampleTerm
from igdm_kit.losses import reduce_term


def total(terms):
    return sum(reduce_term(t) if isinstance(t, SampleTerm) else t for t in terms.values())


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def kl(t, s, tau=1.0):  # τ²·KL_i(p(t/τ) ‖ p(s/τ)), summed over classes
    p, q = softmax(t / tau), softmax(s / tau)
    return tau * tau * float(np.sum(p * (np.log(p) - np.log(q))))


def fair_iad_oracle(S, T, x, x_adv, y, w, *, introspect, alpha=1.0, tau=1.0, beta_iad=0.1) -> float:
    sx, sa, tx, ta = np_logits(S, x), np_logits(S, x_adv), np_logits(T, x), np_logits(T, x_adv)
    out = 0.0
    for i, c in enumerate(y):
        out += alpha * w[c] * kl(tx[i], sa[i], tau) - (1 - alpha) * w[c] * math.log(softmax(sx[i])[c])
        if introspect:
            a = softmax(ta[i])[c] ** beta_iad
            out += w[c] * (1 - a) * kl(sx[i], sa[i])
    return out / len(y)


def fair_rslad_oracle(S, T, x, x_adv, y, w) -> float:
    sx, sa, tx = np_logits(S, x), np_logits(S, x_adv), np_logits(T, x)
    return sum(w[c] * (5 / 6 * kl(tx[i], sa[i]) + 1 / 6 * kl(tx[i], sx[i])) / C for i, c in enumerate(y)) / len(y)


CASES = [("fair-iad", {}, 10, 200),   # the warm-up's epochs: KD only
         ("fair-iad", {}, 61, 200),   # after it: + the introspection term
         ("fair-iad", {"alpha_ard": 0.7, "temperature": 3.0}, 61, 200),
         ("fair-rslad", {}, 5, 300)]


@pytest.mark.parametrize(("name", "opts", "epoch", "epochs"), CASES)
def test_loss_and_gradient_equal_the_spec(name, opts, epoch, epochs):
    student, teacher = linear(0), linear(1, scale=3.0)
    x, x_adv, y = data()
    w = [0.9, 1.7, 5 / 6, 2.5]
    method = create_method(name, **opts)
    method.weights = torch.tensor(w, dtype=torch.float64)

    def oracle(S):
        if name == "fair-rslad":
            return fair_rslad_oracle(S, teacher, x, x_adv, y.numpy(), w)
        return fair_iad_oracle(S, teacher, x, x_adv, y.numpy(), w, introspect=epoch > 60,
                               alpha=opts.get("alpha_ard", 1.0), tau=opts.get("temperature", 1.0))

    loss = total(method.loss(step_for(method, student, teacher, x, x_adv, y, epoch, epochs)))
    assert loss.item() == pytest.approx(oracle(student), rel=1e-10)
    loss.backward()
    h = 1e-6
    for index in [(0, 0), (1, 5), (3, 11)]:
        values = []
        for sign in (1, -1):
            probe = linear(0)
            with torch.no_grad():
                probe[1].weight[index] += sign * h
            values.append(oracle(probe))
        fd = (values[0] - values[1]) / (2 * h)
        assert student[1].weight.grad[index].item() == pytest.approx(fd, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize(("offset", "want"), [(1e-5, [0.83333, 1.01145, 1.37669]), (0.0, [5 / 6, 2.5, 5 / 6])])
def test_fair_rslad_class_weights_by_hand(offset, want):
    """C = 3, N = 6 (N/C = 2). With the offset: Σκ = (18, 14, 12), fair-ard's hand-worked case. Without it (the
    official Fair-RSLAD): Σκ = (18, 1, 12) → κ̄ = (9, ½, 6), w̃ = κ̄^−2 = (1/81, 4, 1/36), 3·w̃/Σw̃ = (0.00917,
    2.97020, 0.02063), clipped to [5/6, 5/2] → (5/6, 5/2, 5/6)."""
    from igdm_kit._training.method_state import MethodHooks

    method = create_method("fair-rslad", weight_offset=offset)
    hooks = MethodHooks(Parts(method, 6, 3))
    loop = Loop()
    hooks.on_fit_start(loop, 1, 0)
    hooks.on_epoch_start(loop, 1)
    kappas = ([10, 4, 5], [8, 10, 7]) if offset else ([10, 1, 5], [8, 0, 7])
    for kappa in kappas:
        loop.last_step = kappa_step([0, 1, 2], kappa)
        hooks.on_step_end(loop, 1, 0)
    hooks.on_epoch_end(loop, 1, {})
    for got, expected in zip(method.weights.tolist(), want, strict=True):
        assert got == pytest.approx(expected, abs=5e-6)


def test_the_rslad_attack_counts_kappa_by_hand():
    """A student that always says class 0: κ = K where y = 0, 0 elsewhere (its answer never changes)."""
    student = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(SHAPE)), C)).double()
    with torch.no_grad():
        student[1].weight.zero_()
        student[1].bias.copy_(torch.tensor([5.0, 0.0, 0.0, 0.0], dtype=torch.float64))
    teacher = linear(1)
    x = torch.rand(4, *SHAPE, dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 2])
    attack = create_attack("rslad", student, teacher=teacher, options={"steps": 6})
    attack(x, y)
    assert attack.side_outputs()["kappa"].tolist() == [6, 0, 6, 0] and "kappa" in attack.outputs


def test_the_rslad_kappa_is_the_iterates_the_student_classified_correctly():
    """Against the iterates themselves, read off the student's differentiated inputs."""
    student, teacher = linear(0), linear(1, scale=3.0)
    x, _, y = data()
    seen = []
    student.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()) if a[0].requires_grad else None)
    attack = create_attack("rslad", student, teacher=teacher, options={"steps": 5, "eps": 0.3, "step_size": 0.1})
    attack(x, y, teacher_logits=teacher(x).detach())
    assert len(seen) == 5
    want = sum((np_logits(student, z).argmax(1) == y.numpy()).astype(int) for z in seen)
    assert attack.side_outputs()["kappa"].tolist() == want.tolist() and 0 < want.sum() < 5 * B


@pytest.mark.parametrize("name", ["fair-iad", "fair-rslad"])
def test_each_trains_on_digits_and_reports_the_worst_class(name, tmp_path, write_recipe, cli):
    teacher = write_recipe(DIGITS_PGDAT.replace("epochs = 1", "epochs = 4").replace("batch_size = 64",
                                                                                   "batch_size = 32")
                           + f'\n[output]\ndir = "{tmp_path / "teacher"}"\n', name="teacher.toml")
    method = f'name = "{name}"' + ("\nwarmup = 1\nscale_warmup = false" if name == "fair-iad" else "")
    student = DIGITS_PGDAT.replace('name = "pgd-at"', method).replace("epochs = 1", "epochs = 3") + \
        f'\n[teacher]\nrecipe = "{teacher.name}"\n'
    res = cli("run", write_recipe(student, name="s.toml"), "--output", tmp_path / "s")
    assert res.code == 0, res.err
    r = json.loads((tmp_path / "s" / "results.json").read_text())
    assert r["metrics"]["clean"]["accuracy"] > 30 and "clean" in r["worst_class"]
