"""Second, independent oracles of MTARD, B-MTARD and ABSLD (``shared/spec/recent-methods/``), written apart
from the plugins and from ``test_mtard.py``/``test_absld.py``: float64 loops of the spec's formulas, carried
over several real steps of a moving student (each step's weight and temperature from the oracle's own
recurrence, an lr decay among them); the student's gradients against central differences of the oracle."""

from __future__ import annotations

import math

import pytest
import torch
from oracles import np_softmax
from test_methods_recent import data, linear, np_logits

from igdm_kit._training.loss import compute_loss
from igdm_kit.factories import create_method
from igdm_kit.interfaces import EpochStats, ScheduleEvent

C = 4
WORST = {}


def note(f, got, want):
    WORST[f] = max(WORST.get(f, 0.0), abs(got - want) / max(abs(want), 1e-300))


class Fixed:
    """A training attack that returns a fixed x_adv."""

    needs_teacher_clean_logits = False
    outputs = frozenset()

    def __init__(self, x_adv):
        self.x_adv = x_adv

    def __call__(self, x, y, **kw):
        return self.x_adv


class Target(Fixed):
    """... and records the target the engine gives an attack that asks for the teacher's clean logits."""

    needs_teacher_clean_logits = True

    def __call__(self, x, y, *, teacher_logits=None):
        self.target = teacher_logits.clone()
        return self.x_adv


def np_klm(T, S, offset=0.0, taus=None):
    """(1/(B·C)) Σ_i Σ_c p_ic (log(p_ic + offset) − log q_ic), p_i = softmax(T_i/τ_i), q_i = softmax(S_i)."""
    tot = 0.0
    for i in range(len(T)):
        p, q = np_softmax(T[i] / (1.0 if taus is None else taus[i])), np_softmax(S[i])
        tot += sum(p[c] * (math.log(p[c] + offset) - math.log(q[c])) for c in range(C))
    return tot / (len(T) * C)


def np_e(T, tau):
    """Ē = mean over (i, c) of p log(p + 1e-5), p = softmax(T/τ) (B-MTARD)."""
    rows = [np_softmax(T[i] / tau) for i in range(len(T))]
    return sum(p[c] * math.log(p[c] + 1e-5) for p in rows for c in range(C)) / (len(T) * C)


@pytest.mark.parametrize("opts", [{}, {"scale": 10.0, "log_offset": 1e-5, "weight_lr": 0.2, "power": 2.0}])
def test_mtard_loss_gradient_and_weights_over_four_steps_and_a_decay(opts):
    """L⁰ from the first step; w_nat ← w − η_w(w − ℓ_nat/(ℓ_adv + ℓ_nat)), ℓ = (L/L⁰)^b, before L is formed;
    η_w ×0.1 after the lr decays (before the fourth step)."""
    s_, b, eta = opts.get("scale", 1.0), opts.get("power", 1.0), opts.get("weight_lr", 0.025)
    off = opts.get("log_offset", 0.0)
    student, robust, clean = linear(0), linear(1, 3.0), linear(2, 2.0)
    m = create_method("mtard", **opts)
    w, l0 = 0.5, None
    for k, seed in enumerate([0, 1, 2, 3]):
        if k == 3:
            m.on_epoch_end(1, None, ScheduleEvent(lr=0.1, next_lr=0.01))
            eta *= 0.1
        x, x_adv, y = data(seed)
        student.zero_grad()
        res = compute_loss(student, robust, m, None, Fixed(x_adv), x, y, epoch=1, epochs=2, teachers={"clean": clean})
        res.loss.backward()
        Sa, Sx, Ta, Tn = np_logits(student, x_adv), np_logits(student, x), np_logits(robust, x_adv), np_logits(clean, x)
        la, ln = s_ * np_klm(Ta, Sa, off), s_ * np_klm(Tn, Sx, off)
        l0 = l0 or (la, ln)
        ra, rn = (la / l0[0]) ** b, (ln / l0[1]) ** b
        w = w - eta * (w - rn / (ra + rn))
        want = (1 - w) * la + w * ln
        assert res.loss.item() == pytest.approx(want, rel=1e-10)
        note("mtard loss", res.loss.item(), want)
        h = 1e-6
        for idx in [(0, 0), (2, 7)]:
            vals = []
            for sg in (1, -1):
                p = linear(0)
                with torch.no_grad():
                    p.load_state_dict(student.state_dict())
                    p[1].weight[idx] += sg * h
                vals.append((1 - w) * s_ * np_klm(Ta, np_logits(p, x_adv), off)
                            + w * s_ * np_klm(Tn, np_logits(p, x), off))
            fd = (vals[0] - vals[1]) / (2 * h)
            assert student[1].weight.grad[idx].item() == pytest.approx(fd, rel=1e-6, abs=1e-9)
            note("mtard grad", student[1].weight.grad[idx].item(), fd)
        m.on_step_end(1, k, {})
        assert float(m.w_nat) == pytest.approx(w, rel=1e-12)
        with torch.no_grad():  # move the student a little, as a real step would
            student[1].weight.sub_(0.3 * student[1].weight.grad)


