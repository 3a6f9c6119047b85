"""Reading recipe files: TOML, ``extends`` inheritance, paths relative to the recipe, ``--set`` overrides.

``extends = "base.toml"`` (relative to the recipe) inherits a recipe: tables merge key by key, except that
a section whose component changes (``[method] name``, ``[student] model``, ...) replaces the parent's
section, since the parent's options belong to another component.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from ..errors import RecipeError, storage_error

MAX_EXTENDS_DEPTH = 16


_COMPONENT_KEY = {"data": "name", "student": "model", "method": "name", "module": "name", "attack": "name",
                  "teacher": "model"}


def _read_toml(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise RecipeError(f"{str(path)!r} is a folder, not a recipe file", "name a .toml file in it")
    if not path.is_file():
        raise RecipeError(f"recipe file {str(path)!r} does not exist", "check the path")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Windows editors) is not TOML
    except UnicodeDecodeError:
        raise RecipeError(f"recipe {str(path)!r} is not a UTF-8 text file", "pass a .toml recipe") from None
    except OSError as exc:
        raise storage_error(exc, path, "read") from None
    return parse_toml(text, f"recipe {str(path)!r}")


def parse_toml(text: str, what: str) -> dict[str, Any]:
    """TOML text → dict; a syntax error or nesting deeper than the parser goes is one ``RecipeError``."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{what} is not valid TOML: {exc}", "fix the TOML syntax") from None
    except RecursionError:
        raise RecipeError(f"{what} nests tables or lists too deeply to read",
                          "flatten the nested inline tables and lists") from None


def merge(parent: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """Child over parent; tables merge unless the child's section names another component."""
    out = dict(parent)
    for key, value in child.items():
        old = out.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            ident = _COMPONENT_KEY.get(key)
            if ident and ident in value and value[ident] != old.get(ident):
                out[key] = value
            else:
                out[key] = merge(old, value)
        else:
            out[key] = value
    return out


def load_raw(path: str | Path, _depth: int = 0) -> dict[str, Any]:
    """The recipe's TOML with ``extends`` resolved (paths inside stay relative to their own file)."""
    path = Path(path)
    if _depth > MAX_EXTENDS_DEPTH:
        raise RecipeError(f"recipe {str(path)!r}: `extends` nests deeper than {MAX_EXTENDS_DEPTH}",
                          "check for a cycle of extends")
    raw = _read_toml(path)
    _absolutize(raw, path.parent)
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise RecipeError("extends: must be a file name (string)", "e.g. extends = \"_base.toml\"",
                          path="extends")
    return merge(load_raw(path.parent / parent, _depth + 1), raw)


def _absolutize(raw: dict[str, Any], base: Path) -> None:
    """Paths in a recipe are relative to the recipe's own file (so ``extends`` keeps them right)."""
    teacher = raw.get("teacher")
    if isinstance(teacher, dict):
        for key in ("checkpoint", "recipe"):
            if isinstance(teacher.get(key), str):
                teacher[key] = str((base / teacher[key]).resolve()) if not Path(teacher[key]).is_absolute() \
                    else teacher[key]


def parse_override(item: str) -> tuple[list[str], Any]:
    """``train.epochs=5`` → (["train", "epochs"], 5). Values are TOML; a bare word is a string."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"--set {item!r} is not of the form dotted.key=value", "e.g. --set train.epochs=5")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    except RecursionError:
        raise RecipeError(f"--set {key.strip()}: the value nests too deeply to read",
                          "flatten the nested inline tables and lists") from None
    return key.strip().split("."), parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        keys, value = parse_override(item)
        node = raw
        for k in keys[:-1]:
            if not isinstance(node.setdefault(k, {}), dict):
                raise RecipeError(f"--set {item!r}: {k!r} is not a table", "check the dotted key")
            node = node[k]
        node[keys[-1]] = value
    return raw


