"""Reading recipe files: TOML, ``extends`` inheritance, paths relative to the recipe, ``--set`` overrides.

Paths: every ``PathOption`` a recipe file writes (``data.root``, ``teacher.checkpoint``, ``teacher.recipe``,
``output.dir``, any plugin option typed ``PathOption``) is relative to *that file* — a base named by
``extends`` keeps its own folder — and is made absolute here; a path given with ``--set`` is relative to the
working directory, as the shell's paths are; a default (``root = "data"``) is left as written.

``extends = "base.toml"`` (relative to the recipe) inherits a recipe: tables merge key by key, except that
a section whose component changes (``[method] name``, ``[student] model``, ...) replaces the parent's
section, since the parent's options belong to another component.
"""

from __future__ import annotations

import tomllib
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from igdm_kit.errors import RecipeError, storage_error

MAX_EXTENDS_DEPTH = 16


_COMPONENT_KEY = {"data": "name", "student": "model", "method": "name", "module": "name", "attack": "name",
                  "teacher": "model"}


def _read_toml(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise RecipeError(f"{str(path)!r} is a folder, not a recipe file", "name a .toml file in it")
    if not path.is_file():
        raise RecipeError(f"recipe file {str(path)!r} does not exist", _near(path))
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


def _near(path: Path) -> str:
    """A hint for a recipe that is not there: the file meant (``quickstart`` → recipes/quickstart.toml)."""
    import difflib

    name = path.name if path.suffix == ".toml" else f"{path.name}.toml"
    candidates = [path.with_name(name), Path("recipes") / name, *sorted(Path("recipes").rglob(name))]
    found = next((str(c) for c in candidates if c.is_file()), None)
    if found:
        return f"did you mean {found}?"
    known = sorted(str(p) for p in Path("recipes").glob("*.toml")) if Path("recipes").is_dir() else []
    close = difflib.get_close_matches(str(path), known, n=2, cutoff=0.6)
    return ("did you mean " + " or ".join(close) + "?") if close else "check the path"


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
    """The recipe's TOML with ``extends`` resolved; every path it holds is absolute, resolved against the
    file that wrote it (``resolve_paths``)."""
    path = Path(path)
    if _depth > MAX_EXTENDS_DEPTH:
        raise RecipeError(f"recipe {str(path)!r}: `extends` nests deeper than {MAX_EXTENDS_DEPTH}",
                          "check for a cycle of extends")
    raw = _read_toml(path)
    parent = raw.pop("extends", None)
    if parent is None:
        resolve_paths(raw, raw, path.parent)
        return raw
    if not isinstance(parent, str):
        raise RecipeError("extends: must be a file name (string)", "e.g. extends = \"_base.toml\"",
                          path="extends")
    merged = merge(load_raw(path.parent / parent, _depth + 1), raw)
    resolve_paths(raw, merged, path.parent)
    return merged


#: section → (component kind, the key naming the component) for the sections whose options are a component's
_COMPONENT_KIND = {"data": ("dataset", "name"), "student": ("model", "model"), "peer": ("model", "model"),
                   "method": ("method", "name"),
                   "module": ("module", "name"), "attack": ("attack", "name")}


def _path_keys(section: str, merged: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    """The keys of a section that hold paths: ``PathOption`` fields of the schema or of the component, each
    with its keywords (values that are no path)."""
    from igdm_kit._plugins.describe import path_keywords
    from igdm_kit._recipe.schema import RecipeModel

    if section in _COMPONENT_KIND:
        kind, ident = _COMPONENT_KIND[section]
        name = merged.get(section, {}).get(ident) if isinstance(merged.get(section), dict) else None
        if not isinstance(name, str):
            return {}
        from igdm_kit._plugins.manager import registry
        from igdm_kit.errors import UnknownComponentError

        try:
            return path_keywords(registry(kind).entry(name).options_model)
        except UnknownComponentError:
            return {}  # validation names the unknown component
    field = RecipeModel.model_fields.get(section)
    sub = next((a for a in (field.annotation, *typing.get_args(field.annotation))
                if isinstance(a, type) and issubclass(a, BaseModel)), None) if field else None
    return path_keywords(sub) if sub else {}


def resolve_paths(written: dict[str, Any], merged: dict[str, Any], base: Path) -> None:
    """Make the relative paths ``written`` sets absolute against ``base``, in ``merged`` (one rule: a path is
    relative to the recipe file that writes it; the command line's ``--set``, to the working directory)."""
    for section, values in written.items():
        if not isinstance(values, dict) or not isinstance(merged.get(section), dict):
            continue
        if section == "teachers":  # a table of teacher sections, one per role: [teacher]'s path keys
            for role, table in values.items():
                if isinstance(table, dict) and isinstance(merged[section].get(role), dict):
                    _absolute(table, merged[section][role], _path_keys("teacher", merged), base)
            continue
        _absolute(values, merged[section], _path_keys(section, merged), base)


def _absolute(written: dict[str, Any], merged: dict[str, Any], keys: dict[str, tuple[str, ...]],
              base: Path) -> None:
    for key, keywords in keys.items():
        value = written.get(key)
        if value in keywords:
            continue
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            merged[key] = str((base / value).resolve())
        elif isinstance(value, str) and value.startswith("~"):
            merged[key] = str(Path(value).expanduser())


def _split_key(item: str) -> tuple[str, str]:
    """``key=value`` at the first ``=`` outside quotes (a TOML key may quote dots: ``sweep."module.alpha"``)."""
    quote = None
    for i, ch in enumerate(item):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == "=":
            return item[:i], item[i + 1:]
    raise RecipeError(f"--set {item!r} is not of the form dotted.key=value", "e.g. --set train.epochs=5")


def parse_key(key: str, item: str) -> list[str]:
    """A dotted TOML key as its parts: ``sweep."module.alpha"`` → ["sweep", "module.alpha"]."""
    try:
        node: Any = tomllib.loads(f"{key.strip()} = 0")
    except tomllib.TOMLDecodeError:
        raise RecipeError(f"--set {item!r}: {key.strip()!r} is not a dotted key",
                          "e.g. --set train.epochs=5, or quote a key holding dots: 'sweep.\"module.alpha\"=[6]'"
                          ) from None
    parts = []
    while isinstance(node, dict):
        (k, node), = node.items()
        parts.append(k)
    return parts


def parse_value(text: str) -> Any:
    """A TOML value (``5``, ``"a"``, ``[1, 2]``); else a comma list as ``--grid`` takes it (``clean,pgd20``, one
    item: ``clean,``), each item TOML or a bare word; else the bare word as a string."""
    text = text.strip()
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        pass
    if "," in text:
        items = text.split(",")
        if items[-1].strip() == "":
            items = items[:-1]
        return [parse_value(i) for i in items]
    return text


def parse_override(item: str) -> tuple[list[str], Any]:
    """``train.epochs=5`` → (["train", "epochs"], 5); ``eval.attacks=clean,pgd20`` → a list (``parse_value``)."""
    key, value = _split_key(item)
    try:
        item.encode("utf-8")
    except UnicodeEncodeError:  # bytes of the command line that are not UTF-8 arrive as lone surrogates
        shown = key.strip().encode("utf-8", "replace").decode()
        raise RecipeError(f"--set {shown}: the value is not UTF-8 text",
                          "recipes, manifests and results are UTF-8: rename the file or folder to a UTF-8 name "
                          "(or link it under one) and give that", path=shown) from None
    if not key.strip():
        raise RecipeError(f"--set {item!r} is not of the form dotted.key=value", "e.g. --set train.epochs=5")
    try:
        parsed = parse_value(value)
    except RecursionError:
        raise RecipeError(f"--set {key.strip()}: the value nests too deeply to read",
                          "flatten the nested inline tables and lists") from None
    return parse_key(key, item), parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each ``--set`` item in ``raw``; a path it gives is relative to the working directory."""
    given: dict[str, Any] = {}
    for item in overrides:
        keys, value = parse_override(item)
        for tree in (raw, given):
            node = tree
            for k in keys[:-1]:
                if not isinstance(node.setdefault(k, {}), dict):
                    raise RecipeError(f"--set {item!r}: {k!r} is not a table", "check the dotted key")
                node = node[k]
            node[keys[-1]] = value
    resolve_paths(given, raw, Path.cwd())
    return raw
