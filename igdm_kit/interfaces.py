"""What a plugin's components look like.

Every registered component is a class with a nested ``Options`` pydantic model (``extra="forbid"``): the
recipe section that selects the component is validated against it, so a typo in an option is reported with
its dotted TOML path before anything trains. The base classes below fix the constructor and the methods the
engine calls; they import no torch so that ``igdm-kit --help`` stays light.

Inputs everywhere are images in [0, 1]; normalization is a layer inside the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch
    from torch import nn

#: Names of the step inputs a method or module can ask the student or the teacher to evaluate.
#: ``x_plus``/``x_minus`` exist only when a gradient module is active (x ± δ, Eq. 8).
InputName = Literal["x", "x_adv", "x_plus", "x_minus"]


def parse_fraction(value: Any) -> Any:
    """Let recipes write radii as in papers: ``eps = "8/255"`` means 8/255."""
    if isinstance(value, str) and "/" in value:
        num, _, den = value.partition("/")
        try:
            return float(num) / float(den)
        except (ValueError, ZeroDivisionError):
            return value  # pydantic then reports "not a valid number" with the key's path
    return value


#: A float that may be written as a fraction string in a recipe ("8/255").
Fraction = Annotated[float, BeforeValidator(parse_fraction)]


class Options(BaseModel):
    """Base of every component's options: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class NoOptions(Options):
    """For components that take no options."""


