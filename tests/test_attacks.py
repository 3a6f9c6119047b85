"""The training attacks (inner maximization) against the spec's properties and independent oracles.

Every test runs over every registered attack, on ``pytest --device`` (cpu unless asked). Oracles: the
attack's own loss written again with explicit float64 numpy loops (softmax, log, KL, CE), the analytic
input gradient of those losses for linear models (so one step's sign can be checked by hand), and
properties (‖δ‖∞ ≤ ε, [0, 1], modes, no .grad).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from oracles import np_ce, np_kl, np_softmax
from torch import nn

from igdm_kit._plugins.manager import registry
from igdm_kit.errors import IgdmKitError
from igdm_kit.factories import create_attack
from igdm_kit.interfaces import AttackOptions

ATTACKS = registry("attack").names()
B, SHAPE, C = 8, (1, 4, 4), 3
D = int(np.prod(SHAPE))
DEVICE = torch.device("cpu")  # where the models and batches are made: the --device option, set below


@pytest.fixture(autouse=True)
def _on_device(device):
    global DEVICE
    DEVICE = device


# -- independent oracles ------------------------------------------------------------------------------






def logits_of(model, z):
    with torch.no_grad():
        return model(z).double().cpu().numpy()


def saad_target(t, x, z, y, lam: float = 1.0) -> np.ndarray:
    """SAAD's linearized teacher (saad.md): T(x) with the true-class logit moved by λ·⟨∇_x T_y(x), z − x⟩
    (the teacher's input gradient by torch's autograd in float64, the rest by hand)."""
    xg = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(t(xg).gather(1, y[:, None]).sum(), xg)
    g = g.reshape(len(x), -1).cpu().numpy()
    out = logits_of(t, x)
    delta = (z - x).reshape(len(x), -1).detach().cpu().numpy()
    for i, label in enumerate(y.cpu().numpy()):
        out[i, label] += lam * float(g[i] @ delta[i])
    return out


#: The loss each attack maximizes (spec, "Inner maximization"), from logits only.
OWN_LOSS = {
    "saad": lambda s, t, x, z, y: np_kl(saad_target(t, x, z, y), logits_of(s, z)),
    "pgd": lambda s, t, x, z, y: np_ce(logits_of(s, z), y.cpu().numpy()),
    "trades": lambda s, t, x, z, y: np_kl(logits_of(s, x), logits_of(s, z)),
    "rslad": lambda s, t, x, z, y: np_kl(logits_of(t, x), logits_of(s, z)),
    "adaad": lambda s, t, x, z, y: np_kl(logits_of(t, z), logits_of(s, z)),
}


def own_loss_gradient(name, W, b, A, c, x, z, y):
    """∂L/∂z of the batchmean loss for linear S(z) = W z + b, T(z) = A z + c, by hand (rows = samples).

    CE: Wᵀ(q − onehot(y))/B; KL(p ‖ q(S z)) with p fixed: Wᵀ(q − p)/B; AdaAD's KL(p(T z) ‖ q(S z)) also
    differentiates the target: Aᵀ(p ⊙ (d − Σ p d))/B with d = log p − log q; SAAD's target moves only in its
    true-class logit, along A[y]: A[y]·p_y(d_y − Σ p d)/B.
    """
    grads = np.zeros_like(z)
    for i in range(len(z)):
        q = np_softmax(W @ z[i] + b)
        if name == "pgd":
            onehot = np.eye(len(b))[y[i]]
            g = W.T @ (q - onehot)
        elif name in ("trades", "rslad"):
            p = np_softmax(W @ x[i] + b) if name == "trades" else np_softmax(A @ x[i] + c)
            g = W.T @ (q - p)
        elif name == "adaad":
            p = np_softmax(A @ z[i] + c)
            d = np.log(p) - np.log(q)
            g = A.T @ (p * (d - (p * d).sum())) + W.T @ (q - p)
        elif name == "saad":  # only T̃'s true-class logit moves with z, along A[y] (= ∇_x T_y)
            t = A @ x[i] + c
            t[y[i]] += A[y[i]] @ (z[i] - x[i])
            p = np_softmax(t)
            d = np.log(p) - np.log(q)
            g = A[y[i]] * (p[y[i]] * (d[y[i]] - (p * d).sum())) + W.T @ (q - p)
        else:
            raise AssertionError(name)
        grads[i] = g / len(z)
    return grads


# -- helpers ------------------------------------------------------------------------------------------
def mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(D, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Dropout(0.1),
                         nn.Linear(12, C)).double().to(DEVICE)


def linear(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(D, C)).double().to(DEVICE)


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, *SHAPE, generator=g, dtype=torch.float64)
    x[:, :, 0] = 0.0  # pixels on the box's faces: the [0, 1] clamp must act
    x[:, :, 1] = 1.0
    y = torch.randint(0, C, (B,), generator=g)
    return x.to(DEVICE), y.to(DEVICE)


def build(name, student, teacher, **options):
    return create_attack(name, student, options=AttackOptions(**options), teacher=teacher)


def call(attack, x, y, teacher, *, pass_teacher_logits: bool = True):
    """Call an attack as the engine does (``training_step.compute_loss``)."""
    kwargs = {}
    if pass_teacher_logits and getattr(attack, "needs_teacher_clean_logits", False):
        with torch.no_grad():
            kwargs["teacher_logits"] = teacher(x)
    return attack(x, y, **kwargs)


def run_seeded(name, student, teacher, x, y, seed, **options):
    torch.manual_seed(seed)
    return call(build(name, student, teacher, **options), x, y, teacher)


# -- tests --------------------------------------------------------------------------------------------
def test_builtin_attacks_are_registered():
    assert {"pgd", "trades", "rslad", "adaad"} <= set(ATTACKS)
    assert set(ATTACKS) <= set(OWN_LOSS), "a registered attack has no oracle in OWN_LOSS"


@pytest.mark.parametrize("name", ATTACKS)
@pytest.mark.parametrize("eps", [8 / 255, 0.3])
def test_stays_in_eps_ball_and_unit_box(name, eps):
    student, teacher = mlp(0).eval(), mlp(1).eval()
    x, y = batch()
    x_adv = call(build(name, student, teacher, eps=eps, step_size=eps / 2, steps=4), x, y, teacher)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert (x_adv - x).abs().max().item() <= eps + 1e-6
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0
    assert (x_adv - x).abs().max().item() > eps / 4  # it did move


def _set_mode(model: nn.Module, mode: str) -> None:
    if mode == "mixed":  # train, but with the BatchNorm frozen: the restore must be per submodule
        model.train()
        model[2].eval()
    else:
        model.train(mode == "train")


@pytest.mark.parametrize("name", ATTACKS)
@pytest.mark.parametrize("before", ["train", "eval", "mixed"])
@pytest.mark.parametrize("bn_mode", ["eval", "train"])
def test_modes_during_attack_and_restored_after(name, before, bn_mode):
    student, teacher = mlp(0), mlp(1)
    _set_mode(student, before)
    _set_mode(teacher, before)
    modes_before = [m.training for m in [*student.modules(), *teacher.modules()]]
    seen = {"student": [], "student_bn": [], "teacher": []}
    student.register_forward_hook(lambda m, i, o: seen["student"].append(m.training))
    student[2].register_forward_hook(lambda m, i, o: seen["student_bn"].append(m.training))
    teacher.register_forward_hook(lambda m, i, o: seen["teacher"].append(m.training))
    x, y = batch()
    attack = build(name, student, teacher, steps=2, bn_mode=bn_mode)
    # rslad evaluates the teacher itself when not given T(x): exercise that path here.
    call(attack, x, y, teacher, pass_teacher_logits=False)

    assert [m.training for m in [*student.modules(), *teacher.modules()]] == modes_before
    attacking_mode = bn_mode == "train"
    assert seen["student"] and set(seen["student"]) == {attacking_mode}  # S(x) of TRADES included
    assert set(seen["student_bn"]) == {attacking_mode}
    assert set(seen["teacher"]) <= {False}  # the teacher is only ever evaluated in eval mode
    if name in ("rslad", "adaad", "saad"):
        assert seen["teacher"], "this attack evaluates the teacher"


@pytest.mark.parametrize("name", ATTACKS)
@pytest.mark.parametrize("bn_mode", ["eval", "train"])
def test_no_parameter_gradient_accumulates(name, bn_mode):
    student, teacher = mlp(0).train(), mlp(1).eval()
    for p in [*student.parameters(), *teacher.parameters()]:
        assert p.requires_grad  # so a stray backward() would fill .grad
    x, y = batch()
    call(build(name, student, teacher, steps=3, bn_mode=bn_mode), x, y, teacher, pass_teacher_logits=False)
    assert all(p.grad is None for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("name", ATTACKS)
def test_increases_its_own_loss_over_the_start(name):
    student, teacher = mlp(0).eval(), mlp(1).eval()
    x, y = batch()
    opts = dict(eps=0.3, step_size=0.05, steps=10)
    start = run_seeded(name, student, teacher, x, y, seed=5, **{**opts, "steps": 0})
    x_adv = run_seeded(name, student, teacher, x, y, seed=5, **opts)
    assert not torch.equal(start, x_adv)
    loss_start = OWN_LOSS[name](student, teacher, x, start, y)
    loss_adv = OWN_LOSS[name](student, teacher, x, x_adv, y)
    # A tiny random net moves little: ask for a clear relative gain (observed: +8% to +10⁵×).
    assert loss_adv > 1.05 * loss_start + 1e-6, (loss_start, loss_adv)


@pytest.mark.parametrize("name", ATTACKS)
def test_zero_steps_without_random_start_returns_x(name):
    student, teacher = mlp(0).eval(), mlp(1).eval()
    x, y = batch()
    x_adv = call(build(name, student, teacher, steps=0, random_start=False), x, y, teacher)
    assert torch.equal(x_adv, x)


@pytest.mark.parametrize("name", ATTACKS)
def test_random_start_is_near_x(name):
    """steps = 0 returns the start: inside the ball and the box, and not x itself."""
    student, teacher = mlp(0).eval(), mlp(1).eval()
    x, y = batch()
    start = run_seeded(name, student, teacher, x, y, seed=3, steps=0)
    assert 0 < (start - x).abs().max().item() <= 8 / 255 + 1e-12
    assert start.min().item() >= 0 and start.max().item() <= 1


@pytest.mark.parametrize("name", ATTACKS)
def test_one_step_is_the_sign_of_the_analytic_gradient(name):
    student, teacher = linear(0).eval(), linear(1).eval()
    W, b = (p.detach().cpu().numpy() for p in student[1].parameters())
    A, c = (p.detach().cpu().numpy() for p in teacher[1].parameters())
    x, y = batch()
    eps, eta = 0.1, 0.03
    # the start is where the first input gradient is taken: the KL attacks' x + 0.001·N(0, I) is not
    # clamped (spec), so it is read off the student's first differentiated input, not from steps = 0
    seen = []
    hook = student.register_forward_pre_hook(
        lambda m, args: seen.append(args[0].detach().clone()) if args[0].requires_grad else None)
    x_adv = run_seeded(name, student, teacher, x, y, seed=7, eps=eps, step_size=eta, steps=1)
    hook.remove()
    start = seen[0]

    xf, zf = x.reshape(B, -1).cpu().numpy(), start.reshape(B, -1).cpu().numpy()
    grad = own_loss_gradient(name, W, b, A, c, xf, zf, y.cpu().numpy())
    assert np.abs(grad).min() > 1e-12  # no sign ties (float64 errors are ~1e-17 here)
    expected = np.clip(np.clip(zf + eta * np.sign(grad), xf - eps, xf + eps), 0.0, 1.0)
    np.testing.assert_allclose(x_adv.reshape(B, -1).cpu().numpy(), expected, rtol=0, atol=1e-12)


def test_one_step_oracle_gradient_matches_finite_differences():
    """Checks the hand-derived gradients above (the oracle of the previous test) numerically."""
    student, teacher = linear(0).eval(), linear(1).eval()
    W, b = (p.detach().cpu().numpy() for p in student[1].parameters())
    A, c = (p.detach().cpu().numpy() for p in teacher[1].parameters())
    x, y = batch()
    z = (x + 0.01 * torch.randn_like(x)).clamp(0, 1)
    xf, zf = x.reshape(B, -1).cpu().numpy(), z.reshape(B, -1).cpu().numpy()
    h = 1e-6
    for name in OWN_LOSS:
        grad = own_loss_gradient(name, W, b, A, c, xf, zf, y.cpu().numpy())
        for i, j in [(0, 0), (3, 5), (7, 15)]:
            zp, zm = zf.copy(), zf.copy()
            zp[i, j] += h
            zm[i, j] -= h
            f = lambda zz: OWN_LOSS[name](student, teacher, x,  # noqa: E731
                                          torch.from_numpy(zz).reshape(B, *SHAPE).to(DEVICE), y)
            assert grad[i, j] == pytest.approx((f(zp) - f(zm)) / (2 * h), rel=1e-5, abs=1e-9), name


def test_rslad_computes_teacher_logits_itself_when_not_given():
    student, teacher = mlp(0).eval(), mlp(1).eval()
    x, y = batch()
    torch.manual_seed(11)
    given = call(build("rslad", student, teacher, steps=3), x, y, teacher)
    torch.manual_seed(11)
    computed = call(build("rslad", student, teacher, steps=3), x, y, teacher, pass_teacher_logits=False)
    assert torch.equal(given, computed)


def test_rslad_uses_the_given_teacher_logits():
    """T(x) passed at call time is the target: a different T(x) gives a different x_adv."""
    student = mlp(0).eval()
    x, y = batch()
    attack = build("rslad", student, None, steps=3)
    torch.manual_seed(2)
    a = attack(x, y, teacher_logits=torch.zeros(B, C, dtype=torch.float64, device=DEVICE))
    torch.manual_seed(2)
    b = attack(x, y, teacher_logits=torch.eye(C, dtype=torch.float64, device=DEVICE)[y] * 5)
    assert not torch.equal(a, b)


def test_teacher_attacks_without_a_teacher_are_user_errors():
    x, y = batch()
    with pytest.raises(IgdmKitError, match="adaad"):
        build("adaad", mlp(0), None)
    with pytest.raises(IgdmKitError, match="rslad"):
        build("rslad", mlp(0), None)(x, y)
