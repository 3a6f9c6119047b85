"""Recipe validation errors as one line with the dotted TOML key, a did-you-mean and a hint."""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ..errors import RecipeError


def _dotted(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc if not (isinstance(p, str) and p.startswith("function-")))


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys a (nested) pydantic model accepts at ``loc``, for "did you mean" hints."""
    for part in loc:
        by_key = {f.alias or n: f for n, f in model.model_fields.items()}  # as the recipe spells them
        field = by_key.get(part) if isinstance(part, str) else None
        if field is None:
            return []
        candidates = typing.get_args(field.annotation) or (field.annotation,)
        sub = next((a for a in candidates if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if sub is None:
            return []
        model = sub
    return [f.alias or n for n, f in model.model_fields.items()]


_TABLE_ERRORS = ("model_type", "dict_type", "model_attributes_type")


def raise_validation(exc: ValidationError, prefix: str = "", model: type[BaseModel] | None = None,
                      source: Path | None = None) -> None:
    errors = exc.errors()
    # an unknown key explains the rest (a misspelled [dat] section also makes [data] "missing")
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    path = ".".join(p for p in (prefix, _dotted(err["loc"])) if p)
    msg, hint = err["msg"], "see `igdm-kit recipe show` for the valid keys"
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
        key = err["loc"][-1]
        close = difflib.get_close_matches(str(key), _fields_at(model, err["loc"][:-1]) if model else [], n=3)
        if close:
            hint = "did you mean " + ", ".join(repr(c) for c in close) + "?"
    elif err["type"] == "missing":
        msg = "required key is missing"
        if source is not None and source.name.startswith("_"):
            hint = "files starting with '_' are bases for `extends`, not recipes to run"
    elif err["type"] == "value_error":
        hint = None  # a component's own validator says what is wrong and what to do
    elif err["type"] in _TABLE_ERRORS:
        msg = "must be a table ([section] or { key = value })"
    elif err["type"] == "list_type":
        hint = 'write a TOML list, e.g. ["clean", "pgd20"] (quote it for --set: \'eval.attacks=["clean"]\')'
    elif err["type"].startswith("float") and str(err["loc"][-1]) in ("eps", "step_size"):
        hint = 'a number or a fraction such as "8/255"'
    raise RecipeError(f"{path}: {msg}" if path else msg, hint, path=path) from None
