"""Writing resolved recipes as TOML (``tomli-w``), with unset keys shown as comments.

TOML has no null: a key whose value is None is left out of the data and written as
``# key = (not set)`` right under its table's header, so ``recipe show`` still lists every key.
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


def to_toml(data: dict[str, Any]) -> str:
    """The TOML text of a resolved recipe; ``tomllib.loads`` reads back ``data`` without its None keys."""
    text = tomli_w.dumps(_without_none(data))
    unset = _unset(data)
    lines = text.splitlines()
    out: list[str] = []
    out.extend(f"# {_key(k)} = (not set)" for k in unset.get("", []))
    for line in lines:
        out.append(line)
        if line.startswith("[") and line.endswith("]"):
            out.extend(f"# {_key(k)} = (not set)" for k in unset.get(line[1:-1], []))
    return "\n".join(out).strip("\n") + "\n"
