"""The spec's "Reference behaviours": each option, switched on, gives the reference code's number.

Oracles are hand-worked cases and the references' own formulas restated independently: ``nn.KLDivLoss()``'s
element-wise mean is Σ/(B·C), so batchmean / C; KL_τ = τ²·KL(·/τ ‖ ·/τ) summed over classes by float64 loops
(``oracles.np_kl``); the unclamped start x + 0.001·n leaves [0, 1] exactly where x is within 0.001·|n| of
0 or 1 with n pointing out of the box; the ARD + IGDM reference runs 10 + 3 student forwards.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import RECIPES, loadable_recipes
from oracles import np_kl
from torch import nn

from igdm_kit import _recipe as R
from igdm_kit._plugins.manager import registry
from igdm_kit._training.loss import compute_loss
from igdm_kit._training.passes import count_passes
from igdm_kit._training.step import Step
from igdm_kit.errors import IgdmKitError, RecipeError
from igdm_kit.losses import kl_div

B, C = 4, 5


def linear(seed: int, d: int = 12, c: int = C) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, c)).double()


def logits(seed: int, b: int = B, c: int = C) -> torch.Tensor:
    return torch.randn(b, c, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2


# -- KL reductions ---------------------------------------------------------------------------------------

def test_mean_kl_of_a_hand_worked_case():
    """p = (1/4, 3/4) against q = (1/2, 1/2): KL = ¼·ln ½ + ¾·ln 3/2; mean over B·C = 2·2 entries."""
    target = torch.tensor([[0.0, math.log(3.0)]] * 2, dtype=torch.float64)
    pred = torch.zeros(2, 2, dtype=torch.float64)
    kl = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert kl_div(target, pred).item() == pytest.approx(kl, rel=1e-14)              # batchmean: Σ / B
    assert kl_div(target, pred, reduction="mean").item() == pytest.approx(kl / 2, rel=1e-14)  # Σ / (B·C)


@pytest.mark.parametrize("c", [2, 10, 100])
@pytest.mark.parametrize("tau", [1.0, 30.0])
def test_mean_kl_is_batchmean_over_classes(c, tau):
    t, s = logits(0, c=c), logits(1, c=c)
    assert kl_div(t, s, tau, reduction="mean").item() == pytest.approx(np_kl(t, s, tau) / c, rel=1e-10)


def test_unknown_kl_reduction_is_a_one_line_error():
    with pytest.raises(IgdmKitError, match="unknown reduction 'sum'") as exc:
        kl_div(logits(0), logits(1), reduction="sum")
    assert "\n" not in str(exc.value)


def make_step(student, teacher, seed=0, *, cache=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, 12, generator=g, dtype=torch.float64)
    x_adv = (x + 0.05 * torch.randn(B, 12, generator=g, dtype=torch.float64)).clamp(0, 1)
    y = torch.randint(0, C, (B,), generator=g)
    step = Step(student, teacher, x, y, epoch=200, epochs=200, cache=cache)
    step.set_input("x_adv", x_adv)
    return step


def method(name, **options):
    M = registry("method").get(name)
    return M(M.Options(**options))


@pytest.mark.parametrize("name", ["ard", "adaad", "adaiad"])
def test_kl_reduction_mean_gives_the_references_terms(name):
    """Every distillation KL term of the method with ``kl_reduction = "mean"`` is its batchmean value / C,
    each checked against the float64 oracle; AdaIAD's introspection term is not a KLDivLoss and stays."""
    student, teacher = linear(0), linear(1)
    opts = {"lam": 0.7} if name != "ard" else {"alpha_ard": 0.6}
    step = make_step(student, teacher)
    terms = method(name, kl_reduction="mean", **opts).loss(step)
    base = method(name, **opts).loss(step)
    with torch.no_grad():
        s = {k: student(step.input(k)) for k in ("x", "x_adv")}
        t = {k: teacher(step.input(k)) for k in ("x", "x_adv")}
    if name == "ard":
        expected = {"adv_kl": 0.6 * np_kl(t["x"], s["x_adv"]) / C}
    else:
        expected = {"adv_kl": 0.7 * np_kl(t["x_adv"], s["x_adv"]) / C,
                    "nat_kl": 0.3 * np_kl(t["x"], s["x"]) / C}
    for k, v in expected.items():
        assert terms[k].item() == pytest.approx(v, rel=1e-10), k
    for k in set(terms) - set(expected):  # nat_ce (ARD), introspect_kl (AdaIAD): untouched
        torch.testing.assert_close(terms[k], base[k], rtol=0, atol=0)


