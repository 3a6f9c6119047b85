"""The recipe schema: the sections of a TOML recipe and their keys (``extra="forbid"``).

A section that names a component (``[method] name``, ``[student] model``, ...) keeps its other keys for
that component's own ``Options``, validated in ``igdm_kit._recipe.validate``. No number may be ``inf`` or
``nan``, and every number has bounds that keep it meaningful (a learning rate of 1e300 is refused here, not
discovered after training).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from igdm_kit._recipe.specs import DEFAULT_ATTACKS, DEFAULT_EPS, DEFAULT_SHIFT_ATTACKS
from igdm_kit._runtime.threads import MAX_THREADS
from igdm_kit.interfaces import Fraction, PathOption

#: The largest seed (torch takes seeds below 2**64; the trainer derives per-epoch seeds from it).
MAX_SEED = 2**63 - 1
#: train.device: auto, cpu, mps, cuda or cuda:N.
DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:[0-9]{1,3})?)$"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ComponentSection(BaseModel):
    """A section naming a component; the remaining keys are that component's options."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class DataSection(ComponentSection):
    name: str
    train_limit: int | None = Field(None, gt=0, le=10**9, description="use only the first N training images")
    test_limit: int | None = Field(None, gt=0, le=10**9, description="evaluate on the first N test images")
    val_size: int | float | None = Field(
        None, gt=0, description="validation images held out of the training set: a count, or a fraction below 1")
    val_seed: int = Field(0, ge=0, le=MAX_SEED, description="seed of the stratified validation split")
    workers: int = Field(0, ge=0, le=256, description="DataLoader worker processes decoding a streamed "
                         "training set (a dataset with a source, e.g. image-folder with stream = true); "
                         "0: in the training process. The batches are the same for any number")

    @model_validator(mode="after")
    def _val_size(self) -> DataSection:
        v = self.val_size
        if isinstance(v, float) and not v < 1:
            raise ValueError(f"val_size = {v:g}: a fraction is below 1; a count is a whole number, e.g. 500")
        return self


class StudentSection(ComponentSection):
    model: str


class PeerSection(ComponentSection):
    """``[peer]``: the architecture of a peer trained from scratch beside the student (R2: PeerAiD), with its
    own optimizer and schedule built from the student's ``[train]`` settings; its other keys are the model's
    options."""

    model: str


class TeacherSection(Section):
    checkpoint: PathOption | None = Field(None, description="teacher weights on disk (relative to the recipe file)")
    loader: str = Field("auto", description="teacher loader; auto: igdm-kit for .safetensors, else state-dict")
    loader_options: dict[str, Any] = Field(default_factory=dict)
    model: str | None = Field(None, description="architecture, for loaders that read plain weights")
    model_options: dict[str, Any] = Field(default_factory=dict)
    mean: list[Annotated[float, Field(ge=-1e3, le=1e3)]] | None = None
    std: list[Annotated[float, Field(gt=0, le=1e3)]] | None = None
    recipe: PathOption | None = Field(None, description="a recipe that trains the teacher (relative to the recipe "
                                      "file; cached in its run folder)")
    check_classes: bool = Field(True, description="refuse a teacher whose recorded class names are not the "
                                "data's (false: a warning)")
    check_accuracy: bool = Field(True, description="refuse a teacher at chance on a sample of the training "
                                 "images (false: a warning)")

    @model_validator(mode="after")
    def _one_source(self) -> TeacherSection:
        if (self.checkpoint is None) == (self.recipe is None):
            raise ValueError("give exactly one of `checkpoint` or `recipe`")
        return self


class MethodSection(ComponentSection):
    name: str


class ModuleSection(ComponentSection):
    name: str


class AttackSection(ComponentSection):
    name: str | None = Field(None, description="inner attack; default: the method's own")


class OptimizerSection(ComponentSection):
    name: str = Field("sgd", description="a registered optimizer: sgd, adam, adamw, ...")


class ScheduleSection(ComponentSection):
    name: str = Field("multistep", description="a registered schedule: multistep, cosine, onecycle, cyclic, ...")
    warmup_epochs: int = Field(0, ge=0, description="epochs of linear warm-up before the schedule")
    warmup_start: float = Field(0.1, ge=0, le=1, description="the warm-up starts at this × the schedule's lr")


#: ``[train.validate] attacks`` by default: clean accuracy and PGD-10 at the training ε.
DEFAULT_VAL_ATTACKS: tuple[Any, ...] = ("clean", {"name": "pgd", "steps": 10})


class ValidateSection(Section):
    every: int = Field(1, ge=1, description="validate every k epochs (the last epoch always)")
    start: int = Field(1, ge=1, description="the first epoch validated")
    attacks: list[str | dict[str, Any]] = Field(
        default_factory=lambda: [a if isinstance(a, str) else dict(a) for a in DEFAULT_VAL_ATTACKS],
        description="evaluation attacks run on the validation split")
    threat: Literal["Linf", "L2", "L1"] = "Linf"
    eps: Fraction | None = Field(None, ge=0, description="radius; default: the training attack's ε at L∞")
    metric: str = Field("robust", description="what best.safetensors maximizes: robust (the worst case "
                        "over the attacks) or one attack's key, e.g. clean")
    batch_size: int = Field(256, gt=0)


class EmaSection(Section):
    decay: float = Field(0.999, gt=0, lt=1, description="w_ema ← decay·w_ema + (1 − decay)·w after each step")
    start: int = Field(1, ge=1, description="the first epoch whose steps are averaged")
    buffers: bool = Field(True, description="average the BatchNorm statistics too (else copy them)")


class SwaSection(Section):
    start: int = Field(..., ge=1, description="the first epoch whose end weights join the equal average "
                       "(PeerAiD: the first lr milestone; SAAD: 95 of 200)")


