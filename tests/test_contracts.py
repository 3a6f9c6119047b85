"""A third-party method, gradient module and training attack, written against ``igdm_kit.interfaces`` alone
(no private attribute, no torchattacks, no probing), run in the engine from a recipe like the built-ins.

Every attribute the method and the module read of the step is checked against the ``StepContext``
protocol, and the attack's x_adv against its own contract (‖δ‖∞ ≤ ε, inside [0, 1]).
"""

from __future__ import annotations

import math
import sys
import types
from importlib.metadata import EntryPoint

import pytest
import torch
import torch.nn.functional as F
from conftest import DIGITS_PGDAT

from igdm_kit import _recipe as R
from igdm_kit._plugins import manager as plugins
from igdm_kit.hookspecs import hookimpl
from igdm_kit.interfaces import GradientModule, Method, SampleTerm, StepContext, TrainingAttack

CONTRACT = {n for n in vars(StepContext) if not n.startswith("_")} | set(StepContext.__annotations__)
SEEN: dict[str, list] = {"delta": [], "reads": []}


class Audited:
    """The step as a plugin sees it: any attribute outside the StepContext protocol fails the test."""

    def __init__(self, ctx) -> None:
        self._ctx = ctx

    def __getattr__(self, name: str):
        SEEN["reads"].append(name)
        assert name in CONTRACT, f"{name!r} is not part of the StepContext contract"
        return getattr(self._ctx, name)


class OneStepKL(TrainingAttack):
    """x + ε·sign(∇ KL(T(x) ‖ S(z))) at z = x: one step, using the teacher's clean logits it asks for."""

    needs_teacher_clean_logits = True

    def __init__(self, model, *, options=None, teacher=None) -> None:
        super().__init__(model, options=options, teacher=teacher)
        self.model = model

    def __call__(self, x, y, *, teacher_logits=None):
        assert teacher_logits is not None, "the engine must pass T(x) to an attack that asks for it"
        eps, was = self.options.eps, self.model.training
        self.model.eval()
        try:
            z = x.detach().clone().requires_grad_(True)
            loss = F.kl_div(F.log_softmax(self.model(z), 1), F.softmax(teacher_logits, 1), reduction="batchmean")
            (grad,) = torch.autograd.grad(loss, z)
        finally:
            self.model.train(was)
        x_adv = torch.min(torch.max(x + eps * grad.sign(), x - eps), x + eps).clamp(0, 1).detach()
        SEEN["delta"].append(float((x_adv - x).abs().max()))
        return x_adv


class KD(Method):
    """KL(T(x_adv) ‖ S(x_adv)) + ½·CE(S(x), y)."""

    needs_teacher = True
    default_attack = "tp-onestep"

    def teacher_inputs(self, epoch, epochs):
        return {"x_adv"}

    def loss(self, ctx):
        ctx = Audited(ctx)
        kd = F.kl_div(F.log_softmax(ctx.student("x_adv"), 1), F.softmax(ctx.teacher("x_adv"), 1),
                      reduction="batchmean")
        return {"kd": kd, "ce": 0.5 * F.cross_entropy(ctx.student("x"), ctx.y)}


class DiffL2(GradientModule):
    """mean ‖(S(x⁺) − S(x⁻)) − (T(x⁺) − T(x⁻))‖² plus ½·(1 − cos(∇_x S, ∇_x T)) on the clean x."""

    def teacher_inputs(self):
        return {"x_plus", "x_minus"}

    def prepare(self, ctx):
        super().prepare(Audited(ctx))

    def loss(self, ctx):
        ctx = Audited(ctx)
        d_s = ctx.student("x_plus") - ctx.student("x_minus")
        d_t = ctx.teacher("x_plus") - ctx.teacher("x_minus")
        g_s = ctx.input_gradient("student", "x", create_graph=True).flatten(1)
        g_t = ctx.input_gradient("teacher", "x").flatten(1)
        return (d_s - d_t).pow(2).mean() + 0.5 * (1 - F.cosine_similarity(g_s, g_t, dim=1)).mean()


class TwoTeachers(Method):
    """#24's third-party method: a robust teacher at x_adv and a second one (role "second") at x, each sample
    weighted by its class's weight, the weights from the epoch's per-class loss at its end (epoch-end state)."""

    needs_teacher = True
    stateful = True
    teacher_roles = frozenset({"second"})

    def __init__(self, options) -> None:
        super().__init__(options)
        self.class_weights: torch.Tensor | None = None
        self._per_sample: torch.Tensor | None = None

    def teacher_inputs(self, epoch, epochs):
        return {"x_adv"}

    def role_inputs(self, epoch, epochs):
        return {"second": {"x"}}

    def loss(self, ctx):
        ctx = Audited(ctx)
        kd = F.kl_div(F.log_softmax(ctx.student("x_adv"), 1), F.log_softmax(ctx.teacher("x_adv"), 1),
                      reduction="none", log_target=True).sum(1)
        nat = F.kl_div(F.log_softmax(ctx.student("x"), 1), F.log_softmax(ctx.teacher("x", role="second"), 1),
                       reduction="none", log_target=True).sum(1)
        w = None if self.class_weights is None else self.class_weights.to(kd.dtype)[ctx.y]
        self._per_sample = kd.detach()
        return {"kd": SampleTerm(kd, w), "nat": SampleTerm(0.5 * nat, w)}

    def step_statistics(self, ctx):
        return {"kd": self._per_sample}

    def on_epoch_end(self, epoch, stats, schedule):
        mean = stats.sums["kd"] / stats.counts.clamp_min(1)
        self.class_weights = (mean / mean.mean()).clamp(0.5, 2.0)

    def state_dict(self):
        return {} if self.class_weights is None else {"class_weights": self.class_weights}

    def load_state_dict(self, state):
        self.class_weights = state.get("class_weights")


