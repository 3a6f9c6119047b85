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
    """What a method or gradient module sees of one training step (implemented in ``igdm_kit.step``).

    ``student(name)`` and ``teacher(name)`` return logits for one of the step inputs; the engine computes
    each distinct (model, input) pair once per step and batches the teacher's inputs (issue: fewest passes).
    The student runs in train mode with gradients; the teacher in eval mode without gradients.
    """

    x: torch.Tensor
    y: torch.Tensor
    epoch: int  # 1-based
    epochs: int
    #: True under ``train.reference_passes``: methods then also run the forwards the reference code runs
    #: for zero-weight terms (their BatchNorm updates), without adding those terms to the loss.
    reference: bool

    def input(self, name: InputName) -> torch.Tensor: ...
    def student(self, name: InputName) -> torch.Tensor: ...
    def teacher(self, name: InputName) -> torch.Tensor: ...


class Method:
    """A base adversarial-training or distillation method (the outer minimization).

    ``loss`` returns the method's *weighted* loss terms by name (e.g. ``{"adv_kl": ..., "nat_ce": ...}``);
    the engine logs each and sums them. A term whose weight is 0 must not be computed at all.
    The engine reads the instance's ``attack_name`` (not the class's ``default_attack``) to pick the inner
    attack when the recipe names none, so an option can change it (AdaAD's ``teacher_in_attack = false``).
    """

    Options: ClassVar[type[Options]] = NoOptions
    #: Inner attack used when the recipe's ``[attack]`` section names none.
    default_attack: ClassVar[str] = "pgd"
    #: Whether the method needs a teacher (distillation) or not (adversarial training).
    needs_teacher: ClassVar[bool] = False
    description: ClassVar[str] = ""

    def __init__(self, options: Options) -> None:
        self.options = options

    @property
    def attack_name(self) -> str:
        """The inner attack this instance uses by default (an option may change it, e.g. AdaAD w/o T_in)."""
        return self.default_attack

    def teacher_inputs(self, epoch: int, epochs: int) -> set[str]:
        """Step inputs the loss will ask the teacher for at this epoch (batched into one forward)."""
        return set()

    def student_inputs(self, epoch: int, epochs: int) -> set[str]:
        """Step inputs the loss will ask the student for (used for pass accounting)."""
        return {"x_adv"}

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

    def __init__(self, options: ModuleOptions) -> None:
        self.options = options

    def teacher_inputs(self) -> set[str]:
        return set()

    def student_inputs(self) -> set[str]:
        return set()

    def prepare(self, ctx: Any) -> None:
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


class ModelFactory(Protocol):
    """A registered model: a class with ``Options`` and ``build``.

    ``build(options, num_classes=, in_channels=, image_size=, mean=, std=)`` returns an ``nn.Module`` taking
    [0,1] images; ``mean``/``std`` (or None) are applied inside it.
    """

    Options: type[Options]

    @classmethod
    def build(
        cls,
        options: Any,
        *,
        num_classes: int,
        in_channels: int,
        image_size: int,
        mean: tuple[float, ...] | None,
        std: tuple[float, ...] | None,
    ) -> nn.Module: ...


class TeacherLoader(Protocol):
    """A registered teacher loader: turns a file on disk into an ``nn.Module`` in eval mode.

    ``load(options, path=, build=)`` where ``build()`` constructs the architecture the recipe names (for
    loaders that only carry weights); returns the model.
    """

    Options: type[Options]

    @classmethod
    def load(cls, options: Any, *, path: str, build: Any) -> nn.Module: ...
