"""Writing resolved recipes as TOML (``tomli-w``), with unset keys shown as comments.

TOML has no null: a key whose value is None is left out of the data and written as
``# key = (not set)`` right under its table's header — or, when the caller knows the value it runs with
(``_recipe.effective``), ``# key = value (where it comes from)`` — so ``recipe show`` lists every key.
"""

from __future__ import annotations

from typing import Any

import tomli_w


def _unset(data: dict[str, Any], prefix: str = "") -> dict[str, list[str]]:
    """table path → keys that are None there."""
    out: dict[str, list[str]] = {}
    for k, v in data.items():
        if v is None:
            out.setdefault(prefix, []).append(k)
        elif isinstance(v, dict):
            for table, keys in _unset(v, f"{prefix}.{_key(k)}" if prefix else _key(k)).items():
                out.setdefault(table, []).extend(keys)
    return out


def _without_none(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _without_none(v) if isinstance(v, dict) else v for k, v in data.items() if v is not None}


def _key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else tomli_w.dumps({k: 0}).split(" =")[0]


class Words(str):
    """A value shown as the words it is (``all``, ``none``), not as a TOML string."""


def value_text(v: Any) -> str:
    if isinstance(v, Words):
        return str(v)
    if isinstance(v, list):
        return "[" + ", ".join(value_text(x) for x in v) + "]"
    return tomli_w.dumps({"v": v}).split("=", 1)[1].strip()


def to_toml(data: dict[str, Any], notes: dict[str, dict[str, tuple[Any, str]]] | None = None) -> str:
    """The TOML text of a resolved recipe; ``tomllib.loads`` reads back ``data`` without its None keys.

    ``notes`` (table → key → (value, where it comes from)): the value a key left unset or absent runs with,
    written as a comment in place of ``(not set)`` — ``# hflip = true (image-folder's default)``."""
    text = tomli_w.dumps(_without_none(data))
    unset = _unset(data)
    notes = notes or {}

    def comments(table: str) -> list[str]:
        given = notes.get(table, {})
        keys = list(dict.fromkeys([*unset.get(table, []), *given]))
        return [f"# {_key(k)} = {value_text(given[k][0])} ({given[k][1]})" if k in given else f"# {_key(k)} = (not set)"
                for k in keys]

    out: list[str] = comments("")
    for line in text.splitlines():
        out.append(line)
        if line.startswith("[") and line.endswith("]"):
            out.extend(comments(line[1:-1]))
    return "\n".join(out).strip("\n") + "\n"
