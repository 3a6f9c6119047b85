"""Recipe validation errors as one line with the dotted TOML key, a did-you-mean and a hint."""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from igdm_kit.errors import RecipeError


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


def _field_at(model: type[BaseModel] | None, loc: tuple[Any, ...]):
    """(the leading parts of ``loc`` that name fields, the last such field or None): ``("eval", "attacks",
    0)`` → (["eval", "attacks"], the ``attacks`` field)."""
    parts, field = [], None
    for part in loc:
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            break
        parts.append(part)
        field = model.model_fields[part]
        candidates = typing.get_args(field.annotation) or (field.annotation,)
        model = next((a for a in candidates if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return parts, field


def _elsewhere(key: str) -> list[str]:
    """Other sections of the recipe schema that have ``key`` (``train.train_limit`` → ``data.train_limit``)."""
    from igdm_kit._recipe.schema import RecipeModel

    out = []
    for section, field in RecipeModel.model_fields.items():
        for sub in (field.annotation, *typing.get_args(field.annotation)):
            if isinstance(sub, type) and issubclass(sub, BaseModel) and key in sub.model_fields:
                out.append(f"{section}.{key}")
    return out


def _value_hint(model: type[BaseModel] | None, loc: tuple[Any, ...], prefix: str, error_type: str
                ) -> str | None:
    """'expected integer > 0, e.g. train.epochs=200': what the key takes, and an example value."""
    from igdm_kit._plugins.describe import example, type_text

    parts, field = _field_at(model, loc)
    if field is None or any(isinstance(a, type) and issubclass(a, BaseModel)
                            for a in (field.annotation, *typing.get_args(field.annotation))):
        return None  # a check across a whole section: its message says what is wrong
    key = ".".join([prefix, *parts] if prefix else parts)
    if error_type == "list_type":
        items = example(field).split(",")
        listed = "[" + ", ".join(v if v[:1].isdigit() or v[:1] in "-[\"" else f'"{v}"' for v in items) + "]"
        return (f"expected {type_text(field.annotation, field)}: a TOML list in a recipe ({parts[-1]} = "
                f"{listed}), a comma list with --set ({key}={','.join(items)}; one item: {key}={items[0]},)")
    return f"expected {type_text(field.annotation, field)}, e.g. {key}={example(field)}"


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
        close = close or ([] if prefix or len(err["loc"]) != 2 else _elsewhere(str(key)))
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
    elif err["type"] == "finite_number":
        msg, hint = "must be a finite number (not inf or nan)", "write a number such as 0.1"
    elif err["type"] == "string_pattern_mismatch" and str(err["loc"][-1]) == "device":
        msg, hint = f"{err.get('input')!r} is not a device", 'use "auto", "cpu", "mps", "cuda" or "cuda:N"'
    else:  # a wrong value: say what the key takes, with an example
        msg = msg.removeprefix("Value error, ")
        hint = _value_hint(model, err["loc"], prefix, err["type"]) or f"check the values of [{path}]"
    raise RecipeError(f"{path}: {msg}" if path else msg, hint, path=path) from None
