"""The recent methods' contracts (R3 per-sample terms, R7 teacher transforms on copies) and DGAD.

Oracles: float64 numpy loops written from ``shared/spec/recent-methods/`` (softmax, KL, the official
normalizations), never the plugin's code; student gradients against central differences of the oracle.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import pytest
import torch
from oracles import np_kl_row, np_softmax
from torch import nn

from igdm_kit._training.loss import compute_loss, module_term
from igdm_kit._training.passes import count_passes
from igdm_kit._training.step import Step
from igdm_kit.errors import IgdmKitError
from igdm_kit.factories import create_method, create_module
from igdm_kit.interfaces import GradientModule, Method, SampleTerm
from igdm_kit.losses import kl_per_sample, reduce_batch, reduce_term, swap_classes

B, SHAPE, C = 8, (3, 2, 2), 4
D = int(np.prod(SHAPE))

#: the largest relative error seen against an oracle, per test family (printed with -s; see the report)
WORST: dict[str, float] = {}


def note(family: str, got: float, want: float) -> None:
    WORST[family] = max(WORST.get(family, 0.0), abs(got - want) / max(abs(want), 1e-300))


def linear(seed: int, scale: float = 1.0) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Flatten(), nn.Linear(D, C)).double()
    with torch.no_grad():
        m[1].weight.mul_(scale)
    return m


def data(seed: int = 0, n: int = B):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *SHAPE, generator=g, dtype=torch.float64)
    x_adv = (x + 0.5 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    return x, x_adv, torch.randint(0, C, (n,), generator=g)


def np_logits(model, x) -> np.ndarray:
    W, b = (p.detach().numpy() for p in model[1].parameters())
    xf = x.reshape(len(x), -1).numpy()
    return np.array([W @ xf[i] + b for i in range(len(xf))])


def step_for(method, student, teacher, x, x_adv, y, epoch=1, epochs=10):
    step = Step(student, teacher, x, y, epoch=epoch, epochs=epochs,
                teacher_inputs=method.teacher_inputs(epoch, epochs))
    step.set_input("x_adv", x_adv)
    return step


def total(terms) -> torch.Tensor:
    return sum(reduce_term(t) if isinstance(t, SampleTerm) else t for t in terms.values())


# -- R3: per-sample losses ------------------------------------------------------------------------------
@pytest.mark.parametrize("tau", [1.0, 3.0])
@pytest.mark.parametrize("classes", ["sum", "mean"])
def test_kl_per_sample_is_each_rows_kl(tau, classes):
    a, b = torch.randn(5, C, dtype=torch.float64), torch.randn(5, C, dtype=torch.float64)
    got = kl_per_sample(a, b, temperature=tau, classes=classes)
    for i in range(5):
        want = tau * tau * np_kl_row(a[i], b[i], tau) / (C if classes == "mean" else 1)
        assert got[i].item() == pytest.approx(want, rel=1e-12)
        note("kl_per_sample", got[i].item(), want)


def test_reduce_batch_by_hand():
    v, w = torch.tensor([1.0, 2.0, 4.0]), torch.tensor([0.5, 0.0, 2.0])
    assert reduce_batch(v).item() == pytest.approx(7 / 3)
    assert reduce_batch(v, w).item() == pytest.approx(8.5 / 3)
    assert reduce_batch(v, w, reduction="sum").item() == pytest.approx(8.5)
    assert reduce_batch(v, w, reduction="nominal", nominal_batch=4).item() == pytest.approx(8.5 / 4)
    assert reduce_term(SampleTerm(v, w, "nominal", 4)).item() == pytest.approx(8.5 / 4)
    with pytest.raises(IgdmKitError, match="needs a positive nominal_batch"):
        reduce_batch(v, reduction="nominal")
    with pytest.raises(IgdmKitError, match="unknown reduction 'max'"):
        reduce_batch(v, reduction="max")
    with pytest.raises(IgdmKitError, match="per-sample vectors"):
        reduce_batch(v, torch.ones(2))


MODULES = [("igdm", {}), ("igdm", {"distance": "l1"}), ("igdm", {"distance": "l2"}),
           ("igdm", {"beta": 0.5, "gamma": 2.0}), ("direct", {}), ("direct", {"distance": "l1"}),
           ("direct", {"distance": "cosine"}), ("igdm-trades-like", {}), ("trades-reg", {})]


@pytest.mark.parametrize(("name", "opts"), MODULES)
def test_every_builtin_modules_per_sample_loss_averages_to_its_loss(name, opts):
    """Property: mean over the batch of ``loss_per_sample`` = ``loss`` (so a method weighting by 1 changes
    nothing), for every built-in module."""
    student, teacher = linear(0), linear(1, 3.0)
    x, x_adv, y = data()
    module = create_module(name, alpha=1.0, **opts)
    assert module.per_sample
    step = Step(student, teacher, x, y, epoch=1, epochs=1, teacher_inputs=module.teacher_inputs())
    step.set_input("x_adv", x_adv)
    module.prepare(step)
    per = module.loss_per_sample(step)
    assert per.shape == (B,)
    assert per.mean().item() == pytest.approx(module.loss(step).item(), rel=1e-12)


class WeightedKD(Method):
    """A third-party method on the public contract: per-sample weights on its own term and the module's."""

    needs_teacher = True
    weights_module = True

    def teacher_inputs(self, epoch, epochs):
        return {"x_adv"}

    def weights(self, ctx):
        return torch.linspace(0.0, 2.0, len(ctx.y), dtype=ctx.x.dtype)

    def loss(self, ctx):
        return {"kd": SampleTerm(kl_per_sample(ctx.teacher("x_adv"), ctx.student("x_adv")), self.weights(ctx))}

    def module_weights(self, ctx):
        return self.weights(ctx)