def test_b_mtard_loss_and_temperatures_over_five_steps_and_a_decay():
    """τ_k ← clip(τ_k − η_τ·sign(Ē_k/Ē_other − 1), 1, 10) after each step, from that step's teacher outputs at
    the τ its loss used (η_τ = 0.4 so that τ moves visibly; ×0.1 with the lr before the fifth step)."""
    student, robust, clean = linear(0), linear(1, 3.0), linear(2, 0.3)
    m = create_method("b-mtard", temperature_lr=0.4)
    tau, eta_t, w, l0, eta = [1.0, 1.0], 0.4, 0.5, None, 0.025
    for k, seed in enumerate([0, 1, 2, 3, 4]):
        if k == 4:
            m.on_epoch_end(1, None, ScheduleEvent(lr=0.1, next_lr=0.01))
            eta_t *= 0.1
            eta *= 0.1
        x, x_adv, y = data(seed)
        res = compute_loss(student, robust, m, None, Fixed(x_adv), x, y, epoch=1, epochs=2,
                           teachers={"clean": clean})
        Sa, Sx = np_logits(student, x_adv), np_logits(student, x)
        Ta, Tn = np_logits(robust, x_adv), np_logits(clean, x)
        la, ln = np_klm(Ta / tau[0], Sa), np_klm(Tn / tau[1], Sx)
        l0 = l0 or (la, ln)
        ra, rn = la / l0[0], ln / l0[1]
        w = w - eta * (w - rn / (ra + rn))
        want = (1 - w) * la + w * ln
        assert res.loss.item() == pytest.approx(want, rel=1e-10)
        note("b-mtard loss", res.loss.item(), want)
        ea, en = np_e(Ta, tau[0]), np_e(Tn, tau[1])
        tau = [min(max(tau[0] - eta_t * sign(ea / en - 1), 1), 10),
               min(max(tau[1] - eta_t * sign(en / ea - 1), 1), 10)]
        m.on_step_end(1, k, {})
        assert m.tau.tolist() == pytest.approx(tau, rel=1e-12), k
    assert tau != [1.0, 1.0]


def sign(v: float) -> float:
    return float(v > 0) - float(v < 0)


TAUS = ([0.7, 1.3, 2.0, 0.55], [1.8, 0.9, 1.1, 4.2])


