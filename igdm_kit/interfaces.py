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


class RecipePath:
    """Marks an option as a file or folder path (``PathOption``). Written in a recipe file, a relative path is
    relative to that file, and the component receives it absolute; given with ``--set`` on the command line,
    relative to the working directory; a default stays as the component wrote it (working directory).
    Only its last part counts towards a recipe's digest, so a moved clone keeps its runs."""

    def __repr__(self) -> str:
        return "RecipePath()"


#: A ``str`` option that holds a path (resolved as ``RecipePath`` says).
PathOption = Annotated[str, RecipePath()]


class Options(BaseModel):
    """Base of every component's options: unknown keys are errors, values are validated on assignment, and
    no number may be ``inf`` or ``nan``."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False)


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

    def check(self) -> None:
        """Raise the one-line ``DataError`` that ``load`` would raise for missing files, without reading or
        downloading anything (files a ``download`` option would fetch are not missing). ``igdm-kit recipe
        check`` warns with it. The default checks nothing (data that ships with a package)."""


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
    names (a one-line error when it names none); ``model_name`` is that name, or None. ``num_classes``,
    ``in_channels`` and ``image_size`` are the dataset's: a loader whose file describes its own architecture
    checks them before building it (the host also checks the loaded teacher on one image)."""

    model_name: str | None
    num_classes: int
    in_channels: int
    image_size: int

    def __call__(self) -> nn.Module: ...


class TeacherLoader(Protocol):
    """A registered teacher loader: turns a file on disk into an ``nn.Module`` in eval mode.

    ``load(options, path=, build=)`` where ``build`` is an ``ArchitectureBuilder`` (for loaders that only
    carry weights); returns the model, an ``igdm_kit.nn.Classifier`` (normalization inside).
    """

    Options: type[Options]

    @classmethod
    def load(cls, options: Any, *, path: str, build: ArchitectureBuilder) -> nn.Module: ...


# -- optimization -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainingPlan:
    """What an optimizer or a learning-rate schedule is built for: the ``[train]`` keys every optimizer
    shares (``lr``, ``weight_decay``; ``momentum``, ``milestones`` and ``lr_decay`` as the defaults of SGD and
    multistep) and the run's length. ``warmup_epochs`` of linear warm-up come before the schedule."""

    lr: float
    momentum: float
    weight_decay: float
    milestones: tuple[int, ...]
    lr_decay: float
    epochs: int
    steps_per_epoch: int
    warmup_epochs: int = 0

    @property
    def schedule_epochs(self) -> int:
        """The epochs the schedule itself covers: those after the warm-up."""
        return self.epochs - self.warmup_epochs


class OptimizerFactory:
    """An optimizer, registered by ``register_optimizers`` and named in ``[train.optimizer] name``.

    ``build(params, plan)`` returns a ``torch.optim.Optimizer`` over ``params`` at ``plan.lr`` with
    ``plan.weight_decay``; its ``state_dict`` must hold tensors and JSON values only (resume saves it
    without pickling).
    """

    Options: ClassVar[type[Options]] = NoOptions
    description: ClassVar[str] = ""

    def __init__(self, options: Options) -> None:
        self.options = options

    def build(self, params: Any, plan: TrainingPlan) -> torch.optim.Optimizer:
        raise NotImplementedError


class LRSchedule:
    """A learning-rate schedule, registered by ``register_schedules`` and named in ``[train.schedule] name``.

    ``build(optimizer, plan)`` returns a ``torch.optim.lr_scheduler`` scheduler for the epochs after the
    warm-up: ``plan.lr`` is its base (where multistep and cosine start, the peak of one-cycle and cyclic),
    its own count starts at 0 when the warm-up ends (which rises to the schedule's first lr), and it covers
    ``plan.schedule_epochs`` epochs (× ``plan.steps_per_epoch`` steps when ``interval`` is ``"step"``). The
    trainer steps it once per epoch, or once per optimizer step with ``interval = "step"``; its
    ``state_dict`` must be JSON values (resume saves it without pickling).
    """

    Options: ClassVar[type[Options]] = NoOptions
    interval: ClassVar[Literal["epoch", "step"]] = "epoch"
    description: ClassVar[str] = ""

    def __init__(self, options: Options) -> None:
        self.options = options

    def build(self, optimizer: torch.optim.Optimizer, plan: TrainingPlan) -> Any:
        raise NotImplementedError