class FixedAttack:
    needs_teacher_clean_logits = False
    outputs = frozenset()

    def __init__(self, x_adv):
        self.x_adv = x_adv

    def __call__(self, x, y):
        return self.x_adv


def test_a_method_weights_each_sample_of_the_igdm_term():
    """L = (1/B) Σ w_i KL_i(T(x_adv) ‖ S(x_adv)) + α·(e/E)·(1/B) Σ w_i KL_i(ΔT_i ‖ ΔS_i), oracle by loops."""
    student, teacher = linear(0), linear(1, 3.0)
    x, x_adv, y = data()
    method, module = WeightedKD(WeightedKD.Options()), create_module("igdm", alpha=2.0)
    res = compute_loss(student, teacher, method, module, FixedAttack(x_adv), x, y, epoch=3, epochs=4)
    w = np.linspace(0.0, 2.0, B)
    Sa, Sm, Ta, Tm = (np_logits(student, x_adv), np_logits(student, 2 * x - x_adv),
                      np_logits(teacher, x_adv), np_logits(teacher, 2 * x - x_adv))
    kd = sum(w[i] * np_kl_row(Ta[i], Sa[i]) for i in range(B)) / B
    mod = 2.0 * 3 / 4 * sum(w[i] * np_kl_row(Ta[i] - Tm[i], Sa[i] - Sm[i]) for i in range(B)) / B
    assert res.terms["kd"].item() == pytest.approx(kd, rel=1e-12)
    assert res.terms["module"].item() == pytest.approx(mod, rel=1e-12)
    note("weighted module term", res.terms["module"].item(), mod)


def test_weights_of_one_leave_the_module_term_as_it_was():
    student, teacher = linear(0), linear(1, 3.0)
    x, x_adv, y = data()
    module = create_module("igdm", alpha=1.0)

    class Ones(WeightedKD):
        def weights(self, ctx):
            return torch.ones(len(ctx.y), dtype=ctx.x.dtype)

    plain = compute_loss(student, teacher, create_method("adaad"), module, FixedAttack(x_adv), x, y,
                         epoch=1, epochs=1)
    weighted = compute_loss(student, teacher, Ones(Ones.Options()), module, FixedAttack(x_adv), x, y,
                            epoch=1, epochs=1)
    assert weighted.terms["module"].item() == pytest.approx(plain.terms["module"].item(), rel=1e-12)
    assert weighted.terms["kd"].item() == pytest.approx(plain.terms["adv_kl"].item(), rel=1e-12)


def test_a_module_without_per_sample_loss_is_refused_when_a_method_weights_it():
    class ScalarOnly(GradientModule):
        def loss(self, ctx):
            return ctx.student("x").sum()

    student, teacher = linear(0), linear(1)
    x, x_adv, y = data()
    step = Step(student, teacher, x, y, epoch=1, epochs=1)
    step.set_input("x_adv", x_adv)
    with pytest.raises(IgdmKitError, match="has no per-sample loss"):
        module_term(WeightedKD(WeightedKD.Options()), ScalarOnly(ScalarOnly.Options()), step)