class StepContext(Protocol):
    """What a method or gradient module sees of one training step (implemented by ``igdm_kit.step.Step``).

    ``student(name)`` and ``teacher(name)`` return logits for one of the step inputs; the engine computes
    each distinct (model, input) pair once per step and batches the teacher's inputs (fewest passes).
    The student runs in train mode with gradients; the teacher in eval mode without gradients.
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
    def teacher(self, name: InputName) -> torch.Tensor: ...
    def has_teacher(self) -> bool: ...
    def input_gradient(self, model: Literal["student", "teacher"], name: InputName, *,
                       create_graph: bool = False) -> torch.Tensor: ...


class Method:
    """A base adversarial-training or distillation method (the outer minimization).

    ``loss`` returns the method's *weighted* loss terms by name (e.g. ``{"adv_kl": ..., "nat_ce": ...}``);
    the engine logs each and sums them. A term whose weight is 0 must not be computed at all.
    The recipe's inner attack, when its ``[attack]`` names none, is ``attack_for(options)`` (not the class's
    ``default_attack``), so an option can change it (AdaAD's ``teacher_in_attack = false``).
    """

    Options: ClassVar[type[Options]] = NoOptions
    #: Inner attack used when the recipe's ``[attack]`` section names none.
    default_attack: ClassVar[str] = "pgd"
    #: Whether the method needs a teacher (distillation) or not (adversarial training).
    needs_teacher: ClassVar[bool] = False
    description: ClassVar[str] = ""

    def __init__(self, options: Options) -> None:
        self.options = options

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
        """The unweighted module loss; the engine multiplies it by T(α)."""
        raise NotImplementedError


class AttackOptions(Options):
    """Inner-maximization settings shared by every training attack (L∞)."""

    eps: Fraction = Field(8 / 255, ge=0, description="L∞ radius ε (a number or a fraction such as \"8/255\")")
    step_size: Fraction = Field(2 / 255, ge=0, description="step size η")
    steps: int = Field(10, ge=0, description="number of steps K")
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


#: The threat models of evaluation: the norm of the perturbation ball.
Norm = Literal["Linf", "L2", "L1"]
#: The Lp norms; any other threat name is a non-Lp threat an evaluation attack declares in its ``norms``
#: (e.g. "ReColor": a bounded colour map, "StAdv": a bounded flow field), with its own meaning of ``eps``.
LP_NORMS: tuple[str, ...] = ("Linf", "L2", "L1")


@dataclass(frozen=True)
class Threat:
    """An evaluation threat model: the ball ‖δ‖_norm ≤ eps around x, intersected with [0, 1] — or, for a
    non-Lp ``norm`` (see ``LP_NORMS``), the set of images its attack defines with bound ``eps``."""

    norm: str = "Linf"
    eps: float = 8 / 255


class EvalContext(Protocol):
    """What an evaluation attack gets besides the model and the data (implemented in
    ``igdm_kit.evaluation``): the threat model, batching, the seed, progress and a place for state."""

    threat: Threat
    batch_size: int
    device: Any
    seed: int | None
    #: a file the attack may keep its progress in, to resume after an interruption (None: not resumable)
    state_path: Any

    def per_batch(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                  perturb: Any) -> torch.Tensor:
        """Robust flags (bool, one per image): ``model`` classifies ``perturb(xb, yb)`` correctly, batch by
        batch on the context's device, progress reported; ``perturb`` returns the attacked batch."""
        ...

    def progress(self, task: str, done: int, total: int) -> None: ...
    def warn(self, message: str) -> None: ...
    def report(self, details: dict[str, Any]) -> None:
        """Extra numbers for the results, under the attack's key in ``details``."""
        ...


class EvalAttack:
    """An evaluation attack, registered by ``register_eval_attacks`` and named in ``[eval] attacks``.

    ``robust(model, x, y, ctx)`` returns one bool per image: still classified correctly under the attack
    within ``ctx.threat`` (the model is in eval mode; its mode is the host's to restore). An attack that
    supports only some norms lists them in ``norms``; a recipe asking for another threat is refused.
    Reported numbers, and the worst case per image across every attack run, come from these flags.
    """

    Options: ClassVar[type[Options]] = NoOptions
    #: the column header of result tables (e.g. "PGD-20"); ``short`` for compact tables (e.g. "AA")
    label: ClassVar[str] = ""
    short: ClassVar[str] = ""
    norms: ClassVar[tuple[str, ...]] = ("Linf", "L2")
    description: ClassVar[str] = ""

    def __init__(self, options: Options) -> None:
        self.options = options

    def robust(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: EvalContext) -> torch.Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class DatasetInfo:
    """What the engine and the models need to know about a dataset."""

    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    #: Train-time augmentation: random-crop padding in pixels (0 = none) and horizontal flip.
    crop_padding: int = 0
    hflip: bool = False
    class_names: tuple[str, ...] = field(default_factory=tuple)


class DatasetPlugin:
    """A dataset: ``info()`` describes it, ``load(split)`` returns (images float [0,1] NCHW, labels int64)."""

    Options: ClassVar[type[Options]] = NoOptions
    description: ClassVar[str] = ""

    def __init__(self, options: Options) -> None:
        self.options = options

    def info(self) -> DatasetInfo:
        raise NotImplementedError

    def load(self, split: Literal["train", "test"]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


@dataclass(frozen=True)
class ShiftedSet:
    """One evaluation set under a dataset shift: a corruption at a severity, or a natural variant of the
    test set. ``load()`` returns (images float [0, 1] NCHW of the dataset's shape, labels int64 in the
    dataset's classes); it runs only when the set is evaluated, so a shift may list many sets cheaply."""

    key: str  # unique among the shift's sets, e.g. "gaussian_noise-3" or "cifar10.1"
    label: str
    #: "corruption" or "natural": Table 9 averages each group, then both
    group: str
    load: Any
    #: the sets one accuracy of the summary averages over (a corruption's severities share one family)
    family: str = ""
    severity: int | None = None


@dataclass(frozen=True)
class ThreatVariant:
    """One threat shift: an evaluation attack (a name or a table, as in ``[eval] attacks``) run under a
    threat model the model was not trained for, on the in-distribution test set."""

    key: str
    label: str
    attack: Any
    threat: Threat


class ShiftContext(Protocol):
    """What a shift sees (implemented in ``igdm_kit.shifts``): the dataset being evaluated, its test
    images (after ``--limit``), the seed, the model's own threat model, and a way to warn."""

    dataset: str
    info: DatasetInfo
    x: torch.Tensor
    y: torch.Tensor
    seed: int
    threat: Threat
    #: evaluate at most this many images per set (``--limit`` / ``eval.limit``; None: all); a loader may
    #: read only that many, the host cuts every set to it anyway
    limit: int | None

    def warn(self, message: str) -> None: ...


class Shift:
    """A distribution or threat shift, registered by ``register_shifts`` and named in ``[eval] shifts``.

    ``sets(ctx)`` lists the shifted evaluation sets (dataset shifts: corruptions, natural variants);
    ``threats(ctx)`` the threat shifts (attacks under other threat models). A shift implements one or
    both. ``sets`` checks that the files it needs exist and raises a one-line ``DataError`` naming the
    expected path otherwise; the images themselves are read by each set's ``load``.
    """

    Options: ClassVar[type[Options]] = NoOptions
    description: ClassVar[str] = ""

    def __init__(self, options: Options) -> None:
        self.options = options

    def sets(self, ctx: ShiftContext) -> list[ShiftedSet]:
        return []

    def threats(self, ctx: ShiftContext) -> list[ThreatVariant]:
        return []


class ModelFactory(Protocol):
    """A registered model: a class with ``Options`` and ``build``.

    ``build(options, num_classes=, in_channels=, image_size=)`` returns the bare network as an
    ``nn.Module`` on normalized inputs; ``igdm_kit.create_model`` wraps it once in
    ``igdm_kit.nn.Classifier`` (normalization by the dataset's mean/std inside the model), so every
    model takes [0, 1] images and its state dict reads ``normalize.*`` + ``net.*``.
    """

    Options: type[Options]

    @classmethod
    def build(cls, options: Any, *, num_classes: int, in_channels: int, image_size: int) -> nn.Module: ...


class ArchitectureBuilder(Protocol):
    """What a teacher loader receives as ``build``: ``build()`` constructs the architecture the recipe
    names (a one-line error when it names none); ``model_name`` is that name, or None."""

    model_name: str | None

    def __call__(self) -> nn.Module: ...


class TeacherLoader(Protocol):
    """A registered teacher loader: turns a file on disk into an ``nn.Module`` in eval mode.

    ``load(options, path=, build=)`` where ``build`` is an ``ArchitectureBuilder`` (for loaders that only
    carry weights); returns the model, an ``igdm_kit.nn.Classifier`` (normalization inside).
    """

    Options: type[Options]

    @classmethod
    def load(cls, options: Any, *, path: str, build: ArchitectureBuilder) -> nn.Module: ...
