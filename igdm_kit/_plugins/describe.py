"""Options models as text: each field's type, default and description, and an example value.

``igdm-kit plugins show NAME`` prints a component's options with it, and recipe errors use it to say what
a key expects (``train.epochs: expected an integer > 0, e.g. --set train.epochs=5``). It reads only the
pydantic fields of an ``Options`` model (the contract), never a component by name. No torch import.
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from igdm_kit.interfaces import AddedLater, RecipePath, parse_fraction

_NAMES = {bool: "true/false", int: "integer", float: "number", str: "text", dict: "table"}
_BOUNDS = (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"))


def _without_none(annotation: Any) -> tuple[Any, bool]:
    """(the annotation without ``None``, whether ``None`` was allowed)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        return (args[0] if len(args) == 1 else typing.Union[tuple(args)]), optional
    return annotation, False


def _metadata(field: FieldInfo) -> list[Any]:
    """A field's constraints and markers, also those of an ``Annotated`` inside ``X | None``."""
    inner = [m for a in typing.get_args(field.annotation) for m in getattr(a, "__metadata__", ())]
    return [*field.metadata, *inner]


def _is_fraction(field: FieldInfo) -> bool:
    return any(getattr(m, "func", None) is parse_fraction for m in _metadata(field))


def is_path(field: FieldInfo) -> bool:
    """Whether a field is a ``PathOption`` (also inside ``PathOption | None``)."""
    return any(isinstance(m, RecipePath) for m in _metadata(field))


def added_later_fields(model: type[BaseModel]) -> dict[str, Any]:
    """A model's ``AddedLater`` fields and their defaults (left out of a recipe's digest at the default)."""
    return {name: f.default for name, f in model.model_fields.items()
            if any(isinstance(m, AddedLater) for m in _metadata(f))}


def path_fields(model: type[BaseModel]) -> list[str]:
    """The names of a model's ``PathOption`` fields."""
    return list(path_keywords(model))


def path_keywords(model: type[BaseModel]) -> dict[str, tuple[str, ...]]:
    """A model's ``PathOption`` fields, each with the values that are no path (``RecipePath.keywords``)."""
    return {name: tuple(k for m in _metadata(f) if isinstance(m, RecipePath) for k in m.keywords)
            for name, f in model.model_fields.items() if is_path(f)}


def type_text(annotation: Any, field: FieldInfo | None = None) -> str:
    """``float`` → "number", ``Literal["a", "b"]`` → '"a" or "b"', ``list[int]`` → "list of integer"."""
    annotation, _ = _without_none(annotation)
    if typing.get_origin(annotation) is typing.Annotated:  # e.g. Fraction | None: the type inside
        annotation = typing.get_args(annotation)[0]
    if field is not None and is_path(field):
        base = "path"
    elif typing.get_origin(annotation) is typing.Literal:
        base = _one_of([json.dumps(v) for v in typing.get_args(annotation)])
    elif typing.get_origin(annotation) in (list, tuple, set):
        inner = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        base = "list" + (f" of {type_text(inner[0])}" if inner else "")
    elif typing.get_origin(annotation) is dict:
        base = "table"
    elif typing.get_origin(annotation) in (typing.Union, types.UnionType):
        base = " or ".join(type_text(a) for a in typing.get_args(annotation))
    else:
        base = _NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))
    bounds = [f"{sym} {_number(getattr(m, key))}" for m in (_metadata(field) if field else ())
              for key, sym in _BOUNDS if getattr(m, key, None) is not None]
    text = base + (" " + ", ".join(bounds) if bounds else "")
    return text + (' or a fraction such as "8/255"' if field is not None and _is_fraction(field) else "")


def _one_of(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def _number(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "(required)"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "(not set)"
    return _fraction(value) if _is_fraction(field) and _fraction(value) else toml_text(value)


def _fraction(value: Any) -> str | None:
    """8/255 for a radius on the 1/255 grid, as recipes write it."""
    if isinstance(value, float) and value and abs(value * 255 - round(value * 255)) < 1e-6:
        return f'"{round(value * 255)}/255"'
    return None


def toml_text(value: Any) -> str:
    """A value as it is written in a recipe (TOML): true, 0.1, "eval", [100, 150]."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_text(v)}" for k, v in value.items()) + " }"
    return json.dumps(value) if isinstance(value, str) else str(value)


def example(field: FieldInfo) -> str:
    """An example value as ``--set key=VALUE`` takes it: the default when there is one (a list as a comma
    list, a radius on the 1/255 grid as "8/255"), else one of the type."""
    default = None if field.is_required() else field.get_default(call_default_factory=True)
    if isinstance(default, (list, tuple)) and default:
        return ",".join(str(v) if isinstance(v, str) and v.isidentifier() else toml_text(v) for v in default)
    if _is_fraction(field) and _fraction(default):
        return _fraction(default).strip('"')
    if isinstance(default, str) and default.isidentifier():
        return default  # a bare word is a string to --set
    if default not in (None, {}, []):
        text = toml_text(default)
        return text if " " not in text else f"'{text}'"
    if is_path(field):
        return "path/to/it"
    annotation, _ = _without_none(field.annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return str(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (list, tuple, set):
        return "a,b"
    return {bool: "true", int: "5", float: "0.5"}.get(annotation, "VALUE")


def option_rows(model: type[BaseModel]) -> list[dict[str, str]]:
    """Every option of an ``Options`` model: name, type, default, description."""
    return [{"name": name, "type": type_text(f.annotation, f), "default": default_text(f),
             "description": f.description or ""} for name, f in model.model_fields.items()]