# -- R7: teacher transforms on copies --------------------------------------------------------------------
def test_swap_classes_by_hand_and_on_a_copy():
    t = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    got = swap_classes(t, torch.tensor([0, 1]), torch.tensor([2, 2]), where=torch.tensor([True, False]))
    assert got.tolist() == [[3.0, 2.0, 1.0], [4.0, 5.0, 6.0]]
    assert t.tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    assert swap_classes(t, torch.tensor([0, 0]), torch.tensor([1, 2])).tolist() == [[2.0, 1.0, 3.0],
                                                                                    [6.0, 5.0, 4.0]]


class InPlace(Method):
    needs_teacher = True

    def teacher_inputs(self, epoch, epochs):
        return {"x", "x_adv"}

    def loss(self, ctx):
        ctx.teacher("x_adv").mul_(2.0)  # forbidden: the module may reuse T(x_adv)
        return {"kd": ctx.student("x_adv").sum()}


def test_changing_the_cached_teacher_logits_in_place_is_an_error():
    student, teacher = linear(0), linear(1)
    x, x_adv, y = data()
    with pytest.raises(IgdmKitError, match=r"T\(x_adv\) were changed in place"):
        compute_loss(student, teacher, InPlace(InPlace.Options()), None, FixedAttack(x_adv), x, y,
                     epoch=1, epochs=1)


def test_teacher_transformed_gets_a_copy_and_y():
    student, teacher = linear(0), linear(1)
    x, _, y = data()
    step = Step(student, teacher, x, y, epoch=1, epochs=1, teacher_inputs=["x"])
    before = step.teacher("x").clone()

    def shift(t, labels):
        assert labels is y
        return t.add_(1.0)  # in place, on the copy

    assert torch.equal(step.teacher_transformed("x", shift), before + 1.0)
    assert torch.equal(step.teacher("x"), before)
    step.check_teacher_unchanged()


# -- DGAD -------------------------------------------------------------------------------------------------
def np_swap(row, a, b):
    row = list(row)
    row[a], row[b] = row[b], row[a]
    return row


def dgad_oracle(Sx, Sa, Tx, Ta, y, gamma=1.0, nominal=None, mobilenet=False) -> float:
    """dgad.md, "Outer loss", literally: the official (M/b)·L_clean + ((b − M)/b)·L_adv + γ·L_PCR."""
    n = len(y)
    b = nominal or n
    lam = [int(int(np.argmax(Tx[i])) != int(y[i])) for i in range(n)]
    m = sum(lam)
    clean = 0.0
    for i in range(n):
        if lam[i]:
            t = np_swap(Tx[i], int(y[i]), int(np.argmax(Tx[i])))  # ELS (clean): y ↔ argmax_j
            clean += np_kl_row(t, Sx[i])
    clean /= m + 1e-10
    adv = 0.0
    for i in range(n):
        if not lam[i]:
            t = list(Ta[i])
            others = [j for j in range(C) if j != int(y[i])]
            j_star = max(others, key=lambda j: t[j])
            if t[int(y[i])] < t[j_star]:  # ELS (adv): the teacher is fooled at x_adv
                t = np_swap(t, int(y[i]), j_star)
            adv += np_kl_row(t, Sa[i])
    adv = adv / (n - m) if n > m else 0.0  # the official code divides by zero here (a documented quirk)
    pcr = sum((np_softmax(Sa[i])[c] - np_softmax(Sx[i])[c]) ** 2 for i in range(n) for c in range(C)) / (n * C)
    if mobilenet:
        return 0.5 * ((m / b) * clean + (b - m) / b) * adv + gamma * pcr
    return (m / b) * clean + ((b - m) / b) * adv + gamma * pcr


DGAD_CASES = [  # (options, teacher scale, data seed)
    ({}, 3.0, 0),
    ({"gamma": 0.0}, 3.0, 0),
    ({"gamma": 2.5}, 3.0, 1),
    ({"nominal_batch": 12}, 3.0, 0),
    ({"mobilenet_parenthesization": True}, 3.0, 0),
    ({"mobilenet_parenthesization": True, "nominal_batch": 12}, 3.0, 4),
]


