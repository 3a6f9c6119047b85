"""Building components by name, for the engine and for users' own code (``create_model``, ``list_models``).

Options are validated by the component's own ``Options`` model; errors name the component and option.
"""

from __future__ import annotations

import fnmatch
from typing import Any

from pydantic import BaseModel, ValidationError

from .errors import IgdmKitError
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
        raise IgdmKitError(f"{path}: {err['msg']}", f"see the options of {kind} {name!r}") from None


def list_components(kind: str, pattern: str = "*") -> list[str]:
    return [n for n in registry(kind).names() if fnmatch.fnmatch(n, pattern)]


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a glob ``pattern`` (like ``timm.list_models``)."""
    return list_components("model", pattern)


def create_model(name: str, *, num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
                 mean=None, std=None, **options: Any):
    """Build a registered model (like ``timm.create_model``); normalization by ``mean``/``std`` inside."""
    opts = validate_options("model", name, options, where="student")
    factory = registry("model").get(name)
    return factory.build(opts, num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                         mean=tuple(mean) if mean is not None else None,
                         std=tuple(std) if std is not None else None)


def create_dataset(name: str, **options: Any):
    opts = validate_options("dataset", name, options, where="data")
    return registry("dataset").get(name)(opts)