def test_kl_reduction_is_validated_with_its_path():
    with pytest.raises(RecipeError) as exc:
        R.load(RECIPES / "quickstart.toml", ["method.kl_reduction='sum'"])
    assert "method.kl_reduction" in str(exc.value) and "\n" not in str(exc.value)


# -- AdaIAD's temperature ----------------------------------------------------------------------------------

def test_adaiad_temperature_is_kl_tau_on_both_adaad_terms():
    student, teacher = linear(0), linear(1)
    step = make_step(student, teacher)
    tau = 30.0
    terms = method("adaiad", lam=0.7, temperature=tau).loss(step)
    plain = method("adaiad", lam=0.7).loss(step)
    with torch.no_grad():
        s = {k: student(step.input(k)) for k in ("x", "x_adv")}
        t = {k: teacher(step.input(k)) for k in ("x", "x_adv")}
    assert terms["adv_kl"].item() == pytest.approx(0.7 * np_kl(t["x_adv"], s["x_adv"], tau), rel=1e-10)
    assert terms["nat_kl"].item() == pytest.approx(0.3 * np_kl(t["x"], s["x"], tau), rel=1e-10)
    assert terms["adv_kl"].item() != pytest.approx(plain["adv_kl"].item(), rel=1e-3)  # τ does change it
    torch.testing.assert_close(terms["introspect_kl"], plain["introspect_kl"], rtol=0, atol=0)


def test_adaiad_at_tau_one_is_adaad_plus_introspection():
    student, teacher = linear(0), linear(1)
    step = make_step(student, teacher)
    ada, adai = method("adaad", lam=0.7).loss(step), method("adaiad", lam=0.7, temperature=1.0).loss(step)
    for k in ("adv_kl", "nat_kl"):
        torch.testing.assert_close(adai[k], ada[k], rtol=0, atol=0)


# -- random starts -------------------------------------------------------------------------------------------