# -- experiment trackers ------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrackerRun:
    """What a tracker is started with."""

    #: the run folder (trackers keep their local files under it)
    folder: str
    #: the recipe's name (the run's display name)
    name: str
    #: the run's manifest (resolved recipe, digest, seeds, versions), logged as the run's config
    config: dict[str, Any]
    #: the id this tracker returned when the same run started before (a resumed run), else None
    run_id: str | None = None
    #: optimizer steps already done and kept (0 for a new run): records logged after it were dropped
    step: int = 0


class Tracker:
    """An experiment tracker, registered by ``register_loggers`` and named in ``[log] trackers``.

    Called on the main process only, in this order: ``start`` once per process (a resumed run is started
    again with the id ``start`` returned before), ``log`` for each per-step record (``epoch`` None) and
    per-epoch record (``epoch`` set; ``step`` is then the epoch's last step), ``summary`` with the final
    results, ``artifact`` for a checkpoint file when ``[log] artifacts`` is on, and ``finish`` at the end
    (``ok`` False when the run stopped early or failed). Records reach a tracker only once the training state
    that covers them is saved, so a resumed run logs every step once. Offline by default where the library
    allows. ``requires`` names the Python modules it needs and ``install`` the command that installs them.
    """

    Options: ClassVar[type[Options]] = NoOptions
    description: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()
    install: ClassVar[str] = ""

    def __init__(self, options: Options) -> None:
        self.options = options

    def start(self, run: TrackerRun) -> str | None:
        """Open the run (or reopen ``run.run_id``) and log ``run.config``; return the id to resume with."""
        raise NotImplementedError

    def log(self, metrics: dict[str, float], *, step: int, epoch: int | None) -> None:
        raise NotImplementedError

    def summary(self, results: dict[str, Any]) -> None:
        """The final evaluation (``results.json``), flattened to ``{"test/last/pgd20": 41.2, ...}``."""

    def artifact(self, path: str, name: str) -> None:
        """A checkpoint file to keep with the run (trackers without an artifact store ignore it)."""

    def finish(self, ok: bool) -> None:
        """Close the run; ``ok`` is False when it stopped early or failed."""


# -- sweep launchers ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """One independent job of a sweep: a teacher to prepare or a variant to train and evaluate."""

    #: unique within the sweep (the variant's label, or ``teacher:NAME``)
    name: str
    #: the command line that runs it, from the sweep's working directory
    command: tuple[str, ...]
    #: where its output (stdout and stderr) goes
    log: str
    #: names of jobs that must have succeeded before it starts (its teacher)
    after: tuple[str, ...] = ()


class LaunchContext(Protocol):
    """What a launcher gets besides the jobs (implemented in ``igdm_kit.launch``)."""

    #: the working directory the commands run in
    workdir: str
    #: a folder of the sweep's own for a scheduler's files (submission scripts, job logs)
    jobs_dir: str

    def log(self, message: str) -> None: ...


class Launcher:
    """A sweep launcher, registered by ``register_launchers`` and named by ``igdm-kit sweep --launcher``.

    ``launch(jobs, ctx)`` runs every job (a job only after the jobs it names in ``after`` succeeded) and
    returns each job's exit status by name, or None for one it submitted without waiting for it; a stop
    request (KeyboardInterrupt) is passed on to the running jobs before it propagates.
    """

    Options: ClassVar[type[Options]] = NoOptions
    description: ClassVar[str] = ""

    def __init__(self, options: Options) -> None:
        self.options = options

    def launch(self, jobs: list[Job], ctx: LaunchContext) -> dict[str, int | None]:
        raise NotImplementedError