def dgad_inputs(scale, seed):
    student, teacher = linear(0), linear(5, scale)
    x, x_adv, y = data(seed)
    return student, teacher, x, x_adv, y


def test_the_dgad_cases_cover_both_partitions_and_both_swaps():
    for _, scale, seed in DGAD_CASES:
        _, teacher, x, x_adv, y = dgad_inputs(scale, seed)
        Tx, Ta = np_logits(teacher, x), np_logits(teacher, x_adv)
        wrong_clean = Tx.argmax(1) != y.numpy()
        assert 0 < wrong_clean.sum() < B
        fooled = np.array([Ta[i][y[i]] < max(Ta[i][j] for j in range(C) if j != y[i]) for i in range(B)])
        assert (fooled & ~wrong_clean).any() and (~fooled & ~wrong_clean).any()


@pytest.mark.parametrize(("opts", "scale", "seed"), DGAD_CASES)
def test_dgad_loss_equals_the_spec_formula(opts, scale, seed):
    student, teacher, x, x_adv, y = dgad_inputs(scale, seed)
    method = create_method("dgad", **opts)
    got = total(method.loss(step_for(method, student, teacher, x, x_adv, y))).item()
    want = dgad_oracle(np_logits(student, x), np_logits(student, x_adv), np_logits(teacher, x),
                       np_logits(teacher, x_adv), y.numpy(), gamma=opts.get("gamma", 1.0),
                       nominal=opts.get("nominal_batch"), mobilenet=opts.get("mobilenet_parenthesization", False))
    assert got == pytest.approx(want, rel=1e-9)
    note("dgad loss", got, want)


@pytest.mark.parametrize(("opts", "scale", "seed"), DGAD_CASES)
def test_dgad_student_gradient_matches_finite_differences_of_the_oracle(opts, scale, seed):
    student, teacher, x, x_adv, y = dgad_inputs(scale, seed)
    for p in teacher.parameters():
        p.requires_grad_(True)  # a gradient through the teacher would show up in .grad
    method = create_method("dgad", **opts)
    total(method.loss(step_for(method, student, teacher, x, x_adv, y))).backward()
    assert all(p.grad is None for p in teacher.parameters())
    Tx, Ta = np_logits(teacher, x), np_logits(teacher, x_adv)
    kw = {"gamma": opts.get("gamma", 1.0), "nominal": opts.get("nominal_batch"),
          "mobilenet": opts.get("mobilenet_parenthesization", False)}
    h = 1e-6
    for param, index in [(0, (0, 0)), (0, (1, 5)), (0, (3, 11)), (1, (2,))]:
        grad = list(student.parameters())[param].grad[index].item()
        values = []
        for sign in (1, -1):
            probe = linear(0)
            with torch.no_grad():
                list(probe.parameters())[param][index] += sign * h
            values.append(dgad_oracle(np_logits(probe, x), np_logits(probe, x_adv), Tx, Ta, y.numpy(), **kw))
        fd = (values[0] - values[1]) / (2 * h)
        assert grad == pytest.approx(fd, rel=1e-6, abs=1e-9)
        note("dgad gradient", grad, fd)


def test_dgad_when_the_teacher_is_always_or_never_right():
    """M = B: the adversarial part is empty (0, where the official code divides by zero); M = 0: only it."""
    student, teacher = linear(0), linear(5, 3.0)
    x, x_adv, _ = data(0)
    Tx = np_logits(teacher, x)
    for y in (torch.tensor([int((r.argmax() + 1) % C) for r in Tx]), torch.tensor(Tx.argmax(1))):
        method = create_method("dgad")
        terms = method.loss(step_for(method, student, teacher, x, x_adv, y))
        want = dgad_oracle(np_logits(student, x), np_logits(student, x_adv), Tx, np_logits(teacher, x_adv),
                           y.numpy())
        assert total(terms).item() == pytest.approx(want, rel=1e-9)
        assert ("adv_kl" in terms) == bool((torch.tensor(Tx.argmax(1)) == y).any())


