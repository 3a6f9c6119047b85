"""Values written on the command line: radii (``--eps 8/255``), threat models, attack lists, and component specs: ``--attack pgd:steps=50,restarts=5``, ``--shift
corruptions:severities=[1,3,5]`` and comma lists whose items may hold brackets (``--attacks``, ``--shifts``).

The tables they give are validated like a recipe's (``igdm_kit._recipe.specs``).
"""

from __future__ import annotations

import tomllib
from fractions import Fraction
from typing import Any

from igdm_kit._recipe.specs import DEFAULT_ATTACKS, eps_text  # noqa: F401 - eps_text: the commands' import
from igdm_kit.errors import IgdmKitError


def split_items(text: str) -> list[str]:
    """``a=1,b=[2,3]`` → ["a=1", "b=[2,3]"]: commas inside brackets or quotes do not split."""
    parts, depth, quote, cur = [], 0, "", ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        cur += ch
    return [p.strip() for p in [*parts, cur] if p.strip()]


def parse_cli_spec(text: str, flag: str = "--attack",
                   example: str = "--attack pgd:steps=50,restarts=5") -> dict[str, Any]:
    """``pgd:steps=50,restarts=5`` → {"name": "pgd", "steps": 50, "restarts": 5} (values read as TOML;
    commas inside brackets or quotes, e.g. ``attacks=["apgd-ce","square"]``, do not split)."""
    name, _, rest = text.strip().partition(":")
    spec: dict[str, Any] = {"name": name.strip()}
    for item in split_items(rest):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise IgdmKitError(f"{flag} {text!r}: {item!r} is not key=value", f"write e.g. {example}")
        try:
            spec[key.strip()] = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            spec[key.strip()] = value.strip()
    return spec


def parse_cli_shift(text: str) -> dict[str, Any]:
    """``corruptions:severities=[1,3],corruptions=["fog"]`` → a table (``parse_cli_spec``)."""
    return parse_cli_spec(text, flag="--shift", example="--shift corruptions:severities=[1,3,5]")


def parse_eps(text: str, norm: str = "Linf") -> float:
    """``--eps 8/255`` → 0.0314; a radius no one means under ``norm`` (negative; at L∞, above 1, the pixel
    range) is refused here, before anything loads."""
    try:
        value = float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise IgdmKitError(f"--eps {text!r} is not a number", "write e.g. 8/255 or 0.03") from None
    if value < 0:
        raise IgdmKitError(f"--eps {text!r} is negative", "ε is a radius, ≥ 0")
    if norm == "Linf" and value > 1:
        raise IgdmKitError(f"--eps {text!r}: an L∞ ε above 1 exceeds the pixel range [0, 1]",
                           f"did you mean {text.strip()}/255?")
    return value


def parse_threat(text: str) -> str:
    """``--threat linf`` → ``Linf`` (L2, L1 alike)."""
    norms = {"linf": "Linf", "l2": "L2", "l1": "L1"}
    if text.lower() not in norms:
        raise IgdmKitError(f"--threat {text!r} is not a threat model", "use Linf, L2 or L1")
    return norms[text.lower()]


def parse_attacks(text: str | None, specs: list[str]) -> list[Any]:
    """``--attacks a,b`` (names) and every ``--attack name:key=value,...`` (one attack with options)."""
    names = [a.strip().lower() for a in (text or "").split(",") if a.strip()]
    if text is not None and not names:
        raise IgdmKitError("--attacks names no attack", "e.g. --attacks " + ",".join(DEFAULT_ATTACKS))
    items: list[Any] = list(dict.fromkeys(names)) + [parse_cli_spec(s) for s in specs]
    return items or list(DEFAULT_ATTACKS)


def arch_options(items: list[str]) -> dict[str, Any]:
    """``--arch-opt key=value`` (and ``--data-opt``) items as options (values read as TOML)."""
    from igdm_kit._recipe import parse_override

    out = {}
    for item in items:
        keys, value = parse_override(item)
        out[".".join(keys)] = value
    return out
