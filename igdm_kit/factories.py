"""One factory per component kind — the only place a registered component is built (public).

``create(kind, name, options)`` builds a component of any kind whose contract is ``cls(options)``; the
kinds with more to build (models, training attacks, teachers, optimizers, schedules, callbacks) have their
own factory below.

``create_model`` / ``list_models`` follow timm; ``create_dataset``, ``create_method``, ``create_module``,
``create_attack``, ``create_eval_attack``, ``create_teacher``, ``create_optimizer``, ``create_schedule``,
``create_tracker`` and ``create_launcher`` do the same for the other kinds, and the engine, the analysis, the
benchmark and the tests all build through them. Options are validated by the component's own ``Options``
model (a dict, keyword arguments, or an already validated instance); errors name the component and the
dotted option.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from igdm_kit._plugins.kinds import BY_NAME
from igdm_kit._plugins.manager import registry
from igdm_kit.errors import CheckpointError, IgdmKitError


def validate_options(kind: str, name: str, options: dict[str, Any] | BaseModel | None,
                     where: str | None = None) -> BaseModel:
    """Validate ``options`` with the component's ``Options``; errors carry ``where.option`` as path."""
    model = registry(kind).entry(name).options_model
    if isinstance(options, model):
        return options
    try:
        return model.model_validate(dict(options or {}))
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        path = f"{where}.{loc}" if where else loc
        fields = ", ".join(model.model_fields) or "none"
        raise IgdmKitError(f"{path}: {err['msg']}",
                           None if err["type"] == "value_error" else f"the options of {kind} {name!r}: {fields}"
                           ) from None


def create(kind: str, name: str, options: dict[str, Any] | BaseModel | None = None, **kwargs: Any):
    """A registered component of ``kind`` (``igdm_kit._plugins.kinds``) built as ``cls(options)``, its options
    validated (errors under the kind's recipe path)."""
    opts = validate_options(kind, name, options if options is not None else kwargs, where=BY_NAME[kind].where)
    return registry(kind).get(name)(opts)


def list_components(kind: str, pattern: str = "*") -> list[str]:
    return [n for n in registry(kind).names() if fnmatch.fnmatch(n, pattern)]


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a glob ``pattern`` (like ``timm.list_models``)."""
    return list_components("model", pattern)


def create_model(name: str, *, num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
                 mean=None, std=None, where: str = "student", **options: Any):
    """Build a registered model (like ``timm.create_model``), wrapped once in ``igdm_kit.nn.Classifier``:
    it takes [0, 1] images and normalizes by ``mean``/``std`` inside (none when they are None)."""
    from igdm_kit.nn import Classifier

    opts = validate_options("model", name, options, where=where)
    net = registry("model").get(name).build(opts, num_classes=num_classes, in_channels=in_channels,
                                            image_size=image_size)
    return Classifier(net, mean, std)


def create_dataset(name: str, options: dict[str, Any] | BaseModel | None = None, **kwargs: Any):
    """A registered dataset (``interfaces.DatasetPlugin``) with validated options."""
    return create("dataset", name, options, **kwargs)


def create_method(name: str, options: dict[str, Any] | BaseModel | None = None, **kwargs: Any):
    """A registered base method (``interfaces.Method``) with validated options."""
    return create("method", name, options, **kwargs)


def create_module(name: str, options: dict[str, Any] | BaseModel | None = None, **kwargs: Any):
    """A registered gradient module (``interfaces.GradientModule``) with validated options."""
    return create("module", name, options, **kwargs)


def create_attack(name: str, student, *, teacher=None, options: dict[str, Any] | BaseModel | None = None,
                  **kwargs: Any):
    """A registered training attack (``interfaces.TrainingAttack``) against ``student``."""
    opts = validate_options("attack", name, options if options is not None else kwargs, where="attack")
    return registry("attack").get(name)(student, options=opts, teacher=teacher)


def create_eval_attack(name: str, options: dict[str, Any] | BaseModel | None = None, **kwargs: Any):
    """A registered evaluation attack (``interfaces.EvalAttack``) with validated options."""
    return create("eval_attack", name, options, **kwargs)


def create_shift(name: str, options: dict[str, Any] | BaseModel | None = None, **kwargs: Any):
    """A registered distribution or threat shift (``interfaces.Shift``) with validated options."""
    return create("shift", name, options, **kwargs)


class ArchitectureBuilder:
    """The ``build`` a teacher loader receives: constructs the architecture a recipe names (or refuses
    with a one-line error when it names none). ``model_name`` says which, for error messages;
    ``num_classes``/``in_channels``/``image_size`` are the dataset's, for loaders that read a file describing
    its own architecture (check it before building anything)."""

    def __init__(self, model: str | None, model_options: dict[str, Any], *, num_classes: int,
                 in_channels: int, image_size: int, mean=None, std=None, loader: str = "") -> None:
        self.model_name = model
        self.num_classes, self.in_channels, self.image_size = num_classes, in_channels, image_size
        self._kwargs = dict(model_options, num_classes=num_classes, in_channels=in_channels,
                            image_size=image_size, mean=mean, std=std)
        self._loader = loader

    def __call__(self):
        from igdm_kit.errors import RecipeError

        if self.model_name is None:
            raise RecipeError(f"teacher.model: the {self._loader!r} loader needs the architecture",
                              "name it, e.g. model = \"wrn-34-10\"", path="teacher.model")
        return create_model(self.model_name, where="teacher.model_options", **self._kwargs)


def default_loader(path: str | Path) -> str:
    """``loader = "auto"``: igdm-kit's own checkpoints by their suffix, plain weights otherwise."""
    return "igdm-kit" if Path(path).suffix == ".safetensors" else "state-dict"