class TrainSection(Section):
    epochs: int = Field(200, gt=0, le=100_000)
    batch_size: int = Field(128, gt=0, le=1_000_000)
    lr: float = Field(0.1, gt=0, le=100)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0, le=1)
    milestones: list[Annotated[int, Field(gt=0, le=100_000)]] = Field(default_factory=lambda: [100, 150])
    lr_decay: float = Field(0.1, gt=0, le=10, description="factor applied at each milestone (cumulative)")
    seed: int = Field(0, ge=0, le=MAX_SEED)
    device: str = Field("auto", pattern=DEVICE_PATTERN, description="auto, cpu, mps, cuda, cuda:N")
    threads: int | None = Field(None, gt=0, le=MAX_THREADS, description="CPU threads of torch (default: the "
                                "physical cores available; --threads and IGDM_KIT_THREADS override it)")
    reference_passes: bool = Field(False, description="separate forwards as the reference code does")
    save_every_epoch: bool = Field(False, description="keep a checkpoint per epoch (for analyze linearity)")
    # Accelerator options (igdm_kit._runtime.accel); device-dependent checks happen when the run starts.
    amp: Literal["off", "bf16", "fp16", "auto"] = Field(
        "off", description="mixed precision of the forwards: bf16 (CPU or GPU), fp16 (GPU, grad scaler), auto "
                           "(bf16 where the device has native bf16, else off; recorded in the manifest)")
    channels_last: bool = Field(False, description="models and inputs in channels_last memory format")
    compile: bool = Field(False, description="torch.compile the student and the teacher")
    cudnn_benchmark: bool = Field(False, description="let cuDNN pick the fastest convolutions (CUDA only)")
    gpu_data: bool = Field(False, description="keep the training set on the GPU, augment there (CIFAR/SVHN)")
    # Optional tables; absent, the run trains exactly as the keys above say (SGD, multistep).
    optimizer: OptimizerSection | None = None
    schedule: ScheduleSection | None = None
    validation: ValidateSection | None = Field(None, alias="validate")  # `validate` is pydantic's
    ema: EmaSection | None = None
    swa: SwaSection | None = None
    callbacks: list[Any] = Field(default_factory=list, description="training callbacks of plugins (names or "
                                 "tables with a name and options), besides the built-in ones")

    @model_validator(mode="after")
    def _milestones(self) -> TrainSection:
        if sorted(self.milestones) != self.milestones or len(set(self.milestones)) != len(self.milestones):
            raise ValueError("milestones must be strictly increasing")
        return self


class EvalSection(Section):
    attacks: list[str | dict[str, Any]] = Field(
        default_factory=lambda: list(DEFAULT_ATTACKS),
        description='evaluation attacks: names or tables, e.g. { name = "pgd", steps = 50, restarts = 5 }')
    threat: Literal["Linf", "L2", "L1"] = Field("Linf", description="the norm of the threat model's ball")
    limit: int | None = Field(None, gt=0, le=10**9, description="evaluate on the first N test images")
    batch_size: int = Field(256, gt=0, le=1_000_000)
    eps: Fraction | None = Field(None, ge=0, description="radius; default 8/255 at Linf, 0.5 at L2, 12 at L1")
    analysis: bool = Field(False, description="also report GD/GC against the teacher (needs a teacher)")
    checkpoints: list[Literal["last", "best", "ema", "best_ema", "swa"]] = Field(
        default_factory=lambda: ["last"], min_length=1,
        description="which checkpoints the final evaluation judges (the first is the run's headline)")
    shifts: list[str | dict[str, Any]] = Field(
        default_factory=list, description='distribution and threat shifts (Table 9): names or tables, e.g. '
        '"corruptions", "threats", { name = "corruptions", severities = [1, 3, 5] }')
    shift_attacks: list[str | dict[str, Any]] = Field(
        default_factory=lambda: list(DEFAULT_SHIFT_ATTACKS),
        description="attacks run on the test set and every shifted set (robust: their worst case)")

    @model_validator(mode="after")
    def _eps_of_threat(self) -> EvalSection:
        if self.eps is None:
            self.eps = DEFAULT_EPS[self.threat]
        return self




class LogSection(ComponentSection):
    """``[log]``: experiment trackers besides ``metrics.jsonl`` (always written); ``[log.NAME]`` holds a
    tracker's options."""

    trackers: list[str] = Field(default_factory=list, description="tensorboard, wandb, mlflow, ...")
    step_every: int = Field(10, ge=1, description="log the step's losses and lr every N optimizer steps")
    artifacts: bool = Field(False, description="keep the final checkpoints with the tracker's run")


class OutputSection(Section):
    dir: PathOption | None = Field(None, description="run folder (relative to the recipe file); default "
                                   "runs/<recipe name> in the working directory")


class RecipeModel(Section):
    name: str | None = None
    description: str | None = None
    extends: str | None = None
    data: DataSection
    student: StudentSection
    teacher: TeacherSection | None = None
    teachers: dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")], TeacherSection] = Field(
        default_factory=dict, description="more teachers by role ([teachers.clean]): each a checkpoint or a "
                                          "recipe, with its own architecture, for methods that read several "
                                          "(R1: MTARD)")
    peer: PeerSection | None = None
    method: MethodSection
    module: ModuleSection | None = None
    attack: AttackSection = Field(default_factory=AttackSection)
    train: TrainSection = Field(default_factory=TrainSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    output: OutputSection = Field(default_factory=OutputSection)
    log: LogSection = Field(default_factory=LogSection)
    sweep: dict[str, Any] | None = Field(None, description="grid of dotted keys → values (igdm-kit sweep)")
