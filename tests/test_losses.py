"""The functional losses of igdm_kit.losses against independent oracles.

Oracles: explicit float64 numpy loops for softmax/log/KL, hand-written values on small tensors, the exact
Taylor expansion of linear models, and central finite differences for input gradients.
"""

from __future__ import annotations

import math
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

import igdm_kit.losses as losses_mod
from igdm_kit.errors import IgdmKitError
from igdm_kit.losses import direct_loss, igdm_loss, input_gradient, ramp_weight, trades_like_loss, trades_reg_loss


# -- independent oracles ------------------------------------------------------------------------------
def np_kl_batchmean(target_logits, logits) -> float:
    """KL(softmax(target) ‖ softmax(logits)) summed over classes, averaged over rows, by explicit loops."""
    a = np.asarray(target_logits, dtype=np.float64)
    b = np.asarray(logits, dtype=np.float64)
    total = 0.0
    for i in range(a.shape[0]):
        za = sum(math.exp(v) for v in a[i])
        zb = sum(math.exp(v) for v in b[i])
        for c in range(a.shape[1]):
            p = math.exp(a[i, c]) / za
            q = math.exp(b[i, c]) / zb
            total += p * (math.log(p) - math.log(q))
    return total / a.shape[0]


def rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


# -- igdm_loss ----------------------------------------------------------------------------------------
def test_igdm_kl_matches_numpy_loops():
    sp, sm, tp, tm = (rand(5, 4, seed=s) for s in range(4))
    got = igdm_loss(sp, sm, tp, tm, distance="kl").item()
    want = np_kl_batchmean((tp - tm).numpy(), (sp - sm).numpy())  # KL(Δ_T ‖ Δ_S)
    assert got == pytest.approx(want, rel=1e-12, abs=1e-14)
    # The direction matters: KL(Δ_S ‖ Δ_T) is a different number on generic inputs.
    assert abs(np_kl_batchmean((sp - sm).numpy(), (tp - tm).numpy()) - want) > 1e-6
    # kl is the default distance
    assert igdm_loss(sp, sm, tp, tm).item() == got


def test_igdm_l1_l2_hand_values():
    # Δ_S = [[1, -2], [0, 3]] − [[0, 0], [1, 1]] = [[1, -2], [-1, 2]]
    # Δ_T = [[0, 0], [0, 0]] − [[-1, 1], [0, 0]] = [[1, -1], [0, 0]]
    # Δ_S − Δ_T = [[0, -1], [-1, 2]] → mean |·| = 4/4 = 1, mean (·)² = (0 + 1 + 1 + 4)/4 = 1.5
    sp = torch.tensor([[1.0, -2.0], [0.0, 3.0]])
    sm = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    tp = torch.zeros(2, 2)
    tm = torch.tensor([[-1.0, 1.0], [0.0, 0.0]])
    assert igdm_loss(sp, sm, tp, tm, distance="l1").item() == pytest.approx(1.0)
    assert igdm_loss(sp, sm, tp, tm, distance="l2").item() == pytest.approx(1.5)


def test_igdm_kl_is_shift_invariant_per_row():
    # softmax ignores a per-row constant: Δ_T = Δ_S + c_i gives KL 0 exactly (l2 does not).
    sp, sm = rand(3, 5, seed=1), rand(3, 5, seed=2)
    shift = torch.tensor([[0.5], [-2.0], [3.0]], dtype=torch.float64)
    tp, tm = sp + shift, sm.clone()
    assert igdm_loss(sp, sm, tp, tm, "kl").item() == pytest.approx(0.0, abs=1e-12)
    assert igdm_loss(sp, sm, tp, tm, "l2").item() > 0.1


def linear(w: torch.Tensor, b: torch.Tensor) -> nn.Linear:
    m = nn.Linear(w.shape[1], w.shape[0]).double()
    with torch.no_grad():
        m.weight.copy_(w)
        m.bias.copy_(b)
    return m


