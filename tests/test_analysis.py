"""igdm_kit._evaluation.analysis: Taylor remainder, gradient alignment, point-wise distance, against hand-derived values.

Oracles: a linear model has no remainder; a quadratic model's remainder is εᵀQε (written out with numpy
loops); a linear softmax model's CE input gradient is Wᵀ(p − onehot(y)); two models that differ only in
their bias are ‖Δb‖ apart at every input.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from igdm_kit._evaluation.analysis import (
    gradient_alignment,
    input_gradients,
    pointwise_distance,
    summarize,
    taylor_remainder,
)

EPS = 8 / 255


def linear(seed, out=10, dtype=torch.float64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, out)).to(dtype).eval()


def images(n=12, seed=0, dtype=torch.float64):
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=dtype)


class Quadratic(nn.Module):
    """f(x) = (xᵀQ₁x, xᵀQ₂x, a·x + c) on the flattened input."""

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.Q = nn.Parameter(torch.randn(2, 64, 64, generator=g, dtype=torch.float64))
        self.a = nn.Parameter(torch.randn(64, generator=g, dtype=torch.float64))
        self.c = 3.0

    def forward(self, x):
        v = x.flatten(1)
        quad = torch.einsum("bi,kij,bj->bk", v, self.Q, v)
        return torch.cat([quad, (v @ self.a + self.c)[:, None]], dim=1)


# -- Taylor remainder -------------------------------------------------------------------------------------------
def test_remainder_of_a_linear_model_is_zero():
    x = images()
    r = taylor_remainder(linear(0), x, generator=torch.Generator().manual_seed(1))
    assert r.shape == (12,) and r.abs().max() < 1e-12


def test_remainder_of_a_quadratic_model_equals_its_closed_form():
    # f_k(x+ε) − f_k(x) − J_k(x)ε = (x+ε)ᵀQ_k(x+ε) − xᵀQ_kx − xᵀ(Q_k + Q_kᵀ)ε = εᵀQ_kε for k = 1, 2, and 0
    # for the linear output; divided by ‖f(x+ε)‖₂.
    model = Quadratic()
    x = images(6)
    noise = (torch.rand(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 2 - 1) * EPS
    got = taylor_remainder(model, x, noise=noise, batch_size=4)

    Q, a, c = model.Q.detach().numpy(), model.a.detach().numpy(), model.c
    X, E = x.flatten(1).numpy(), noise.flatten(1).numpy()
    for i in range(6):
        z = X[i] + E[i]
        rem = [sum(E[i][p] * Q[k][p][q] * E[i][q] for p in range(64) for q in range(64)) for k in range(2)]
        f_noisy = [z @ Q[0] @ z, z @ Q[1] @ z, z @ a + c]
        expected = np.sqrt(rem[0] ** 2 + rem[1] ** 2) / np.linalg.norm(f_noisy)
        assert got[i].item() == pytest.approx(expected, rel=1e-9)
    assert got.min() > 0


def test_remainder_noise_is_uniform_in_the_ball():
    from igdm_kit._evaluation.analysis import _uniform

    u = _uniform(torch.Size((4000,)), EPS, torch.zeros(1, dtype=torch.float64), torch.Generator().manual_seed(7))
    assert u.dtype == torch.float64 and u.abs().max() <= EPS
    assert u.min() < -0.99 * EPS and u.max() > 0.99 * EPS and abs(u.mean().item()) < 0.05 * EPS
    # uniform: each quarter of [−ε, ε] holds about a quarter of the draws
    counts = torch.histc(u, bins=4, min=-EPS, max=EPS)
    assert ((counts / 4000 - 0.25).abs() < 0.03).all()


def test_remainder_with_the_same_generator_seed_is_identical():
    model = Quadratic()
    x = images(10)
    a = taylor_remainder(model, x, generator=torch.Generator().manual_seed(3), batch_size=4)
    b = taylor_remainder(model, x, generator=torch.Generator().manual_seed(3), batch_size=4)
    c = taylor_remainder(model, x, generator=torch.Generator().manual_seed(4), batch_size=4)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_remainder_jvp_matches_finite_differences_on_a_cnn():
    """On a real BN/ReLU network the exact JVP agrees with a central difference (float64)."""
    from igdm_kit.factories import create_model

    torch.manual_seed(0)
    m = create_model("small-cnn", num_classes=10, in_channels=1, image_size=8, width=4).double()
    m.train()
    m(images(32))  # give BatchNorm non-trivial running statistics
    m.eval()
    x = images(5, seed=4)
    noise = (torch.rand(x.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 2 - 1) * EPS
    got = taylor_remainder(m, x, noise=noise)
    with torch.no_grad():
        h = 1e-5
        jv = (m(x + h * noise) - m(x - h * noise)) / (2 * h)
        f_noisy = m(x + noise)
        expected = (f_noisy - m(x) - jv).norm(dim=1) / f_noisy.norm(dim=1)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-9)
    assert not m.training


# -- gradient alignment ------------------------------------------------------------------------------------------
def test_alignment_of_a_model_with_itself_is_0_and_1():
    from igdm_kit.factories import create_model

    torch.manual_seed(0)
    m = create_model("small-cnn", num_classes=10, in_channels=1, image_size=8, width=4)
    x, y = images(10, dtype=torch.float32), torch.arange(10) % 10
    for other in (m, copy.deepcopy(m)):
        res = gradient_alignment(m, other, x, y, batch_size=4)
        assert res["gd"] == 0.0 and res["gc"] == pytest.approx(1.0, abs=1e-6)
        assert res["distance"].shape == (10,) and res["cosine"].shape == (10,)


def test_alignment_matches_the_linear_softmax_gradient_by_hand():
    s, t = linear(1), linear(2)
    x = images(7)
    y = torch.tensor([0, 3, 9, 2, 2, 5, 1])
    res = gradient_alignment(s, t, x, y, batch_size=3)

    def grads(model):
        W = model[1].weight.detach().numpy()
        b = model[1].bias.detach().numpy()
        out = []
        for i in range(7):
            z = W @ x[i].flatten().numpy() + b
            p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
            onehot = np.eye(10)[y[i]]
            out.append(W.T @ (p - onehot))
        return np.array(out)

    gs, gt = grads(s), grads(t)
    dist = np.linalg.norm(gs - gt, axis=1)
    cos = (gs * gt).sum(1) / (np.linalg.norm(gs, axis=1) * np.linalg.norm(gt, axis=1))
    assert np.allclose(res["distance"].numpy(), dist, rtol=1e-10)
    assert np.allclose(res["cosine"].numpy(), cos, rtol=1e-10)
    assert res["gd"] == pytest.approx(dist.mean(), rel=1e-10)
    assert res["gc"] == pytest.approx(cos.mean(), rel=1e-10)
    # per sample, so a batch's size does not scale the gradients
    assert np.allclose(input_gradients(s, x, y).flatten(1).numpy(), gs, rtol=1e-10)


def test_alignment_uses_eval_mode_and_restores_modes():
    from igdm_kit.factories import create_model

    torch.manual_seed(0)
    s = create_model("small-cnn", num_classes=10, in_channels=1, image_size=8, width=4).train()
    t = copy.deepcopy(s).eval()
    before = {k: v.clone() for k, v in s.state_dict().items()}
    res = gradient_alignment(s, t, images(6, dtype=torch.float32), torch.arange(6))
    assert s.training and not t.training
    assert all(torch.equal(before[k], v) for k, v in s.state_dict().items())  # no BN update
    assert res["gd"] == 0.0  # in eval mode, student and its copy are the same function


# -- point-wise distance ----------------------------------------------------------------------------------------------
def _bias_pair():
    s = linear(1)
    t = copy.deepcopy(s)
    with torch.no_grad():
        t[1].bias.add_(torch.arange(10, dtype=torch.float64) / 10)
    return s, t, float(np.linalg.norm(np.arange(10) / 10))


@pytest.mark.parametrize("delta", ["uniform", "adversarial"])
def test_pointwise_distance_of_bias_shifted_models_is_the_bias_gap(delta):
    s, t, gap = _bias_pair()
    x, y = images(9), torch.arange(9)
    res = pointwise_distance(s, t, x, y, delta=delta, batch_size=4)
    assert np.allclose(res["distance"].numpy(), gap, rtol=1e-12) and res["mean"] == pytest.approx(gap)
    assert pointwise_distance(s, s, x, y, delta=delta)["mean"] == 0.0


def test_pointwise_adversarial_delta_is_the_methods_attack_with_20_steps():
    from igdm_kit.factories import create_attack
    from igdm_kit.interfaces import AttackOptions

    s, t = linear(1), linear(2)
    x, y = images(8), torch.arange(8)
    torch.manual_seed(11)
    res = pointwise_distance(s, t, x, y, delta="adversarial", method="pgd-at", eps=0.05)

    torch.manual_seed(11)
    x_adv = create_attack("pgd", s, options=AttackOptions(eps=0.05, steps=20))(x, y)
    assert (x_adv - x).abs().max() <= 0.05 + 1e-12
    expected = (t(x_adv) - s(x_adv)).detach().norm(dim=1)
    assert torch.allclose(res["distance"], expected, rtol=1e-12)
    uniform = pointwise_distance(s, t, x, y, delta="uniform", eps=0.05,
                                 generator=torch.Generator().manual_seed(0))
    assert uniform["mean"] != res["mean"]


def test_pointwise_with_a_teacher_attack_method():
    """RSLAD's attack needs T(x) (teacher_logits=); AdaAD's differentiates through the teacher."""
    from igdm_kit._plugins.manager import registry

    s, t = linear(1, dtype=torch.float32), linear(2, dtype=torch.float32)
    x, y = images(6, dtype=torch.float32), torch.arange(6)
    for method in ("rslad", "adaad"):
        if method not in registry("method"):
            pytest.skip(f"method {method!r} is not registered in this checkout")
        res = pointwise_distance(s, t, x, y, delta="adversarial", method=method)
        clean = (t(x) - s(x)).detach().norm(dim=1)
        assert res["distance"].shape == (6,) and torch.isfinite(res["distance"]).all()
        assert res["mean"] != pytest.approx(clean.mean().item(), abs=1e-9)  # δ moved the inputs


# -- summaries ------------------------------------------------------------------------------------------------------
def test_summarize_matches_numpy():
    v = np.array([0.3, 0.1, 0.4, 0.1, 0.5, 0.9, 0.2, 0.6])
    s = summarize(torch.tensor(v))
    assert s["n"] == 8 and s["mean"] == pytest.approx(v.mean()) and s["std"] == pytest.approx(v.std(ddof=1))
    assert s["median"] == pytest.approx(np.median(v)) and s["min"] == 0.1 and s["max"] == 0.9
    assert s["q25"] == pytest.approx(np.percentile(v, 25)) and s["q95"] == pytest.approx(np.percentile(v, 95))
    assert summarize([2.0])["std"] == 0.0


# -- the paper's qualitative result on digits ------------------------------------------------------------------------
def _train_digits(adversarial: bool, epochs: int = 8, seed: int = 0):
    from igdm_kit.factories import create_attack, create_dataset, create_model
    from igdm_kit.interfaces import AttackOptions

    torch.manual_seed(seed)
    xtr, ytr = create_dataset("digits").load("train")
    m = create_model("small-cnn", num_classes=10, in_channels=1, image_size=8, width=16)
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    attack = create_attack("pgd", m, options=AttackOptions(eps=0.1, step_size=0.025, steps=5)) if adversarial else None
    for _ in range(epochs):
        m.train()
        perm = torch.randperm(len(xtr))
        for i in range(0, len(xtr), 64):
            xb, yb = xtr[perm[i:i + 64]], ytr[perm[i:i + 64]]
            if attack is not None:
                xb = attack(xb, yb)
            loss = F.cross_entropy(m(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return m.eval()


def test_pgd_at_model_is_more_locally_linear_than_a_natural_one():
    """Section 3.1 / Figure 2b on digits (≈5 s): natural ≈ 0.0083, PGD-AT ≈ 0.0046 (ratio 0.53–0.56 over
    seeds 0–3)."""
    from igdm_kit.factories import create_dataset

    xte, yte = create_dataset("digits").load("test")
    natural, robust = _train_digits(False), _train_digits(True)
    for m in (natural, robust):
        assert (m(xte).argmax(1) == yte).float().mean() > 0.9  # both actually learned the task
    r_nat = taylor_remainder(natural, xte, generator=torch.Generator().manual_seed(0)).mean().item()
    r_adv = taylor_remainder(robust, xte, generator=torch.Generator().manual_seed(0)).mean().item()
    print(f"remainder proportion: natural {r_nat:.4f}, PGD-AT {r_adv:.4f}")
    assert r_adv < 0.7 * r_nat
