"""The recipe schema: the sections of a TOML recipe and their keys (``extra="forbid"``).

A section that names a component (``[method] name``, ``[student] model``, ...) keeps its other keys for
that component's own ``Options``, validated in ``igdm_kit.recipe.validate``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..eval_attacks import DEFAULT_ATTACKS, DEFAULT_EPS
from ..interfaces import Fraction
from ..shifts import DEFAULT_SHIFT_ATTACKS

class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ComponentSection(BaseModel):
    """A section naming a component; the remaining keys are that component's options."""

    model_config = ConfigDict(extra="allow")

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class DataSection(ComponentSection):
    name: str
    train_limit: int | None = Field(None, gt=0, description="use only the first N training images")
    test_limit: int | None = Field(None, gt=0, description="evaluate on the first N test images")


class StudentSection(ComponentSection):
    model: str


class TeacherSection(Section):
    checkpoint: str | None = Field(None, description="teacher weights on disk (path relative to the recipe)")
    loader: str = Field("auto", description="teacher loader; auto: igdm-kit for .safetensors, else state-dict")
    loader_options: dict[str, Any] = Field(default_factory=dict)
    model: str | None = Field(None, description="architecture, for loaders that read plain weights")
    model_options: dict[str, Any] = Field(default_factory=dict)
    mean: list[float] | None = None
    std: list[float] | None = None
    recipe: str | None = Field(None, description="a recipe that trains the teacher (cached in its run folder)")

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


class TrainSection(Section):
    epochs: int = Field(200, gt=0)
    batch_size: int = Field(128, gt=0)
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    milestones: list[int] = Field(default_factory=lambda: [100, 150])
    lr_decay: float = Field(0.1, gt=0, description="factor applied at each milestone (cumulative)")
    seed: int = 0
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    reference_passes: bool = Field(False, description="separate forwards as the reference code does")
    save_every_epoch: bool = Field(False, description="keep a checkpoint per epoch (for analyze linearity)")
    # Accelerator options (igdm_kit.accel); device-dependent checks happen when the run starts.
    amp: Literal["off", "bf16", "fp16"] = Field(
        "off", description="mixed precision of the forwards: bf16 (CPU or GPU), fp16 (GPU, grad scaler)")
    channels_last: bool = Field(False, description="models and inputs in channels_last memory format")
    compile: bool = Field(False, description="torch.compile the student and the teacher")
    cudnn_benchmark: bool = Field(False, description="let cuDNN pick the fastest convolutions (CUDA only)")
    gpu_data: bool = Field(False, description="keep the training set on the GPU, augment there (CIFAR/SVHN)")

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
    limit: int | None = Field(None, gt=0, description="evaluate on the first N test images")
    batch_size: int = Field(256, gt=0)
    eps: Fraction | None = Field(None, ge=0, description="radius; default 8/255 at Linf, 0.5 at L2, 12 at L1")
    analysis: bool = Field(False, description="also report GD/GC against the teacher (needs a teacher)")
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


class OutputSection(Section):
    dir: str | None = Field(None, description="run folder; default runs/<recipe file name>")


class RecipeModel(Section):
    name: str | None = None
    description: str | None = None
    extends: str | None = None
    data: DataSection
    student: StudentSection
    teacher: TeacherSection | None = None
    method: MethodSection
    module: ModuleSection | None = None
    attack: AttackSection = Field(default_factory=AttackSection)
    train: TrainSection = Field(default_factory=TrainSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    output: OutputSection = Field(default_factory=OutputSection)
    sweep: dict[str, Any] | None = Field(None, description="grid of dotted keys → values (igdm-kit sweep)")