def test_dgad_passes_and_the_cached_teacher_logits_stay_as_computed():
    """Two student forwards (S(x), S(x_adv)), one batched teacher forward of 2B images; with IGDM the
    label swaps never reach the T(x_adv) the module reuses."""
    student, teacher = linear(0), linear(5, 3.0)
    x, x_adv, y = data(0)
    method, module = create_method("dgad"), create_module("igdm", alpha=1.0)
    with count_passes(student=student, teacher=teacher) as counter:
        res = compute_loss(student, teacher, method, module, FixedAttack(x_adv), x, y, epoch=1, epochs=1)
    assert counter.forwards["student"] == 3 and counter.forwards["teacher"] == 1  # + S(x⁻); T batched
    assert counter.images["teacher"] == 3 * B
    with torch.no_grad():
        assert torch.equal(res.step.teacher("x_adv"), teacher(x_adv))
        assert torch.equal(res.step.teacher("x"), teacher(x))
    assert math.isfinite(res.loss.item()) and method.attack_name == "adaad"


def test_dgad_label_correction_is_a_copy_of_the_teacher_output():
    t = torch.tensor([[0.0, 2.0, 1.0], [3.0, 1.0, 2.0]])
    from igdm_kit_plugins.methods.dgad import correct_label

    assert correct_label(t, torch.tensor([2, 0])).tolist() == [[0.0, 1.0, 2.0], [3.0, 1.0, 2.0]]
    assert t.tolist() == [[0.0, 2.0, 1.0], [3.0, 1.0, 2.0]]


def test_dgad_trains_on_digits_well_above_chance(tmp_path, write_recipe):
    """A short real run through the engine: even from a random teacher, DGAD's label correction (the true
    class's logit swapped to the top) gives the student the labels, so it learns (chance is 10%)."""
    from conftest import DIGITS_PGDAT

    from igdm_kit import _recipe as R
    from igdm_kit._storage.checkpoint import save_model
    from igdm_kit._training.engine import run
    from igdm_kit.factories import create_model

    torch.manual_seed(3)
    teacher = tmp_path / "teacher.safetensors"
    net = create_model("small-cnn", num_classes=10, in_channels=1, image_size=8, width=8)
    with torch.no_grad():  # sharp random logits: the swapped true class then stands out
        [p for p in net.parameters() if p.dim() == 2][-1].mul_(300.0)
    save_model(teacher, net,
               {"model": "small-cnn", "model_options": {"width": 8}, "num_classes": 10, "in_channels": 1,
                "image_size": 8, "mean": None, "std": None})
    text = (DIGITS_PGDAT.replace('name = "pgd-at"', 'name = "dgad"').replace("epochs = 1", "epochs = 6")
            .replace("width = 8", "width = 16")
            + f'[teacher]\ncheckpoint = "{teacher}"\ncheck_accuracy = false\n')
    r = R.load(write_recipe(text), ["train.lr=0.05"])
    assert r.attack_name == "adaad"
    result = run(r, output_dir=tmp_path / "run")
    last = result.metrics[-1]
    assert {"clean_kl", "adv_kl", "pcr"} <= last.keys()
    assert last["test_clean_acc"] > 60.0, last


def test_a_recipe_pairing_a_weighting_method_with_a_scalar_module_is_refused(monkeypatch, write_recipe):
    import sys
    import types
    from importlib.metadata import EntryPoint

    from conftest import DIGITS_PGDAT

    from igdm_kit import _recipe as R
    from igdm_kit._plugins import manager as plugins
    from igdm_kit.errors import RecipeError
    from igdm_kit.hookspecs import hookimpl

    class ScalarOnly(GradientModule):
        needs_teacher = False

        def loss(self, ctx):
            return ctx.student("x").sum()

    mod = types.ModuleType("recent_methods_test_plugin")
    mod.register_methods = hookimpl(lambda register: register("tp-weighted", WeightedKD))
    mod.register_modules = hookimpl(lambda register: register("tp-scalar", ScalarOnly))
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    real = plugins.entry_points
    monkeypatch.setattr(plugins, "entry_points", lambda group: list(real(group=group)) + [
        EntryPoint(name="recent-test", value=mod.__name__, group=group)])
    plugins.reset()
    try:
        text = (DIGITS_PGDAT.replace('name = "pgd-at"', 'name = "tp-weighted"')
                + '[teacher]\ncheckpoint = "t.safetensors"\n[module]\nname = "tp-scalar"\nalpha = 1.0\n')
        with pytest.raises(RecipeError, match="weights each sample of the module's loss") as err:
            R.load(write_recipe(text))
        assert err.value.path == "module.name"
        R.load(write_recipe(text.replace('"tp-scalar"', '"igdm"')))  # a per-sample module is fine
    finally:
        plugins.reset()