def test_linear_models_difference_is_exactly_two_w_delta():
    w_s, b_s = rand(3, 6, seed=10), rand(3, seed=11)
    w_t, b_t = rand(3, 6, seed=12), rand(3, seed=13)
    s, t = linear(w_s, b_s), linear(w_t, b_t)
    x, d = rand(4, 6, seed=14), 0.1 * rand(4, 6, seed=15)
    with torch.no_grad():
        delta_s = s(x + d) - s(x - d)
        delta_t = t(x + d) - t(x - d)
    # f(x ± δ) = W x ± W δ + b, so Δ = 2 W δ with no remainder (Taylor is exact for linear models)
    torch.testing.assert_close(delta_s, 2 * d @ w_s.T, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(delta_t, 2 * d @ w_t.T, rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        for dist in ("kl", "l1", "l2"):
            # the loss is D(2 W_S δ, 2 W_T δ): compare with the loss on those closed forms
            got = igdm_loss(s(x + d), s(x - d), t(x + d), t(x - d), dist)
            want = igdm_loss(2 * d @ w_s.T, torch.zeros(4, 3, dtype=torch.float64),
                             2 * d @ w_t.T, torch.zeros(4, 3, dtype=torch.float64), dist)
            assert got.item() == pytest.approx(want.item(), rel=1e-9, abs=1e-14)
            assert got.item() > 1e-6  # generic different weights: not matched


def test_linear_igdm_is_zero_iff_w_delta_agree():
    w_s, b_s = rand(3, 6, seed=20), rand(3, seed=21)
    x = rand(1, 6, seed=22)
    d = 0.1 * rand(1, 6, seed=23)
    s = linear(w_s, b_s)

    def loss(teacher, dist):
        with torch.no_grad():
            return igdm_loss(s(x + d), s(x - d), teacher(x + d), teacher(x - d), dist).item()

    # identical weights, different biases → 0: the bias cancels in the difference
    same_w = linear(w_s.clone(), rand(3, seed=24))
    # different weights but W_T δ = W_S δ: add a rank-one term u vᵀ with v ⊥ δ
    v = rand(6, seed=25)
    dv = d[0]
    v = v - (v @ dv) / (dv @ dv) * dv
    u = rand(3, seed=26)
    same_wd = linear(w_s + torch.outer(u, v), b_s)
    # W_T δ ≠ W_S δ: add u δᵀ
    other = linear(w_s + torch.outer(u, dv), b_s)
    for dist in ("kl", "l1", "l2"):
        assert loss(same_w, dist) == pytest.approx(0.0, abs=1e-12)
        assert loss(same_wd, dist) == pytest.approx(0.0, abs=1e-12)
        assert loss(other, dist) > 1e-8


def test_gradients_reach_student_but_never_teacher_tensors():
    sp = rand(4, 3, seed=30).requires_grad_(True)
    sm = rand(4, 3, seed=31).requires_grad_(True)
    for dist in ("kl", "l1", "l2"):
        tp = rand(4, 3, seed=32).requires_grad_(True)
        tm = rand(4, 3, seed=33).requires_grad_(True)
        sp.grad = sm.grad = None
        igdm_loss(sp, sm, tp, tm, dist).backward()
        assert sp.grad is not None and sp.grad.abs().sum() > 0
        assert sm.grad is not None and sm.grad.abs().sum() > 0
        # Δ_S enters with + for s_plus and − for s_minus
        torch.testing.assert_close(sm.grad, -sp.grad)
        assert tp.grad is None and tm.grad is None


def test_unknown_distance_and_shape_mismatch_are_user_errors():
    a = torch.zeros(2, 3)
    with pytest.raises(IgdmKitError, match="distance"):
        igdm_loss(a, a, a, a, distance="cosine")
    with pytest.raises(IgdmKitError, match="distance"):
        direct_loss(a, a, distance="kl")
    with pytest.raises(IgdmKitError, match="shapes"):
        igdm_loss(a, a, torch.zeros(2, 1), a)


# -- input_gradient -----------------------------------------------------------------------------------
def tiny_mlp(seed=0, d_in=5, classes=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, 4), nn.Tanh(), nn.Linear(4, classes)).double()


def np_ce(logits_row, label) -> float:
    z = [float(v) for v in logits_row]
    m = max(z)
    return -(z[label] - m - math.log(sum(math.exp(v - m) for v in z)))


def test_input_gradient_matches_central_differences_per_sample():
    model = tiny_mlp(1)
    x = rand(3, 5, seed=40)
    y = torch.tensor([0, 2, 1])
    g = input_gradient(model, x, y)
    assert g.shape == x.shape and not g.requires_grad
    h = 1e-6
    fd = torch.zeros_like(x)
    with torch.no_grad():
        for i in range(3):  # each sample's OWN loss only: the gradient is per sample
            for j in range(5):
                xp, xm = x[i].clone(), x[i].clone()
                xp[j] += h
                xm[j] -= h
                lp = np_ce(model(xp[None])[0], int(y[i]))
                lm = np_ce(model(xm[None])[0], int(y[i]))
                fd[i, j] = (lp - lm) / (2 * h)
    torch.testing.assert_close(g, fd, rtol=1e-6, atol=1e-8)


def test_input_gradient_leaves_params_alone_and_works_under_no_grad():
    model = tiny_mlp(2)
    x, y = rand(2, 5, seed=41), torch.tensor([1, 0])
    with torch.no_grad():
        g = input_gradient(model, x, y)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())
    # create_graph=True: the result is differentiable w.r.t. the parameters (double backprop)
    g2 = input_gradient(model, x, y, create_graph=True)
    assert g2.requires_grad
    torch.testing.assert_close(g2.detach(), g)
    assert not x.requires_grad  # the caller's tensor is untouched