def create_teacher(path: str | Path, *, loader: str = "auto", loader_options: dict[str, Any] | None = None,
                   model: str | None = None, model_options: dict[str, Any] | None = None,
                   num_classes: int = 10, in_channels: int = 3, image_size: int = 32, mean=None, std=None,
                   device: Any = "cpu"):
    """A teacher from a file through a registered teacher loader: in eval mode, parameters frozen."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"teacher checkpoint {str(path)!r} does not exist",
                              "set teacher.checkpoint to the file's path (relative to the recipe)")
    name = default_loader(path) if loader == "auto" else loader
    options = validate_options("teacher_loader", name, loader_options, where="teacher.loader_options")
    build = ArchitectureBuilder(model, dict(model_options or {}), num_classes=num_classes,
                                in_channels=in_channels, image_size=image_size, mean=mean, std=std,
                                loader=name)
    teacher = registry("teacher_loader").get(name).load(options, path=str(path), build=build)
    teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    check_teacher_fits(teacher, path, num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                       device=device)
    return teacher


def teacher_protocol(loader: str, loader_options: dict[str, Any] | None = None):
    """The benchmark protocol (``interfaces.EvalProtocol``) the published numbers of the models ``loader``
    loads with these options were measured by (``TeacherLoader.protocol``), or None."""
    options = validate_options("teacher_loader", loader, loader_options, where="teacher.loader_options")
    return registry("teacher_loader").get(loader).protocol(options)


def check_teacher_fits(teacher, path: str | Path, *, num_classes: int, in_channels: int, image_size: int,
                       device: Any = "cpu") -> None:
    """Whatever loader made it, a teacher must take the dataset's images and give one logit per class: one
    image of zeros goes through it before training starts (not a RuntimeError mid-training)."""
    import torch

    try:
        with torch.no_grad():
            out = teacher(torch.zeros(1, in_channels, image_size, image_size, device=device))
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"teacher {str(path)!r} does not take this dataset's {in_channels}×{image_size}×"
                              f"{image_size} images ({first[:160]})",
                              "use a teacher trained on this dataset") from None
    if not torch.is_tensor(out) or tuple(out.shape) != (1, num_classes):
        shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise CheckpointError(f"teacher {str(path)!r} gives outputs of shape {shape} for one image, but this "
                              f"dataset has {num_classes} classes", "use a teacher trained on this dataset")


def create_optimizer(name: str, params, plan, options: dict[str, Any] | BaseModel | None = None,
                     **kwargs: Any):
    """A registered optimizer (``interfaces.OptimizerFactory``) over ``params`` for ``plan``
    (``interfaces.TrainingPlan``): a ``torch.optim.Optimizer``."""
    opts = validate_options("optimizer", name, options if options is not None else kwargs,
                            where="train.optimizer")
    return registry("optimizer").get(name)(opts).build(params, plan)


def create_schedule(name: str, optimizer, plan, options: dict[str, Any] | BaseModel | None = None,
                    **kwargs: Any):
    """A registered learning-rate schedule (``interfaces.LRSchedule``) on ``optimizer``: (the torch
    scheduler, its interval ``"epoch"`` or ``"step"``). Without the warm-up: ``igdm_kit._training.optim``
    puts it in front."""
    opts = validate_options("schedule", name, options if options is not None else kwargs,
                            where="train.schedule")
    component = registry("schedule").get(name)
    return component(opts).build(optimizer, plan), component.interval


def create_tracker(name: str, options: dict[str, Any] | BaseModel | None = None, **kwargs: Any):
    """A registered experiment tracker (``interfaces.Tracker``) with validated options."""
    opts = validate_options("logger", name, options if options is not None else kwargs, where=f"log.{name}")
    return registry("logger").get(name)(opts)


def create_launcher(name: str, options: dict[str, Any] | BaseModel | None = None, **kwargs: Any):
    """A registered sweep launcher (``interfaces.Launcher``) with validated options."""
    return create("launcher", name, options, **kwargs)


def create_callback(name: str, ctx, options: dict[str, Any] | BaseModel | None = None, **kwargs: Any):
    """A registered training callback (``interfaces.Callback``) for the run ``ctx`` describes
    (``interfaces.CallbackContext``), or None when it has nothing to do in that run."""
    opts = validate_options("callback", name, options if options is not None else kwargs, where="train.callbacks")
    return registry("callback").get(name).build(opts, ctx)