# -- R6: the pgd attack's κ --------------------------------------------------------------------------------
def test_pgd_kappa_counts_the_correctly_classified_iterates():
    """Hand-worked: a student that always says class 0 is right at every iterate for y = 0 (κ = K) and at
    none for y = 1 (κ = 0); one whose answer flips along the attack's path counts only the iterates before."""
    from igdm_kit.factories import create_attack

    student = nn.Sequential(nn.Flatten(), nn.Linear(D, C)).double()
    with torch.no_grad():
        student[1].weight.zero_()
        student[1].bias.copy_(torch.tensor([5.0, 0.0, 0.0, 0.0], dtype=torch.float64))
    x = torch.rand(4, *SHAPE, dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 2])
    for clamp_start in (True, False):
        attack = create_attack("pgd", student, options={"steps": 7, "clamp_start": clamp_start})
        attack(x, y)
        assert attack.side_outputs()["kappa"].tolist() == [7, 0, 7, 0]
    assert "kappa" in attack.outputs


def test_a_method_reading_kappa_needs_an_attack_that_reports_it(write_recipe):
    from conftest import DIGITS_PGDAT

    from igdm_kit import _recipe as R
    from igdm_kit.errors import RecipeError

    text = (DIGITS_PGDAT.replace('name = "pgd-at"', 'name = "fair-ard"')
            + '[teacher]\ncheckpoint = "t.safetensors"\n')
    assert R.load(write_recipe(text)).attack_name == "pgd"
    with pytest.raises(RecipeError, match="per-sample kappa, which attack 'trades' does not report"):
        R.load(write_recipe(text.replace("[attack]", '[attack]\nname = "trades"')))


# -- R4/R5 and Fair-ARD ----------------------------------------------------------------------------------------
class Parts:
    """What MethodHooks reads of the run's parts: the real method, optimizer and (single-process) Dist."""

    def __init__(self, method, num_samples, num_classes):
        from igdm_kit._runtime.distributed import Dist

        self.method, self.dist, self.device = method, Dist(), torch.device("cpu")
        self.train = range(num_samples)  # only its length is read
        self.info = type("Info", (), {"num_classes": num_classes})()
        self.optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)


class Loop:
    """The FitState the hooks are given: the last step and its terms."""

    epochs = 3

    def __init__(self) -> None:
        self.last_step, self.step_terms = None, {}


def kappa_step(y, kappa):
    step = Step(linear(0), None, torch.zeros(len(y), *SHAPE, dtype=torch.float64), torch.tensor(y),
                epoch=1, epochs=3)
    step.set_attack_outputs({"kappa": torch.tensor(kappa)})
    return step


def test_fair_ard_class_weights_by_hand_over_two_steps_and_an_epoch_end():
    """C = 3, N = 6 (N/C = 2). Steps: y = (0, 1, 2) with κ = (10, 4, 5), then (0, 1, 2) with κ = (8, 10, 7):
    Σκ = (18, 14, 12), κ̄ = (9, 7, 6), w̃ = κ̄^−2 = (1/81, 1/49, 1/36) (+1e-5 inside), normalized
    3·w̃/Σw̃ = (0.61186, 1.01145, 1.37669), clipped to [5/6, 5/2] → (0.83333, 1.01145, 1.37669)."""
    from igdm_kit._training.method_state import MethodHooks

    method = create_method("fair-ard")
    hooks = MethodHooks(Parts(method, 6, 3))
    loop = Loop()
    hooks.on_fit_start(loop, 1, 0)
    hooks.on_epoch_start(loop, 1)
    assert method.weights is None  # the first epoch: every class weighs 1
    for y, kappa in (([0, 1, 2], [10, 4, 5]), ([0, 1, 2], [8, 10, 7])):
        loop.last_step = kappa_step(y, kappa)
        hooks.on_step_end(loop, 1, 0)
    raw = [(k / 2 + 1e-5) ** -2 for k in (18, 14, 12)]
    want = [min(max(3 * r / sum(raw), 5 / 6), 5 / 2) for r in raw]
    assert [round(w, 5) for w in want] == [0.83333, 1.01145, 1.37669]
    hooks.on_epoch_end(loop, 1, {})
    got = method.weights.tolist()
    for g, w in zip(got, want, strict=True):
        assert g == pytest.approx(w, rel=1e-12)
        note("fair-ard class weights", g, w)
    assert hooks.sums == {} and hooks.counts.tolist() == [0, 0, 0]  # the next epoch starts from zero