def saturated_batch():
    """Pixels on and just inside the box's faces, where 0.001·n can leave [0, 1], and ordinary ones."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(B, 1, 12, generator=g, dtype=torch.float64)
    x[:, :, 0], x[:, :, 1] = 0.0, 1.0
    x[:, :, 2], x[:, :, 3] = 0.0004, 0.9996
    return x, torch.randint(0, C, (B,), generator=g)


def first_gradient_point(name, *, seed, **options):
    """The point of the attack's first input gradient (the student's first differentiated input)."""
    student, teacher = linear(0), linear(1).eval()
    x, y = saturated_batch()
    seen = []
    hook = student.register_forward_pre_hook(
        lambda m, args: seen.append(args[0].detach().clone()) if args[0].requires_grad else None)
    A = registry("attack").get(name)
    attack = A(student, options=A.Options(eps=0.1, step_size=0.02, steps=1, **options), teacher=teacher)
    torch.manual_seed(seed)
    kwargs = {"teacher_logits": teacher(x).detach()} if attack.needs_teacher_clean_logits else {}
    x_adv = attack(x, y, **kwargs)
    hook.remove()
    return x, seen[0], x_adv


@pytest.mark.parametrize("name", ["trades", "rslad", "adaad"])
def test_kl_attacks_start_unclamped_and_differ_exactly_near_the_faces(name):
    x, start, x_adv = first_gradient_point(name, seed=11)
    _, clamped, _ = first_gradient_point(name, seed=11, clamp_start=True)
    torch.manual_seed(11)
    n = torch.randn_like(x)                       # the references' draw: x + 0.001·N(0, I)
    torch.testing.assert_close(start, x + 0.001 * n, rtol=0, atol=0)
    outside = (x + 0.001 * n < 0) | (x + 0.001 * n > 1)  # within 0.001·|n| of 0 or 1, pointing out
    assert outside.any() and not outside.all()
    assert torch.equal(start != clamped, outside)
    torch.testing.assert_close(clamped[outside], (x + 0.001 * n).clamp(0, 1)[outside], rtol=0, atol=0)
    assert x_adv.min() >= 0 and x_adv.max() <= 1 and (x_adv - x).abs().max() <= 0.1 + 1e-12


def test_kl_attack_with_zero_steps_returns_a_valid_point():
    A = registry("attack").get("trades")
    x, y = saturated_batch()
    attack = A(linear(0), options=A.Options(eps=0.1, steps=0))
    torch.manual_seed(3)
    z = attack(x, y)
    torch.manual_seed(3)
    expected = (x + 0.001 * torch.randn_like(x)).clamp(0, 1)  # 0.001·|n| < ε here: only the box acts
    torch.testing.assert_close(z, expected, rtol=0, atol=0)


@pytest.mark.parametrize("bn_mode", ["eval", "train"])
def test_pgd_unclamped_start_as_the_original_ard_and_iad(bn_mode):
    x, start, x_adv = first_gradient_point("pgd", seed=5, clamp_start=False, bn_mode=bn_mode)
    _, clamped, _ = first_gradient_point("pgd", seed=5, bn_mode=bn_mode)  # default: torchattacks' clamp
    torch.manual_seed(5)
    u = torch.empty_like(x).uniform_(-0.1, 0.1)  # the same draw as torchattacks
    torch.testing.assert_close(start, x + u, rtol=0, atol=0)
    torch.testing.assert_close(clamped, (x + u).clamp(0, 1), rtol=0, atol=0)
    outside = (x + u < 0) | (x + u > 1)
    assert outside.any() and torch.equal(start != clamped, outside)
    assert x_adv.min() >= 0 and x_adv.max() <= 1 and (x_adv - x).abs().max() <= 0.1 + 1e-12


def test_pgd_unclamped_start_takes_the_sign_step_of_ce_there():
    """One step from the unclamped start: Proj(z₀ + η·sign(∇ CE)) with the gradient of the linear model
    by hand, Wᵀ(softmax(W z₀ + b) − onehot(y))/B."""
    x, start, x_adv = first_gradient_point("pgd", seed=5, clamp_start=False)
    W, b = (p.detach() for p in linear(0)[1].parameters())
    _, y = saturated_batch()
    z = start.reshape(B, -1)
    q = torch.softmax(z @ W.T + b, dim=1)
    grad = (q - torch.nn.functional.one_hot(y, C)) @ W / B
    assert grad.abs().min() > 1e-12  # no sign ties
    expected = torch.min(torch.max(z + 0.02 * grad.sign(), x.reshape(B, -1) - 0.1), x.reshape(B, -1) + 0.1)
    torch.testing.assert_close(x_adv.reshape(B, -1), expected.clamp(0, 1), rtol=0, atol=1e-15)


# -- reference passes ---------------------------------------------------------------------------------------

def small_cnn(seed):
    from igdm_kit.factories import create_model

    torch.manual_seed(seed)
    return create_model("small-cnn", num_classes=C, in_channels=3, image_size=8, width=4).double()


def ard_igdm_step(beta=1.0, *, cache=False):
    student, teacher = small_cnn(0), small_cnn(1).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(2)
    x = torch.rand(B, 3, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (B,), generator=g)
    Mod, A = registry("module").get("igdm"), registry("attack").get("pgd")
    module = Mod(Mod.Options(alpha=1.0, beta=beta))
    attack = A(student, options=A.Options(steps=10), teacher=teacher)
    inputs = []
    hook = student.register_forward_pre_hook(lambda m, args: inputs.append(args[0]) if m.training else None)
    torch.manual_seed(0)
    with count_passes(student=student, teacher=teacher) as counter:
        res = compute_loss(student, teacher, method("ard"), module, attack, x, y, epoch=1, epochs=1,
                           cache=cache)
        res.loss.backward()
    hook.remove()
    return res, counter.snapshot(), inputs


def test_ard_igdm_reference_passes_are_the_references_13_in_its_order():
    """10 attack forwards, then S(x⁺) (= S(x_adv), the KD term's too), S(x) at weight 0, S(x⁻)."""
    res, passes, inputs = ard_igdm_step()
    assert passes["student"]["forwards"] == 13
    assert passes["teacher"]["forwards"] == 3  # T(x), T(x⁺), T(x⁻) separately
    x, x_adv = res.step.input("x"), res.step.input("x_adv")
    assert [t is v for t, v in zip(inputs, (x_adv, x, res.step.input("x_minus")), strict=True)] == [True] * 3
    torch.testing.assert_close(res.step.input("x_minus"), 2 * x - x_adv, rtol=0, atol=1e-15)


def test_ard_igdm_reference_passes_keep_the_default_numbers():
    ref, _, _ = ard_igdm_step(cache=False)
    default, passes, _ = ard_igdm_step(cache=True)
    assert passes["student"]["forwards"] == 12  # S(x) not run at all by default (weight 0)
    for k in default.terms:
        torch.testing.assert_close(ref.terms[k], default.terms[k], rtol=1e-12, atol=1e-14)


def test_ard_with_beta_not_one_keeps_its_kd_term_on_x_adv():
    """At β ≠ 1, x⁺ ≠ x_adv: the KD term stays the spec's KL(T(x) ‖ S(x_adv)), so 14 forwards."""
    res, passes, inputs = ard_igdm_step(beta=0.5)
    assert passes["student"]["forwards"] == 14
    assert res.step.input("x_plus") is not res.step.input("x_adv")
    assert sum(t is res.step.input("x_adv") for t in inputs) == 1  # S(x_adv) for the KD term only


# -- RSLAD's ramp and the documentation ------------------------------------------------------------------

def _leaves():
    return [p for p in sorted(RECIPES.rglob("*.toml")) if not p.name.startswith("_")]


def test_rslad_igdm_recipes_ramp_over_300_epochs_as_the_reference():
    """The IGDM reference's RSLAD script divides the epoch by 300: the CIFAR RSLAD recipes (300 epochs)
    reach it with the default e/E, and no recipe sets the 200 of the ARD/AdaAD scripts for RSLAD."""
    found = 0
    for path, r in loadable_recipes(_leaves()):
        if r.model.method.name != "rslad" or r.model.module is None or r.model.module.name != "igdm":
            continue
        ramp = r.components["module"].ramp_epochs
        assert ramp != 200, path
        if r.model.data.name in ("cifar10", "cifar100"):
            found += 1
            assert (ramp or r.model.train.epochs) == 300, path
    assert found >= 7  # Tables 2, 3, 10, 11


def test_readme_lists_every_reference_behaviour_with_its_key():
    text = (RECIPES / "README.md").read_text(encoding="utf-8")
    assert "## Reproducing a reference run" in text
    section = text.split("## Reproducing a reference run", 1)[1].split("\n## ", 1)[0]
    for key in ("kl_reduction", "temperature", "clamp_start", "bn_mode", "reference_passes", "ramp_epochs",
                "2/225", "210, 258, 285", "2e-4", "1e-5", "β"):
        assert key in section, key
    rslad = [line for line in section.splitlines() if "RSLAD" in line and "ramp" in line]
    assert rslad and all("300" in line for line in rslad)  # the reference's RSLAD ramp is e/300
