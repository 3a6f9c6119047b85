"""The registered gradient modules: losses, gradients, x± semantics, engine integration, pass accounting.

Oracles: float64 numpy KL loops on separately computed logits, central finite differences (double backprop
of ``direct``), torch.func per-sample gradients, hand-computed ramp weights, and pass counts of a run
without any module.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from igdm_kit._plugins.manager import registry
from igdm_kit._training.loss import compute_loss
from igdm_kit._training.passes import count_passes
from igdm_kit._training.step import Step
from igdm_kit.factories import create_attack, create_method, create_model, create_module
from igdm_kit.interfaces import AttackOptions

MODULES = registry("module").names()
BUILTINS = {"igdm", "direct", "igdm-trades-like", "trades-reg"}
B, C, SIZE, CLASSES = 8, 1, 8, 5
EPS = 8 / 255


def test_builtins_are_registered():
    assert BUILTINS <= set(MODULES)


# -- fixtures -----------------------------------------------------------------------------------------
def make_module(name, **options):
    return create_module(name, **options)


def tiny_cnn(seed):
    torch.manual_seed(seed)
    # float64 so that small loss values (KL of nearby outputs) can be compared to an oracle tightly
    return create_model("small-cnn", width=4, num_classes=CLASSES, in_channels=C, image_size=SIZE).double()


def models(name, *, freeze_teacher=True):
    """A train-mode student and (only if the module needs one) an eval-mode teacher."""
    student = tiny_cnn(0).train()
    teacher = None
    if registry("module").get(name).needs_teacher:
        teacher = tiny_cnn(1).eval()
        for p in teacher.parameters():
            p.requires_grad_(not freeze_teacher)
    return student, teacher


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, C, SIZE, SIZE, generator=g, dtype=torch.float64)
    y = torch.randint(0, CLASSES, (B,), generator=g)
    sign = torch.randint(0, 2, x.shape, generator=g).double() * 2 - 1
    x_adv = (x + EPS * sign).clamp(0, 1)
    return x, y, x_adv


def step_for(module, student, teacher, x, y, x_adv, *, epoch=1, epochs=1):
    step = Step(student, teacher, x, y, epoch=epoch, epochs=epochs,
                teacher_inputs=sorted(module.teacher_inputs()))
    step.set_input("x_adv", x_adv)
    module.prepare(step)
    return step


def np_kl(target_logits, logits) -> float:
    """KL(softmax(target) ‖ softmax(logits)), batchmean, explicit float64 loops."""
    a = np.asarray(target_logits.detach(), dtype=np.float64)
    b = np.asarray(logits.detach(), dtype=np.float64)
    total = 0.0
    for i in range(a.shape[0]):
        la = a[i] - a[i].max() - math.log(np.exp(a[i] - a[i].max()).sum())
        lb = b[i] - b[i].max() - math.log(np.exp(b[i] - b[i].max()).sum())
        total += sum(math.exp(la[c]) * (la[c] - lb[c]) for c in range(a.shape[1]))
    return total / a.shape[0]


# -- every module: finite loss, gradient in the student, none in the teacher --------------------------
@pytest.mark.parametrize("name", MODULES)
def test_finite_loss_student_grad_no_teacher_grad(name):
    # Teacher parameters are left trainable here so that any leak of gradient into them would show.
    student, teacher = models(name, freeze_teacher=False)
    x, y, x_adv = batch()
    module = make_module(name, alpha=1.0)
    loss = module.loss(step_for(module, student, teacher, x, y, x_adv))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in student.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0
    if teacher is not None:
        assert all(p.grad is None for p in teacher.parameters())
        assert not teacher.training


@pytest.mark.parametrize("name", MODULES)
def test_options_are_validated(name):
    cls = registry("module").get(name)
    with pytest.raises(ValidationError):
        cls.Options(alhpa=1.0)  # typo: extra keys are forbidden
    with pytest.raises(ValidationError):
        cls.Options(alpha=-1.0)


@pytest.mark.parametrize("name", sorted({"igdm", "direct"} & set(MODULES)))
def test_distance_option(name):
    cls = registry("module").get(name)
    default = {"igdm": "kl", "direct": "l2"}[name]
    assert cls.Options().distance == default
    with pytest.raises(ValidationError):
        cls.Options(distance="hamming")


# -- x⁺ / x⁻ semantics ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODULES)
def test_x_plus_x_minus_semantics(name):
    student, teacher = models(name)
    x, y, x_adv = batch(1)
    delta = x_adv - x

    # β = γ = 1, no clamp: x⁺ is x_adv itself (an alias), x⁻ = x − δ, partly outside [0, 1]
    step = step_for(make_module(name), student, teacher, x, y, x_adv)
    assert step.input("x_plus") is step.input("x_adv")
    x_minus = step.input("x_minus")
    torch.testing.assert_close(x_minus, 2 * x - x_adv)
    assert (x_minus < 0).any() or (x_minus > 1).any()

    # β, γ ≠ 1
    step = step_for(make_module(name, beta=3.0, gamma=0.5), student, teacher, x, y, x_adv)
    torch.testing.assert_close(step.input("x_plus"), x + 3.0 * delta)
    torch.testing.assert_close(step.input("x_minus"), x - 0.5 * delta)
    assert (step.input("x_plus") < 0).any() or (step.input("x_plus") > 1).any()

    # clamp = true clamps both (and leaves x_adv, already in [0, 1], unchanged when β = 1)
    for beta in (1.0, 3.0):
        step = step_for(make_module(name, beta=beta, gamma=2.0, clamp=True), student, teacher, x, y, x_adv)
        xp, xm = step.input("x_plus"), step.input("x_minus")
        assert xp.min() >= 0 and xp.max() <= 1 and xm.min() >= 0 and xm.max() <= 1
        torch.testing.assert_close(xp, (x + beta * delta).clamp(0, 1))
        torch.testing.assert_close(xm, (x - 2.0 * delta).clamp(0, 1))


# -- direct: double backprop checked by finite differences ------------------------------------------------
def tanh_mlp(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 3)).double()


def per_sample_input_grad(model, x, y):
    """∇_x CE per sample via torch.func (a different formulation than a summed CE)."""
    from torch.func import grad, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}

    def one(xi, yi):
        return F.cross_entropy(torch.func.functional_call(model, params, (xi[None],)), yi[None])

    return vmap(grad(one))(x, y)


@pytest.mark.skipif("direct" not in MODULES, reason="direct not registered")
@pytest.mark.parametrize("distance", ["l2", "l1", "cosine"])
def test_direct_value_and_double_backprop_match_finite_differences(distance):
    student, teacher = tanh_mlp(0), tanh_mlp(1).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(5)
    x = torch.rand(4, 1, 6, dtype=torch.float64, generator=g)
    y = torch.tensor([0, 1, 2, 1])
    x_adv = (x + EPS).clamp(0, 1)
    module = make_module("direct", alpha=1.0, distance=distance)

    def value():
        return module.loss(step_for(module, student, teacher, x, y, x_adv))

    # the value against per-sample gradients from torch.func
    gs, gt = per_sample_input_grad(student, x, y), per_sample_input_grad(teacher, x, y)
    if distance == "l2":
        want = ((gs - gt) ** 2).mean()
    elif distance == "l1":
        want = (gs - gt).abs().mean()
    else:
        a, b = gs.flatten(1), gt.flatten(1)
        want = (1 - (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).mean()
    loss = value()
    assert loss.item() == pytest.approx(want.item(), rel=1e-10)

    # the gradient w.r.t. every student parameter against central differences of the value
    params = list(student.parameters())
    analytic = torch.autograd.grad(loss, params)
    h = 1e-6
    for p, a in zip(params, analytic, strict=True):
        fd = torch.zeros_like(p)
        for i in range(p.numel()):
            with torch.no_grad():
                p.view(-1)[i] += h
            lp = value().item()
            with torch.no_grad():
                p.view(-1)[i] -= 2 * h
            lm = value().item()
            with torch.no_grad():
                p.view(-1)[i] += h
            fd.view(-1)[i] = (lp - lm) / (2 * h)
        torch.testing.assert_close(a, fd, rtol=1e-5, atol=1e-9)
    assert sum(a.abs().sum() for a in analytic) > 0


@pytest.mark.skipif("direct" not in MODULES, reason="direct not registered")
def test_direct_runs_student_in_its_current_mode():
    student, teacher = models("direct")
    modes = []
    handle = student.register_forward_hook(lambda m, i, o: modes.append(student.net[1].training))
    x, y, x_adv = batch()
    module = make_module("direct", alpha=1.0)
    module.loss(step_for(module, student, teacher, x, y, x_adv))
    handle.remove()
    assert modes == [True]  # one extra student pass, in train mode (BatchNorm in train mode)
    assert student.training and not teacher.training


# -- igdm-trades-like: gradient on both sides -------------------------------------------------------------
@pytest.mark.skipif("igdm-trades-like" not in MODULES, reason="igdm-trades-like not registered")
def test_trades_like_gradient_flows_through_both_sides():
    student, teacher = models("igdm-trades-like")
    assert teacher is None  # needs no teacher: the Step has none, and the loss still works
    x, y, x_adv = batch()
    module = make_module("igdm-trades-like", alpha=1.0)
    step = step_for(module, student, None, x, y, x_adv)
    loss = module.loss(step)
    s_plus, s_minus = step.student("x_plus"), step.student("x_minus")  # the cached outputs it used
    g_plus, g_minus = torch.autograd.grad(loss, [s_plus, s_minus])
    assert g_plus.abs().sum() > 0 and g_minus.abs().sum() > 0
    assert loss.item() == pytest.approx(np_kl(s_minus, s_plus), rel=1e-9)  # KL(S(x⁻) ‖ S(x⁺))


# -- engine integration: L = L_base + T(α)·L_module -------------------------------------------------------
def oracle_module_loss(name, student, teacher, x, y, x_adv):
    """The module loss recomputed from fresh forwards (the student in train mode sees the same batches)."""
    d = x_adv - x
    if name == "igdm":
        with torch.no_grad():
            ds = student(x + d) - student(x - d)
            dt = teacher(x + d) - teacher(x - d)
        return np_kl(dt, ds)  # KL(Δ_T ‖ Δ_S)
    if name == "igdm-trades-like":
        with torch.no_grad():
            return np_kl(student(x - d), student(x + d))
    if name == "trades-reg":
        with torch.no_grad():
            return np_kl(student(x), student(x + d))
    if name == "direct":
        grads = []
        for model in (student, teacher):
            xr = x.clone().requires_grad_(True)
            nll = -F.log_softmax(model(xr), dim=1).gather(1, y[:, None]).sum()
            grads.append(torch.autograd.grad(nll, xr)[0].numpy())
        return float(np.mean((grads[0] - grads[1]) ** 2))
    return None


@pytest.mark.parametrize("name", MODULES)
def test_compute_loss_adds_ramped_module_term(name):
    student, teacher = models(name)
    x, y, _ = batch(2)
    attack = create_attack("pgd", student, options=AttackOptions(steps=2))
    method = create_method("pgd-at")
    module = make_module(name, alpha=3.0)
    torch.manual_seed(0)
    res = compute_loss(student, teacher, method, module, attack, x, y, epoch=2, epochs=5)
    weight = 3.0 * 2 / 5  # T(α) = α·e/E by hand
    assert set(res.terms) == {"adv_ce", "module"}
    want = oracle_module_loss(name, student, teacher, x, y, res.x_adv)
    if want is None:  # a third-party module: at least the weighting
        want = module.loss(res.step).item()
    assert res.terms["module"].item() == pytest.approx(weight * want, rel=1e-9)
    assert res.loss.item() == pytest.approx(res.terms["adv_ce"].item() + res.terms["module"].item(), rel=1e-6)
    assert res.loss.requires_grad


@pytest.mark.parametrize("name", MODULES)
def test_zero_weight_module_is_not_computed(name):
    student, teacher = models(name)
    x, y, _ = batch(3)
    attack = create_attack("pgd", student, options=AttackOptions(steps=2))
    method = create_method("pgd-at")

    initial = {k: v.clone() for k, v in student.state_dict().items()}

    def passes(module):
        student.load_state_dict(initial)  # the previous run's train-mode forwards moved BN statistics
        torch.manual_seed(0)
        with count_passes(student=student, teacher=teacher) as c:
            res = compute_loss(student, teacher, method, module, attack, x, y, epoch=1, epochs=4)
            res.loss.backward()
        return res, c.snapshot()

    base_res, base = passes(None)
    off_res, off = passes(make_module(name, alpha=0.0))
    assert "module" not in off_res.terms
    assert off == base  # no x⁻ (or any other) forward, no backward, no teacher pass
    assert "teacher" not in off
    assert off_res.loss.item() == pytest.approx(base_res.loss.item())

    _, on = passes(make_module(name, alpha=1.0))  # positive control: the same run with weight > 0
    if name in BUILTINS:
        assert on["student"]["forwards"] > base["student"]["forwards"]
    if name == "igdm":
        # T(x⁺) = T(x_adv) and T(x⁻) in one batched teacher forward; S(x⁺) reuses S(x_adv)
        assert on["teacher"] == {"forwards": 1, "backwards": 0, "images": 2 * B}
        assert on["student"]["forwards"] == base["student"]["forwards"] + 1