def test_the_method_state_and_the_epochs_running_sums_survive_a_resume():
    from igdm_kit._training.method_state import MethodHooks

    method = create_method("fair-ard")
    method.weights = torch.tensor([1.0, 2.0, 0.9], dtype=torch.float64)
    hooks = MethodHooks(Parts(method, 6, 3))
    loop = Loop()
    loop.last_step = kappa_step([2, 0], [3, 9])
    hooks.on_step_end(loop, 2, 0)
    values, tensors = hooks.state_dict()

    fresh = create_method("fair-ard")
    resumed = MethodHooks(Parts(fresh, 6, 3))
    resumed.load_state_dict(values, tensors)
    resumed.on_fit_start(loop, 2, 1)  # mid-epoch: no on_epoch_start, the sums stay
    assert torch.equal(fresh.weights, method.weights)
    assert resumed.sums["kappa"].tolist() == [9.0, 0.0, 3.0] and resumed.counts.tolist() == [1.0, 0.0, 1.0]


def np_log_softmax(row):
    p = np_softmax(row)
    return [math.log(v) for v in p]


def fair_ard_oracle(Sx, Sa, Tx, y, w, alpha=1.0, tau=30.0) -> float:
    """fair_ard.md, "Outer losses": α·τ²·(1/B)Σ w_{y_i}·(1/C)Σ_c p_c(log p_c − log q_c) + (1 − α)·(1/B)Σ w CE."""
    n = len(y)
    kd = 0.0
    for i in range(n):
        p, q = np_softmax(Tx[i] / tau), np_softmax(Sa[i] / tau)
        kd += w[int(y[i])] * sum(p[c] * (math.log(p[c]) - math.log(q[c])) for c in range(C)) / C
    ce = sum(-w[int(y[i])] * np_log_softmax(Sx[i])[int(y[i])] for i in range(n))
    return alpha * tau * tau * kd / n + (1 - alpha) * ce / n


@pytest.mark.parametrize("opts", [{}, {"alpha_ard": 0.6, "temperature": 4.0}])
def test_fair_ard_loss_and_gradient_against_the_spec_formula(opts):
    student, teacher = linear(0), linear(1, 3.0)
    x, x_adv, y = data()
    w = [0.9, 1.7, 5 / 6, 2.5]
    method = create_method("fair-ard", **opts)
    method.weights = torch.tensor(w, dtype=torch.float64)
    total(method.loss(step_for(method, student, teacher, x, x_adv, y))).backward()
    kw = {"alpha": opts.get("alpha_ard", 1.0), "tau": opts.get("temperature", 30.0)}
    Tx = np_logits(teacher, x)
    want = fair_ard_oracle(np_logits(student, x), np_logits(student, x_adv), Tx, y.numpy(), w, **kw)
    got = total(method.loss(step_for(method, student, teacher, x, x_adv, y))).item()
    assert got == pytest.approx(want, rel=1e-10)
    note("fair-ard loss", got, want)
    h = 1e-6
    for index in [(0, 0), (1, 5), (3, 11)]:
        values = []
        for sign in (1, -1):
            probe = linear(0)
            with torch.no_grad():
                probe[1].weight[index] += sign * h
            values.append(fair_ard_oracle(np_logits(probe, x), np_logits(probe, x_adv), Tx, y.numpy(), w, **kw))
        fd = (values[0] - values[1]) / (2 * h)
        assert student[1].weight.grad[index].item() == pytest.approx(fd, rel=1e-6, abs=1e-9)
        note("fair-ard gradient", student[1].weight.grad[index].item(), fd)