@pytest.mark.parametrize("product", [False, True])
def test_absld_loss_gradient_and_attack_target(product):
    """5/6·KLm(T(x)/τ^adv_y ‖ S(x_adv)) + 1/6·KLm(T(x)/τ^nat_y ‖ S(x)) (both ÷ τ^adv_y·τ^nat_y with the
    product); the attack's target T(x)/τ^adv_y."""
    student, teacher = linear(0), linear(1, 3.0)
    x, x_adv, y = data()
    m = create_method("absld", temperature_product=product)
    m.tau = torch.tensor(TAUS, dtype=torch.float64)
    att = Target(x_adv)
    res = compute_loss(student, teacher, m, None, att, x, y, epoch=1, epochs=2)
    res.loss.backward()
    yl, Tx = y.tolist(), np_logits(teacher, x)
    ta = [TAUS[0][k] * (TAUS[1][k] if product else 1) for k in yl]
    tn = [TAUS[1][k] * (TAUS[0][k] if product else 1) for k in yl]
    def f(net):
        return 5 / 6 * np_klm(Tx, np_logits(net, x_adv), taus=ta) + 1 / 6 * np_klm(Tx, np_logits(net, x), taus=tn)

    want = f(student)
    assert res.loss.item() == pytest.approx(want, rel=1e-10)
    note("absld loss", res.loss.item(), want)
    for idx in [(0, 0), (3, 11)]:
        vals = []
        for sg in (1, -1):
            p = linear(0)
            with torch.no_grad():
                p[1].weight[idx] += sg * 1e-6
            vals.append(f(p))
        fd = (vals[0] - vals[1]) / 2e-6
        assert student[1].weight.grad[idx].item() == pytest.approx(fd, rel=1e-6, abs=1e-9)
        note("absld grad", student[1].weight.grad[idx].item(), fd)
    for i in range(len(yl)):
        for c in range(C):
            assert att.target[i, c].item() == pytest.approx(Tx[i][c] / ta[i], rel=1e-12)


def stats(adv, nat):
    f = torch.float64
    return EpochStats(sums={"ce_adv": torch.tensor(adv, dtype=f), "ce_nat": torch.tensor(nat, dtype=f)},
                      counts=torch.ones(len(adv), dtype=f), num_samples=len(adv), num_classes=len(adv))


def test_absld_temperatures_by_hand():
    """A^adv = (3, 1, 2): g = (1, −1, 0) → τ^adv = (0.9, 1.1, 1); A^nat = (0, 0, 6): g = (−2, −2, 4)/4 →
    (1.05, 1.05, 0.9); then r = 0.01 (lr decay) with A^adv = (10, 0, 0): g/max = (1, −½, −½), A^nat = (1, 2, 3):
    (−1, 0, 1); then the clips [0.5, 5]."""
    m = create_method("absld")
    m.on_epoch_end(1, stats([3, 1, 2], [0, 0, 6]), ScheduleEvent(lr=0.1, next_lr=0.1))
    assert m.tau[0].tolist() == pytest.approx([0.9, 1.1, 1.0], rel=1e-15)
    assert m.tau[1].tolist() == pytest.approx([1.05, 1.05, 0.9], rel=1e-15)
    m.on_epoch_end(2, stats([10, 0, 0], [1, 2, 3]), ScheduleEvent(lr=0.1, next_lr=0.01))
    assert m.tau[0].tolist() == pytest.approx([0.89, 1.105, 1.005], rel=1e-14)
    assert m.tau[1].tolist() == pytest.approx([1.06, 1.05, 0.89], rel=1e-14)
    m.tau = torch.tensor([[0.505, 4.995, 1.0], [1, 1, 1]], dtype=torch.float64)
    m.on_epoch_end(3, stats([4, 0, 2], [1, 2, 3]), ScheduleEvent(lr=0.01, next_lr=0.01))
    assert m.tau[0].tolist() == pytest.approx([0.5, 5.0, 1.0], rel=1e-15)


def test_report_worst_relative_errors(capsys):
    """Prints the worst relative errors seen above (run the file with -s to see them)."""
    with capsys.disabled():
        for family, err in sorted(WORST.items()):
            print(f"\nworst relative error (second oracle), {family}: {err:.2e}")
    assert all(e < 1e-5 for e in WORST.values())
