"""Training contracts: a base method (``Method``), a gradient module (``GradientModule``), a training attack
(``TrainingAttack``), and what they see of one step (``StepContext``).

Per-sample terms (R3): a method's term may be a ``SampleTerm`` — a vector [B] with per-sample weights and a
batch reduction — which the engine reduces; a method with ``weights_module = True`` weights the gradient
module's per-sample loss (``GradientModule.loss_per_sample``) with ``Method.module_weights``.
State (R4, R5, R6): a method keeps state (``state_dict``, saved for resume), is told when an epoch starts
and ends and after each optimizer step, and gets per-class sums of per-sample statistics it names, among
them an attack's per-sample side outputs (``TrainingAttack.outputs``, e.g. κ).
Teacher outputs (R7): the step's cached teacher logits are read-only (an in-place change is an error, since
a gradient module may reuse them); transform a copy with ``StepContext.teacher_transformed``.
Teachers by role (R1): besides the recipe's ``[teacher]``, a method may read teachers it names in
``teacher_roles`` (``[teachers.<role>]``, each its own architecture), each evaluated in one batched forward
over the inputs ``role_inputs`` declares: ``StepContext.teacher(name, role)``. A method whose state follows
this step's own values reads them averaged over the torchrun ranks with ``StepContext.mean_over_ranks``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from pydantic import Field

from igdm_kit.interfaces.options import Fraction, NoOptions, Options

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch
    from torch import nn


#: Names of the step inputs a method or module can ask the student or the teacher to evaluate.
#: ``x_plus``/``x_minus`` exist only when a gradient module is active (x ± δ, Eq. 8).
InputName = Literal["x", "x_adv", "x_plus", "x_minus"]

#: How a per-sample term is reduced over the batch: ``mean`` (÷ B: batchmean for a KL summed over classes),
#: ``sum``, or ``nominal`` (÷ a fixed batch size, as reference code that divides by ``args.batch_size``).
BatchReduction = Literal["mean", "sum", "nominal"]

#: A teacher-output transform: (a copy of the cached teacher logits [B, C], labels y [B]) → new logits.
TeacherTransform = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]


@dataclass(frozen=True)
class SampleTerm:
    """A per-sample loss term a method returns instead of a scalar: ``values`` [B] (e.g.
    ``losses.kl_per_sample``, summed or averaged over classes), optional per-sample ``weights`` [B]
    (class weights w_{y_i}, masks, entropy weights; constants or not, as the method builds them), reduced
    by the engine as Σ_i w_i·v_i / B (``mean``), Σ_i w_i·v_i (``sum``) or Σ_i w_i·v_i / ``nominal_batch``
    (``igdm_kit.losses.reduce_term`` gives the same scalar to a method that needs it).
    """

    values: torch.Tensor
    weights: torch.Tensor | None = None
    reduction: BatchReduction = "mean"
    nominal_batch: int | None = None


@dataclass(frozen=True)
class ScheduleEvent:
    """What the learning-rate schedule did over an epoch (``Method.on_epoch_end``): the lr the epoch trained
    at and the lr of the next; ``decayed`` is True when a milestone fired (MTARD's η_w decays with it)."""

    lr: float
    next_lr: float

    @property
    def decayed(self) -> bool:
        return self.next_lr < self.lr


@dataclass(frozen=True)
class EpochStats:
    """An epoch's per-class statistics (R5), summed over every step and every rank: ``sums[name]`` [C] of the
    per-sample values ``Method.step_statistics`` returned, grouped by label; ``counts`` [C] the samples seen
    per class; N and C of the training split (Fair-ARD's κ̄_c = Σκ / (N/C))."""

    sums: dict[str, torch.Tensor]
    counts: torch.Tensor
    num_samples: int
    num_classes: int


class StepContext(Protocol):
    """What a method or gradient module sees of one training step (implemented by ``igdm_kit._training.step.Step``).

    ``student(name)`` and ``teacher(name)`` return logits for one of the step inputs; the engine computes
    each distinct (model, input) pair once per step and batches the teacher's inputs (fewest passes).
    The student runs in train mode with gradients; the teacher in eval mode without gradients. The teacher
    logits are shared and read-only: changing one in place raises an error when it is next read and at the
    end of the method's loss; ``teacher_transformed`` gives a transformed copy (R7).
    ``input_gradient`` gives ∇_x CE(f(x), y) per sample for either model on a step input, for modules that
    match gradients directly; it is a pass of its own, outside the cache.
    """

    x: torch.Tensor
    y: torch.Tensor
    epoch: int  # 1-based
    epochs: int
    #: True under ``train.reference_passes``: methods then also run the forwards the reference code runs
    #: for zero-weight terms (their BatchNorm updates), without adding those terms to the loss.
    reference: bool

    def input(self, name: InputName) -> torch.Tensor: ...
    def has_input(self, name: InputName) -> bool: ...
    def set_input(self, name: InputName, value: torch.Tensor | None = None, *,
                  alias_of: InputName | None = None) -> None: ...
    def student(self, name: InputName) -> torch.Tensor: ...
    def teacher(self, name: InputName, role: str | None = None) -> torch.Tensor:
        """T(name) of the recipe's ``[teacher]``, or of the teacher of ``role`` (``[teachers.<role>]``)."""
        ...
    def peer(self, name: InputName) -> torch.Tensor:
        """P(name) of the peer (R2): train mode, with gradient (the loss trains it), cached per input."""
        ...
    def peer_eval(self, name: InputName) -> torch.Tensor:
        """P(name) in eval mode without gradient (its BatchNorm statistics untouched), e.g. an attack's target."""
        ...
    def mean_over_ranks(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` (detached, any shape) averaged over the torchrun ranks, on the device (no host sync);
        themselves in a single process. For state that must stay the same on every rank (MTARD's weights)."""
        ...
    def teacher_transformed(self, name: InputName, transform: TeacherTransform) -> torch.Tensor:
        """``transform`` applied to a *copy* of the cached T(name) and y: the cache (which a gradient module
        may reuse) stays as the teacher computed it."""
        ...
    def has_teacher(self) -> bool: ...
    def attack_output(self, name: str) -> torch.Tensor:
        """A per-sample side output [B] the step's attack reported (``TrainingAttack.outputs``), e.g. κ."""
        ...
    def input_gradient(self, model: Literal["student", "teacher"], name: InputName, *,
                       create_graph: bool = False) -> torch.Tensor: ...


class Method:
    """A base adversarial-training or distillation method (the outer minimization).

    ``loss`` returns the method's *weighted* loss terms by name (e.g. ``{"adv_kl": ..., "nat_ce": ...}``),
    each a scalar tensor or a ``SampleTerm`` (per-sample values, weights and batch reduction), which the
    engine reduces; it logs each and sums them. A term whose weight is 0 must not be computed at all.
    With ``weights_module = True`` the engine asks ``module_weights(ctx)`` for per-sample weights of the
    gradient module's term: T(α)·(1/B)·Σ_i w_i·m_i with m = ``GradientModule.loss_per_sample`` (a recipe
    pairing such a method with a module without ``per_sample`` is rejected).
    The recipe's inner attack, when its ``[attack]`` names none, is ``attack_for(options)`` (not the class's
    ``default_attack``), so an option can change it (AdaAD's ``teacher_in_attack = false``).
    """

    Options: ClassVar[type[Options]] = NoOptions
    #: Inner attack used when the recipe's ``[attack]`` section names none.
    default_attack: ClassVar[str] = "pgd"
    #: Whether the method needs a teacher (distillation) or not (adversarial training).
    needs_teacher: ClassVar[bool] = False
    #: Whether the method weights each sample of the gradient module's term (``module_weights``).
    weights_module: ClassVar[bool] = False
    #: Whether the method trains a peer (R2, PeerAiD): a model of ``[peer]``'s architecture trained from scratch
    #: beside the student with its own optimizer and schedule (the student's settings), read through
    #: ``StepContext.peer`` (train mode, with gradient) and ``peer_eval``; one backward reaches both models.
    needs_peer: ClassVar[bool] = False
    #: Whether ``attack_target`` supplies the target of an attack that takes T(x), so that attack needs no teacher.
    supplies_attack_target: ClassVar[bool] = False
    #: Teachers by role the method reads besides ``[teacher]`` (R1), e.g. ``frozenset({"clean"})``: a recipe
    #: gives each as ``[teachers.<role>]``, and no other.
    teacher_roles: ClassVar[frozenset[str]] = frozenset()
    description: ClassVar[str] = ""

    def __init__(self, options: Options) -> None:
        self.options = options

    def module_weights(self, ctx: StepContext) -> torch.Tensor:
        """Per-sample weights [B] of the gradient module's term (asked after ``loss``, only when
        ``weights_module``); the module's per-sample loss is multiplied by them before the batch mean."""
        raise NotImplementedError

    # -- state (R4) and epoch statistics (R5): called by the training loop only, once per real optimizer
    # step (never by a replay of the loss such as a gradient check or a benchmark); all do nothing by default.
    #: Whether the training loop calls the hooks below and saves ``state_dict`` (False: never called).
    stateful: ClassVar[bool] = False
    #: names of the per-sample side outputs the method reads from its attack (``StepContext.attack_output``);
    #: a recipe whose attack does not report them is refused.
    attack_outputs: ClassVar[frozenset[str]] = frozenset()

    def state_dict(self) -> dict[str, Any]:
        """The method's state (tensors and JSON values), saved in the training state for ``--resume``."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """What ``state_dict`` returned when the training state was saved."""

    def on_epoch_start(self, epoch: int) -> None:
        """Before the first step of ``epoch`` (1-based); not repeated when a run resumes mid-epoch."""

    def step_statistics(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        """Per-sample values [B] of this step to sum per class over the epoch (``EpochStats``), read from
        the step's cached forwards and attack outputs (no new pass)."""
        return {}

    def on_step_end(self, epoch: int, step: int, terms: dict[str, float]) -> None:
        """After the optimizer step of 0-based ``step``; ``terms`` are the step's loss terms (averaged over
        the ranks under torchrun, so state driven by them stays identical)."""

    def on_epoch_end(self, epoch: int, stats: EpochStats, schedule: ScheduleEvent) -> None:
        """After the epoch's last step, with its per-class statistics and what the lr schedule did."""

    @classmethod
    def attack_for(cls, options: Options) -> str:
        """The inner attack used with these options when the recipe names none (an option may change it,
        e.g. AdaAD's ``teacher_in_attack = false``)."""
        return cls.default_attack

    @property
    def attack_name(self) -> str:
        """The inner attack this instance uses by default: ``attack_for(self.options)``."""
        return self.attack_for(self.options)

    def teacher_inputs(self, epoch: int, epochs: int) -> set[str]:
        """Step inputs the loss will ask the teacher for at this epoch (batched into one forward)."""
        return set()

    def attack_target(self, ctx: StepContext) -> torch.Tensor | None:
        """The logits an attack that takes T(x) (``needs_teacher_clean_logits``, e.g. ``rslad``) maximizes
        against, when the method supplies its own (R6b: ABSLD's temperature-scaled T(x)); None (the default):
        the teacher's T(x), shared with the loss. Asked before the attack, when only x is defined."""
        return None

    def role_inputs(self, epoch: int, epochs: int) -> dict[str, set[str]]:
        """Step inputs each teacher of ``teacher_roles`` will be asked for (one batched forward per role)."""
        return {}

    def loss(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class ModuleOptions(Options):
    """Options every gradient module shares: L = L_base + T(α)·L_module with T(α) = α·e/E."""

    alpha: float = Field(0.0, ge=0, description="weight α of the module loss at the end of the ramp")
    ramp_epochs: int | None = Field(
        None, gt=0, description="epochs of the linear ramp of T(α); default: the run's epochs"
    )
    beta: float = Field(1.0, description="x⁺ = x + β·δ")
    gamma: float = Field(1.0, description="x⁻ = x − γ·δ")
    clamp: bool = Field(False, description="clamp x⁺ and x⁻ to [0, 1] (the paper does not)")


class GradientModule:
    """A gradient-matching module added to any base method (IGDM and the variants the paper compares)."""

    Options: ClassVar[type[ModuleOptions]] = ModuleOptions
    needs_teacher: ClassVar[bool] = True
    description: ClassVar[str] = ""
    #: Whether the module works under ``train.amp = "fp16"`` (a double-backprop input gradient is not
    #: loss-scaled and would underflow) and under ``train.compile`` (no double backward through it).
    supports_fp16: ClassVar[bool] = True
    supports_compile: ClassVar[bool] = True
    #: Whether ``loss_per_sample`` is implemented (needed by a method that weights the module's samples).
    per_sample: ClassVar[bool] = False

    def __init__(self, options: ModuleOptions) -> None:
        self.options = options

    def teacher_inputs(self) -> set[str]:
        """Step inputs the loss will ask the teacher for (batched with the method's into one forward)."""
        return set()

    def prepare(self, ctx: StepContext) -> None:
        """Define the step inputs x⁺ = x + β·δ and x⁻ = x − γ·δ (δ = x_adv − x), after the attack.

        With β = 1, x⁺ is x_adv exactly (x + δ = x_adv), so it is declared an alias and the engine reuses
        S(x_adv) and T(x_adv); clamping cannot change it, x_adv already lies in [0, 1].
        """
        o = self.options
        x, x_adv = ctx.input("x"), ctx.input("x_adv")
        delta = x_adv - x
        if o.beta == 1.0:
            ctx.set_input("x_plus", alias_of="x_adv")
        else:
            x_plus = x + o.beta * delta
            ctx.set_input("x_plus", x_plus.clamp(0.0, 1.0) if o.clamp else x_plus)
        x_minus = x - o.gamma * delta
        ctx.set_input("x_minus", x_minus.clamp(0.0, 1.0) if o.clamp else x_minus)

    def loss(self, ctx: StepContext) -> torch.Tensor:
        """The unweighted module loss; the engine multiplies it by T(α). By default the batch mean of
        ``loss_per_sample``."""
        return self.loss_per_sample(ctx).mean()

    def loss_per_sample(self, ctx: StepContext) -> torch.Tensor:
        """The unweighted module loss per sample, a vector [B] whose mean over the batch is ``loss(ctx)``
        (a KL summed over classes, a distance averaged over them); set ``per_sample = True`` with it."""
        raise NotImplementedError


class AttackOptions(Options):
    """Inner-maximization settings shared by every training attack (L∞)."""

    eps: Fraction = Field(8 / 255, ge=0, le=1,
                          description="L∞ radius ε (a number or a fraction such as \"8/255\")")
    step_size: Fraction = Field(2 / 255, ge=0, le=1, description="step size η")
    steps: int = Field(10, ge=0, le=100_000, description="number of steps K")
    random_start: bool = Field(True, description="start from a random point near x")
    bn_mode: Literal["eval", "train"] = Field(
        "eval", description="mode of the attacked model during the attack (ARD/IAD's originals used train)"
    )


class TrainingAttack:
    """An inner attack (the inner maximization of adversarial training), registered by ``register_attacks``.

    Built by ``igdm_kit.create_attack`` as ``cls(student, options=..., teacher=...)`` (``teacher`` is None
    when the recipe has none) and called once per step as ``attack(x, y)`` — with
    ``teacher_logits=T(x)`` when ``needs_teacher_clean_logits`` — returning x_adv in [0, 1]. An attack
    restores the exact train/eval mode of every model it touched and takes its gradients with
    ``torch.autograd.grad``, so no parameter ``.grad`` changes. The built-ins are ``torchattacks.Attack``
    subclasses that list this class last among their bases (``igdm_kit_plugins.attacks.base``), so
    torchattacks' constructor and ``__call__`` come first.
    """

    Options: ClassVar[type[AttackOptions]] = AttackOptions
    #: The attack differentiates through the teacher (AdaAD) and must be given it.
    needs_teacher: ClassVar[bool] = False
    #: The attack needs the teacher's logits on the clean input, T(x), passed as ``teacher_logits=``.
    needs_teacher_clean_logits: ClassVar[bool] = False
    #: Per-sample side outputs [B] the attack reports after each call (``side_outputs``), e.g. ``kappa``:
    #: the number of iterates z_0 … z_{K−1} the attacked model classified correctly.
    outputs: ClassVar[frozenset[str]] = frozenset()
    description: ClassVar[str] = ""

    options: AttackOptions
    teacher: nn.Module | None = None

    def __init__(self, model: nn.Module, *, options: AttackOptions | None = None,
                 teacher: nn.Module | None = None) -> None:
        self.options = options or self.Options()
        self.teacher = teacher

    @classmethod
    def uses_teacher(cls) -> bool:
        """Whether a recipe choosing this attack needs a ``[teacher]``."""
        return cls.needs_teacher or cls.needs_teacher_clean_logits

    def __call__(self, x: torch.Tensor, y: torch.Tensor, *,
                 teacher_logits: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def side_outputs(self) -> dict[str, torch.Tensor]:
        """The last call's per-sample side outputs, by the names in ``outputs``."""
        return {}


#: The threat models of evaluation: the norm of the perturbation ball.
Norm = Literal["Linf", "L2", "L1"]