def test_fair_ard_trains_on_digits_and_keeps_its_class_weights_in_the_training_state(tmp_path, write_recipe):
    from conftest import DIGITS_PGDAT

    from igdm_kit import _recipe as R
    from igdm_kit._storage.checkpoint import save_model
    from igdm_kit._training.engine import run
    from igdm_kit.factories import create_model

    torch.manual_seed(3)
    teacher = tmp_path / "teacher.safetensors"
    save_model(teacher, create_model("small-cnn", num_classes=10, in_channels=1, image_size=8, width=8),
               {"model": "small-cnn", "model_options": {"width": 8}, "num_classes": 10, "in_channels": 1,
                "image_size": 8, "mean": None, "std": None})
    text = (DIGITS_PGDAT.replace('name = "pgd-at"', 'name = "fair-ard"\nalpha_ard = 0.5\ntemperature = 1.0')
            .replace("epochs = 1", "epochs = 3").replace("width = 8", "width = 16")
            .replace('name = "digits"', 'name = "digits"\ntrain_limit = 600')
            + f'[teacher]\ncheckpoint = "{teacher}"\ncheck_accuracy = false\n')
    result = run(R.load(write_recipe(text), ["train.lr=0.05", "attack.bn_mode=train"]), output_dir=tmp_path / "run")
    assert result.metrics[-1]["test_clean_acc"] > 40.0, result.metrics[-1]
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "run" / "train_state.safetensors"))
    w = saved["extra.sub.method.m.class_weights"]
    assert w.shape == (10,) and bool(((w >= 5 / 6 - 1e-12) & (w <= 5 / 2 + 1e-12)).all())
    assert not torch.equal(w, torch.ones(10, dtype=w.dtype))  # updated at each epoch's end
    assert saved["extra.sub.method.counts"].sum() == 0  # saved after the epoch's end reset the sums


class Recorder(Method):
    """A stateful third-party method: PGD-AT's loss, recording every hook the loop calls."""

    stateful = True
    attack_outputs = frozenset({"kappa"})
    calls: ClassVar[list] = []

    def loss(self, ctx):
        return {"adv_ce": SampleTerm(torch.nn.functional.cross_entropy(ctx.student("x_adv"), ctx.y,
                                                                       reduction="none"))}

    def on_epoch_start(self, epoch):
        self.calls.append(("start", epoch))

    def step_statistics(self, ctx):
        return {"kappa": ctx.attack_output("kappa"), "one": torch.ones(len(ctx.y))}

    def on_step_end(self, epoch, step, terms):
        self.calls.append(("step", epoch, step, sorted(terms)))

    def on_epoch_end(self, epoch, stats, schedule):
        self.calls.append(("end", epoch, schedule.decayed, int(stats.sums["one"].sum()), int(stats.counts.sum()),
                           stats.num_samples, stats.num_classes, bool((stats.sums["kappa"] <= 2 * stats.counts).all())))


def test_the_loop_calls_a_stateful_methods_hooks_and_says_when_the_lr_decays(tmp_path, write_recipe, monkeypatch):
    import sys
    import types
    from importlib.metadata import EntryPoint

    from conftest import DIGITS_PGDAT

    from igdm_kit import _recipe as R
    from igdm_kit._plugins import manager as plugins
    from igdm_kit._training.engine import run
    from igdm_kit.hookspecs import hookimpl

    mod = types.ModuleType("recent_methods_recorder")
    mod.register_methods = hookimpl(lambda register: register("tp-recorder", Recorder))
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    real = plugins.entry_points
    monkeypatch.setattr(plugins, "entry_points", lambda group: list(real(group=group)) + [
        EntryPoint(name="recorder", value=mod.__name__, group=group)])
    plugins.reset()
    Recorder.calls.clear()
    try:
        text = (DIGITS_PGDAT.replace('name = "pgd-at"', 'name = "tp-recorder"').replace("epochs = 1", "epochs = 3")
                .replace("milestones = []", "milestones = [2]")
                .replace('name = "digits"', 'name = "digits"\ntrain_limit = 128'))
        run(R.load(write_recipe(text)), output_dir=tmp_path / "run")
    finally:
        plugins.reset()
    steps = [("step", e, s, ["adv_ce"]) for e in (1, 2, 3) for s in (0, 1)]  # 128 images, batches of 64
    ends = [("end", e, e == 2, 128, 128, 128, 10, True) for e in (1, 2, 3)]
    assert Recorder.calls == [("start", 1), *steps[:2], ends[0], ("start", 2), *steps[2:4], ends[1],
                              ("start", 3), *steps[4:], ends[2]]


def test_report_worst_relative_errors(capsys):
    """Prints the worst relative errors seen above (run the file with -s to see them)."""
    with capsys.disabled():
        for family, err in sorted(WORST.items()):
            print(f"\nworst relative error, {family}: {err:.2e}")
    assert all(e < 1e-5 for e in WORST.values())
