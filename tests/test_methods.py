"""The base methods' losses (outer minimization) against the spec's formulas, written independently.

Oracles: every loss is recomputed in float64 numpy from the linear models' *weights* (logits = W·x + b by
hand, softmax/log/KL/CE by loops), and its gradient w.r.t. the student's weights is checked against central
finite differences of that oracle (so "target not detached" and "w_i constant" are checked, not assumed).
Forward counts (igdm_kit._training.passes) check that zero-weight terms are not computed and teacher inputs are
batched as declared. Models and batches live on ``pytest --device`` (cpu unless asked).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from oracles import np_ce, np_kl, np_kl_row, np_softmax
from torch import nn

from igdm_kit._plugins.manager import registry
from igdm_kit._training.loss import compute_loss
from igdm_kit._training.passes import count_passes
from igdm_kit._training.step import Step
from igdm_kit.factories import create_attack, create_method

B, SHAPE, C = 6, (3, 2, 2), 4
D = int(np.prod(SHAPE))
DEVICE = torch.device("cpu")  # where the models and batches are made: the --device option, set below


@pytest.fixture(autouse=True)
def _on_device(device):
    global DEVICE
    DEVICE = device


# -- independent oracles ------------------------------------------------------------------------------








def introspection(Sx, Sa, Ta, y, beta_iad) -> float:
    total = 0.0
    for i in range(len(y)):
        w = np_softmax(Ta[i])[y[i]] ** beta_iad
        total += (1 - w) * np_kl_row(Sx[i], Sa[i])
    return total / len(y)


def iad_active(epoch, epochs, warmup=60, scale_warmup=True) -> bool:
    return epoch > (warmup * epochs / 200 if scale_warmup else warmup)


def oracle(name, opts, Sx, Sa, Tx, Ta, y, epoch, epochs) -> float:
    """The spec's table, "Outer minimization of the base methods", with the spec's default options."""
    if name == "pgd-at":
        return np_ce(Sa, y)
    if name == "trades":
        return np_ce(Sx, y) + opts.get("beta", 6.0) * np_kl(Sx, Sa)
    if name in ("ard", "iad"):
        a, tau = opts.get("alpha_ard", 1.0), opts.get("temperature", 1.0)
        out = a * np_kl(Tx, Sa, tau) + (1 - a) * np_ce(Sx, y)
        if name == "iad" and iad_active(epoch, epochs, opts.get("warmup", 60), opts.get("scale_warmup", True)):
            out += introspection(Sx, Sa, Ta, y, opts.get("beta_iad", 0.1))
        return out
    if name == "akd":
        lam = opts.get("lam", 0.9)
        total = 0.0
        for i in range(len(y)):
            t = lam * np_softmax(Ta[i]) + (1 - lam) * np.eye(C)[y[i]]
            total -= sum(t[c] * math.log(np_softmax(Sa[i])[c]) for c in range(C))
        return total / len(y)
    if name == "rslad":
        return opts.get("scale", 0.1) * (5 / 6 * np_kl(Tx, Sa) + 1 / 6 * np_kl(Tx, Sx))
    if name in ("adaad", "adaiad"):
        lam = opts.get("lam", 1.0)
        out = lam * np_kl(Ta, Sa) + (1 - lam) * np_kl(Tx, Sx)
        if name == "adaiad" and iad_active(epoch, epochs, opts.get("warmup", 60),
                                           opts.get("scale_warmup", True)):
            out += introspection(Sx, Sa, Ta, y, opts.get("beta_iad", 0.1))
        return out
    raise AssertionError(name)


# -- helpers ------------------------------------------------------------------------------------------
def linear(seed: int, scale: float = 1.0) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Flatten(), nn.Linear(D, C)).double()
    with torch.no_grad():
        m[1].weight.mul_(scale)
    return m.to(DEVICE)


def data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, *SHAPE, generator=g, dtype=torch.float64)
    x_adv = (x + 0.1 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    y = torch.randint(0, C, (B,), generator=g)
    return x.to(DEVICE), x_adv.to(DEVICE), y.to(DEVICE)


def np_logits(model, x):
    W, b = (p.detach().cpu().numpy() for p in model[1].parameters())
    xf = x.reshape(len(x), -1).cpu().numpy()
    return np.array([W @ xf[i] + b for i in range(len(xf))])


def make(name, **opts):
    return create_method(name, **opts)


def step_for(method, student, teacher, x, x_adv, y, epoch, epochs):
    step = Step(student, teacher, x, y, epoch=epoch, epochs=epochs,
                teacher_inputs=method.teacher_inputs(epoch, epochs))
    step.set_input("x_adv", x_adv)
    return step


BUILTIN = ["pgd-at", "trades", "ard", "iad", "akd", "rslad", "adaad", "adaiad"]

CASES = [  # (method, options, epoch, epochs)
    ("pgd-at", {}, 1, 10),
    ("trades", {}, 1, 10),
    ("trades", {"beta": 1.5}, 1, 10),
    ("ard", {}, 1, 10),
    ("ard", {"alpha_ard": 0.6, "temperature": 4.0}, 1, 10),
    ("ard", {"alpha_ard": 0.0}, 1, 10),
    ("iad", {}, 3, 10),  # before the warmup (W = 60·10/200 = 3): ARD
    ("iad", {}, 4, 10),  # after: ARD + introspection
    ("iad", {"alpha_ard": 0.7, "temperature": 2.0, "beta_iad": 0.5}, 150, 200),
    ("akd", {}, 1, 10),
    ("akd", {"lam": 0.4}, 1, 10),
    ("akd", {"lam": 0.0}, 1, 10),
    ("rslad", {}, 1, 10),
    ("rslad", {"scale": 1.0}, 1, 10),
    ("adaad", {}, 1, 10),
    ("adaad", {"lam": 0.3}, 1, 10),
    ("adaiad", {}, 2, 10),
    ("adaiad", {"lam": 0.6, "beta_iad": 0.3}, 9, 10),
]


def test_builtin_methods_are_registered():
    assert set(BUILTIN) <= set(registry("method").names())
    for name in BUILTIN:
        method = registry("method").get(name)
        assert method.__module__.startswith("igdm_kit_plugins.methods")
        doc = __import__(method.__module__, fromlist=["_"]).__doc__
        assert any(str(year) in doc for year in range(2017, 2026)), f"{name}: docstring cites no paper"


@pytest.mark.parametrize(("name", "opts", "epoch", "epochs"), CASES)
def test_loss_equals_the_spec_formula(name, opts, epoch, epochs):
    student, teacher = linear(0), linear(1, scale=3.0)  # a sharper teacher: KL terms far from 0
    x, x_adv, y = data()
    method = make(name, **opts)
    terms = method.loss(step_for(method, student, teacher, x, x_adv, y, epoch, epochs))
    total = sum(terms.values()).item()
    expected = oracle(name, opts, np_logits(student, x), np_logits(student, x_adv), np_logits(teacher, x),
                      np_logits(teacher, x_adv), y.cpu().numpy(), epoch, epochs)
    assert total == pytest.approx(expected, rel=1e-10, abs=1e-12)
    assert all(t.dim() == 0 for t in terms.values())


@pytest.mark.parametrize(("name", "opts", "epoch", "epochs"), CASES)
def test_gradient_matches_finite_differences_of_the_oracle(name, opts, epoch, epochs):
    """d loss / d student weights = central differences of the oracle: checks what carries gradient
    (TRADES' and IAD's S(x) targets do, the teacher and IAD's w_i do not)."""
    student, teacher = linear(0), linear(1, scale=3.0)
    for p in teacher.parameters():
        p.requires_grad_(True)  # so a gradient through the teacher would show up in .grad
    x, x_adv, y = data()
    method = make(name, **opts)
    sum(method.loss(step_for(method, student, teacher, x, x_adv, y, epoch, epochs)).values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    grad_w = student[1].weight.grad.cpu().numpy()

    fixed = (np_logits(teacher, x), np_logits(teacher, x_adv), y.cpu().numpy(), epoch, epochs)
    h = 1e-6
    for i, j in [(0, 0), (1, 5), (2, 11), (3, 7)]:
        values = []
        for sign in (1, -1):
            probe = linear(0)
            with torch.no_grad():
                probe[1].weight[i, j] += sign * h
            Tx, Ta, yy, e, E = fixed
            values.append(oracle(name, opts, np_logits(probe, x), np_logits(probe, x_adv), Tx, Ta, yy, e, E))
        assert grad_w[i, j] == pytest.approx((values[0] - values[1]) / (2 * h), rel=1e-5, abs=1e-8)


FORWARDS = [  # (method, options, epoch, epochs, student forwards, teacher images (one batched forward))
    ("trades", {}, 1, 10, 2, 0),
    ("trades", {"beta": 0.0}, 1, 10, 1, 0),
    ("ard", {}, 1, 10, 1, B),  # α_ard = 1: no S(x)
    ("ard", {"alpha_ard": 0.0}, 1, 10, 1, 0),  # no teacher at all
    ("ard", {"alpha_ard": 0.5}, 1, 10, 2, B),
    ("iad", {}, 3, 10, 1, B),
    ("iad", {}, 4, 10, 2, 2 * B),  # T(x) and T(x_adv) in one forward
    ("akd", {}, 1, 10, 1, B),
    ("akd", {"lam": 0.0}, 1, 10, 1, 0),
    ("rslad", {}, 1, 10, 2, B),
    ("adaad", {}, 1, 10, 1, B),  # λ = 1: neither S(x) nor T(x)
    ("adaad", {"lam": 0.5}, 1, 10, 2, 2 * B),
    ("adaiad", {}, 2, 10, 1, B),
    ("adaiad", {}, 9, 10, 2, B),  # T(x_adv) serves both the distillation and w_i
]


@pytest.mark.parametrize(("name", "opts", "epoch", "epochs", "s_fwd", "t_images"), FORWARDS)
def test_zero_weight_terms_are_not_computed(name, opts, epoch, epochs, s_fwd, t_images):
    student, teacher = linear(0), linear(1)
    x, x_adv, y = data()
    method = make(name, **opts)
    step = step_for(method, student, teacher, x, x_adv, y, epoch, epochs)
    with count_passes(student=student, teacher=teacher) as counter:
        terms = method.loss(step)
    assert counter.forwards["student"] == s_fwd  # (methods no longer declare student inputs: nothing read them)
    assert counter.forwards["teacher"] == (1 if t_images else 0)
    assert counter.images["teacher"] == t_images == B * len(method.teacher_inputs(epoch, epochs))
    assert all(t.requires_grad for t in terms.values())


@pytest.mark.parametrize("name", ["iad", "adaiad"])
@pytest.mark.parametrize(("opts", "epochs", "last_warmup_epoch"), [
    ({}, 200, 60),  # the reference: 0-based `epoch >= 60`, i.e. introspection from epoch 61
    ({}, 50, 15),  # scaled: W = 60·50/200
    ({}, 7, 2),  # W = 2.1: epochs 1–2 warm up
    ({"warmup": 3, "scale_warmup": False}, 50, 3),
    ({"warmup": 0}, 10, 0),
])
def test_introspection_starts_after_the_warmup(name, opts, epochs, last_warmup_epoch):
    student, teacher = linear(0), linear(1)
    x, x_adv, y = data()
    method = make(name, **opts)
    for epoch in (last_warmup_epoch, last_warmup_epoch + 1):
        if epoch < 1:
            continue
        terms = method.loss(step_for(method, student, teacher, x, x_adv, y, epoch, epochs))
        assert ("introspect_kl" in terms) == (epoch > last_warmup_epoch), epoch
        assert ("x_adv" in method.teacher_inputs(epoch, epochs)) == (epoch > last_warmup_epoch
                                                                      or name == "adaiad")


def test_default_attacks():
    expected = {"pgd-at": "pgd", "trades": "trades", "ard": "pgd", "iad": "pgd", "akd": "pgd",
                "rslad": "rslad", "adaad": "adaad", "adaiad": "adaad"}
    for name, attack in expected.items():
        method = make(name)
        assert method.attack_name == attack
        assert attack in registry("attack")


@pytest.mark.parametrize("name", ["adaad", "adaiad"])
def test_adaad_without_teacher_in_attack_uses_pgd(name):
    assert make(name, teacher_in_attack=False).attack_name == "pgd"
    assert make(name, teacher_in_attack=True).attack_name == "adaad"
    assert type(make(name)).default_attack == "adaad"  # the class default is unchanged


def _attack(name, student, teacher, steps=2):
    from igdm_kit.interfaces import AttackOptions

    return create_attack(name, student, options=AttackOptions(steps=steps), teacher=teacher)


def test_rslad_step_evaluates_the_teacher_once():
    """Through compute_loss: T(x) is computed once and shared by the rslad attack and the loss."""
    student, teacher = linear(0), linear(1).eval()
    x, _, y = data()
    method = make("rslad")
    with count_passes(student=student, teacher=teacher) as counter:
        result = compute_loss(student, teacher, method, None, _attack("rslad", student, teacher), x, y,
                              epoch=1, epochs=10)
    assert counter.forwards["teacher"] == 1 and counter.images["teacher"] == B
    expected = oracle("rslad", {}, np_logits(student, x), np_logits(student, result.x_adv),
                      np_logits(teacher, x), np_logits(teacher, result.x_adv), y.cpu().numpy(), 1, 10)
    assert result.loss.item() == pytest.approx(expected, rel=1e-10)
    assert (result.x_adv - x).abs().max().item() <= 8 / 255 + 1e-12


def test_adaad_step_through_compute_loss_leaves_the_teacher_without_grad():
    student, teacher = linear(0), linear(1).eval()
    for p in teacher.parameters():
        p.requires_grad_(True)
    x, _, y = data()
    method = make("adaad")
    result = compute_loss(student, teacher, method, None, _attack(method.attack_name, student, teacher),
                          x, y, epoch=1, epochs=10)
    result.loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student[1].weight.grad is not None and student[1].weight.grad.abs().sum() > 0
    expected = oracle("adaad", {}, np_logits(student, x), np_logits(student, result.x_adv),
                      np_logits(teacher, x), np_logits(teacher, result.x_adv), y.cpu().numpy(), 1, 10)
    assert result.loss.item() == pytest.approx(expected, rel=1e-10)