# -- direct_loss ----------------------------------------------------------------------------------------
def test_direct_loss_hand_values():
    g_s = torch.tensor([[[1.0, 0.0]], [[0.0, 2.0]]])  # (B=2, 1, 2)
    g_t = torch.tensor([[[1.0, 1.0]], [[0.0, -2.0]]])
    # differences: [0, -1], [0, 4] → mse = (0 + 1 + 0 + 16)/4 = 4.25, l1 = (1 + 4)/4 = 1.25
    assert direct_loss(g_s, g_t).item() == pytest.approx(4.25)
    assert direct_loss(g_s, g_t, "l2").item() == pytest.approx(4.25)
    assert direct_loss(g_s, g_t, "l1").item() == pytest.approx(1.25)
    # cos: sample 0: 1/(1·√2); sample 1: −4/(2·2) = −1 → mean(1 − cos) = ((1 − 1/√2) + 2) / 2
    assert direct_loss(g_s, g_t, "cosine").item() == pytest.approx((1 - 1 / math.sqrt(2) + 2) / 2)


def test_direct_loss_teacher_side_gets_no_gradient():
    g_s = rand(2, 3, seed=50).requires_grad_(True)
    g_t = rand(2, 3, seed=51).requires_grad_(True)
    for dist in ("l2", "l1", "cosine"):
        g_s.grad = None
        direct_loss(g_s, g_t, dist).backward()
        assert g_s.grad is not None and g_s.grad.abs().sum() > 0
        assert g_t.grad is None


# -- TRADES-like and TRADES_reg -----------------------------------------------------------------------------
def test_trades_like_and_reg_values_and_gradients():
    sp = rand(4, 3, seed=60).requires_grad_(True)
    sm = rand(4, 3, seed=61).requires_grad_(True)
    # KL(S(x⁻) ‖ S(x⁺)): target is s_minus
    assert trades_like_loss(sp, sm).item() == pytest.approx(
        np_kl_batchmean(sm.detach().numpy(), sp.detach().numpy()), rel=1e-12)
    trades_like_loss(sp, sm).backward()
    assert sp.grad.abs().sum() > 0 and sm.grad.abs().sum() > 0  # both sides carry gradient

    sc = rand(4, 3, seed=62).requires_grad_(True)
    sa = rand(4, 3, seed=63).requires_grad_(True)
    # KL(S(x) ‖ S(x + δ)): target is the clean output
    assert trades_reg_loss(sc, sa).item() == pytest.approx(
        np_kl_batchmean(sc.detach().numpy(), sa.detach().numpy()), rel=1e-12)
    trades_reg_loss(sc, sa).backward()
    assert sa.grad.abs().sum() > 0 and sc.grad.abs().sum() > 0  # target not detached (TRADES reference)


# -- ramp_weight -------------------------------------------------------------------------------------------
def test_ramp_weight_values():
    assert ramp_weight(100.0, 1, 200) == pytest.approx(0.5)  # α·1/E
    assert ramp_weight(100.0, 200, 200) == pytest.approx(100.0)  # e = E gives α
    assert ramp_weight(100.0, 50, 100, ramp_epochs=200) == pytest.approx(25.0)  # ramp_epochs replaces E
    assert ramp_weight(100.0, 100, 100, ramp_epochs=50) == pytest.approx(200.0)  # not capped at α
    assert ramp_weight(0.0, 7, 10) == 0.0
    with pytest.raises(ValueError):
        ramp_weight(1.0, 1, 0)


# -- the module docstring example ---------------------------------------------------------------------------
def test_module_docstring_example_runs_and_equals_by_hand():
    doc = losses_mod.__doc__
    after = doc.split("::\n", 1)[1].splitlines()
    block = []  # the indented code block after "::", up to the first unindented line
    for line in after:
        if line.strip() and not line.startswith(" "):
            break
        block.append(line)
    code = textwrap.dedent("\n".join(block))
    assert "igdm_loss(" in code
    student, teacher = tiny_mlp(3), tiny_mlp(4)
    for p in teacher.parameters():
        p.requires_grad_(False)
    x = rand(4, 5, seed=70)
    x_adv = x + 0.05 * rand(4, 5, seed=71).sign()
    env = {"student": student, "teacher": teacher, "x": x, "x_adv": x_adv, "base_loss": torch.tensor(1.0),
           "alpha": 10.0, "epoch": 3, "epochs": 6}
    exec(code, env)  # noqa: S102 - our own docstring
    d = x_adv - x
    with torch.no_grad():
        want = 1.0 + 10.0 * 3 / 6 * np_kl_batchmean((teacher(x + d) - teacher(x - d)).numpy(),
                                                     (student(x + d) - student(x - d)).numpy())
    assert env["loss"].item() == pytest.approx(want, rel=1e-10)
    assert env["loss"].requires_grad
