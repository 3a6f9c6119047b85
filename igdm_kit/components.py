"""One factory per component kind — the only place a registered component is built.

``create_model`` / ``list_models`` follow timm; ``create_dataset``, ``create_method``, ``create_module``,
``create_attack`` and ``create_teacher`` do the same for the other kinds, and the engine, the analysis, the
benchmark and the tests all build through them. Options are validated by the component's own ``Options``
model (a dict, keyword arguments, or an already validated instance); errors name the component and the
dotted option.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from .errors import CheckpointError, IgdmKitError
from .plugins import registry


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


def list_components(kind: str, pattern: str = "*") -> list[str]:
    return [n for n in registry(kind).names() if fnmatch.fnmatch(n, pattern)]


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a glob ``pattern`` (like ``timm.list_models``)."""
    return list_components("model", pattern)


def create_model(name: str, *, num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
                 mean=None, std=None, where: str = "student", **options: Any):
    """Build a registered model (like ``timm.create_model``), wrapped once in ``igdm_kit.nn.Classifier``:
    it takes [0, 1] images and normalizes by ``mean``/``std`` inside (none when they are None)."""
    from .nn import Classifier

    opts = validate_options("model", name, options, where=where)
    net = registry("model").get(name).build(opts, num_classes=num_classes, in_channels=in_channels,
                                            image_size=image_size)
    return Classifier(net, mean, std)


def create_dataset(name: str, options: dict[str, Any] | BaseModel | None = None, **kwargs: Any):
    """A registered dataset (``interfaces.DatasetPlugin``) with validated options."""
    opts = validate_options("dataset", name, options if options is not None else kwargs, where="data")
    return registry("dataset").get(name)(opts)


def create_method(name: str, options: dict[str, Any] | BaseModel | None = None, **kwargs: Any):
    """A registered base method (``interfaces.Method``) with validated options."""
    opts = validate_options("method", name, options if options is not None else kwargs, where="method")
    return registry("method").get(name)(opts)


def create_module(name: str, options: dict[str, Any] | BaseModel | None = None, **kwargs: Any):
    """A registered gradient module (``interfaces.GradientModule``) with validated options."""
    opts = validate_options("module", name, options if options is not None else kwargs, where="module")
    return registry("module").get(name)(opts)


def create_attack(name: str, student, *, teacher=None, options: dict[str, Any] | BaseModel | None = None,
                  **kwargs: Any):
    """A registered training attack (``interfaces.TrainingAttack``) against ``student``."""
    opts = validate_options("attack", name, options if options is not None else kwargs, where="attack")
    return registry("attack").get(name)(student, options=opts, teacher=teacher)


def create_eval_attack(name: str, options: dict[str, Any] | BaseModel | None = None, **kwargs: Any):
    """A registered evaluation attack (``interfaces.EvalAttack``) with validated options."""
    opts = validate_options("eval_attack", name, options if options is not None else kwargs,
                            where="eval.attacks")
    return registry("eval_attack").get(name)(opts)


def create_shift(name: str, options: dict[str, Any] | BaseModel | None = None, **kwargs: Any):
    """A registered distribution or threat shift (``interfaces.Shift``) with validated options."""
    opts = validate_options("shift", name, options if options is not None else kwargs, where="eval.shifts")
    return registry("shift").get(name)(opts)


class ArchitectureBuilder:
    """The ``build`` a teacher loader receives: constructs the architecture a recipe names (or refuses
    with a one-line error when it names none). ``model_name`` says which, for error messages."""

    def __init__(self, model: str | None, model_options: dict[str, Any], *, num_classes: int,
                 in_channels: int, image_size: int, mean=None, std=None, loader: str = "") -> None:
        self.model_name = model
        self._kwargs = dict(model_options, num_classes=num_classes, in_channels=in_channels,
                            image_size=image_size, mean=mean, std=std)
        self._loader = loader

    def __call__(self):
        from .errors import RecipeError

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
    return teacher