@pytest.fixture
def third_party(monkeypatch):
    mod = types.ModuleType("third_party_plugin_mod")
    mod.register_methods = hookimpl(lambda register: [register("tp-kd", KD), register("tp-two", TwoTeachers)])
    mod.register_modules = hookimpl(lambda register: register("tp-diff-l2", DiffL2))
    mod.register_attacks = hookimpl(lambda register: register("tp-onestep", OneStepKL))
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    real = plugins.entry_points
    monkeypatch.setattr(plugins, "entry_points", lambda group: list(real(group=group)) + [
        EntryPoint(name="third-party", value=mod.__name__, group=group)])
    plugins.reset()
    SEEN["delta"].clear()
    SEEN["reads"].clear()
    yield
    plugins.reset()


@pytest.fixture
def teacher_file(tmp_path):
    from igdm_kit._storage.checkpoint import save_model
    from igdm_kit.factories import create_model

    torch.manual_seed(3)
    path = tmp_path / "teacher.safetensors"
    save_model(path, create_model("small-cnn", num_classes=10, in_channels=1, image_size=8, width=8),
               {"model": "small-cnn", "model_options": {"width": 8}, "num_classes": 10, "in_channels": 1,
                "image_size": 8, "mean": None, "std": None})
    return path


def test_third_party_components_train_in_the_engine(third_party, teacher_file, tmp_path, write_recipe):
    from igdm_kit._training.engine import run

    text = (DIGITS_PGDAT.replace('name = "pgd-at"', 'name = "tp-kd"').replace("epochs = 1", "epochs = 2")
            .replace('name = "digits"', 'name = "digits"\ntrain_limit = 128')
            + f'[teacher]\ncheckpoint = "{teacher_file}"\ncheck_accuracy = false\n'  # random on purpose
            + '[module]\nname = "tp-diff-l2"\nalpha = 1.0\n')
    r = R.load(write_recipe(text))
    assert r.attack_name == "tp-onestep"  # the method's own attack, chosen by the recipe
    result = run(r, output_dir=tmp_path / "run")
    rows = result.metrics
    assert [m["epoch"] for m in rows] == [1, 2]
    for m in rows:
        assert {"kd", "ce", "module", "loss"} <= m.keys() and all(math.isfinite(m[k]) for k in ("kd", "ce", "module"))
    assert rows[1]["module_weight"] == pytest.approx(1.0) and rows[0]["module_weight"] == pytest.approx(0.5)
    # 128 images in batches of 64, two epochs: the attack ran once per step and kept its contract
    assert len(SEEN["delta"]) == 4 and all(d <= 0.1 + 1e-6 for d in SEEN["delta"])
    assert {"student", "teacher", "input", "set_input", "input_gradient", "y"} <= set(SEEN["reads"])
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_a_third_party_method_with_two_teachers_sample_weights_and_epoch_state(third_party, teacher_file,
                                                                                tmp_path, write_recipe):
    from igdm_kit._training.engine import run

    text = (DIGITS_PGDAT.replace('name = "pgd-at"', 'name = "tp-two"').replace("epochs = 1", "epochs = 3")
            .replace('name = "digits"', 'name = "digits"\ntrain_limit = 128')
            + f'[teacher]\ncheckpoint = "{teacher_file}"\ncheck_accuracy = false\n'
            + f'[teachers.second]\ncheckpoint = "{teacher_file}"\ncheck_accuracy = false\n')
    rows = run(R.load(write_recipe(text)), output_dir=tmp_path / "run").metrics
    assert [m["epoch"] for m in rows] == [1, 2, 3] and all({"kd", "nat"} <= m.keys() for m in rows)
    assert "teacher" in SEEN["reads"] and "y" in SEEN["reads"]
    from safetensors.torch import load_file

    weights = next(v for k, v in load_file(str(tmp_path / "run" / "train_state.safetensors")).items()
                   if k.endswith("m.class_weights"))
    assert weights.shape == (10,) and not torch.all(weights == 1)  # set at an epoch's end, kept for resume


def test_a_teacher_attack_needs_a_teacher_in_the_recipe(third_party, write_recipe):
    from igdm_kit.errors import RecipeError

    text = DIGITS_PGDAT.replace("[attack]", '[attack]\nname = "tp-onestep"')
    with pytest.raises(RecipeError, match="attack 'tp-onestep' needs a teacher"):
        R.load(write_recipe(text))


def test_input_gradient_of_the_step_is_the_per_sample_ce_gradient():
    """Oracle: ∇_x of the summed CE, by autograd on a separate copy of the input, per sample."""
    from igdm_kit._training.step import Step
    from igdm_kit.factories import create_model

    torch.manual_seed(0)
    model = create_model("small-cnn", num_classes=10, in_channels=1, image_size=8, width=4).double().eval()
    x, y = torch.rand(5, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (5,))
    step = Step(model, model, x, y, epoch=1, epochs=1)
    got = step.input_gradient("student", "x")
    for i in range(5):
        xi = x[i:i + 1].clone().requires_grad_(True)
        (gi,) = torch.autograd.grad(F.cross_entropy(model(xi), y[i:i + 1]), xi)
        assert torch.allclose(got[i:i + 1], gi, atol=1e-12)
    assert torch.equal(step.input_gradient("teacher", "x"), got)
