"""Which evaluation attacks and shifts to run: specs from a recipe's ``[eval] attacks`` / ``[eval] shifts`` or
``igdm-kit eval --attack`` / ``--shift`` (parsed from the command line by ``igdm_kit._cli.specs``).

Evaluation attacks are a registered plugin kind (``register_eval_attacks``, ``interfaces.EvalAttack``);
the built-ins are in ``igdm_kit_plugins.eval_attacks``. A spec is a name (``"pgd20"``), a table
(``{ name = "pgd", steps = 50, restarts = 5 }``) or, on the command line, ``pgd:steps=50,restarts=5``.
Each spec is validated by the attack's own ``Options`` and against the threat model's norm; its ``key``
(the name, plus its options when given) names its results. Importing this module does not import torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from igdm_kit.errors import RecipeError, UnknownComponentError
from igdm_kit.interfaces.evaluation import DEFAULT_EPS, LP_NORMS

#: The paper's attacks (Section 4.1), the default of ``[eval] attacks`` and ``igdm-kit eval``.
DEFAULT_ATTACKS: tuple[str, ...] = ("clean", "fgsm", "pgd20", "cw", "autoattack")
NORMS = LP_NORMS
#: The key of the worst case per image over every attack run.
WORST = "worst"
#: Attacks run on the test set and on every shifted set (the robust accuracy is their worst case).
DEFAULT_SHIFT_ATTACKS: tuple[str, ...] = ("clean", "pgd20", "cw")


@dataclass(frozen=True)
class EvalSpec:
    name: str
    options: BaseModel
    #: the name, with the options given (``pgd(restarts=5,steps=50)``): the key of its results
    key: str
    label: str
    short: str


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v).replace(" ", "")


def component_spec(kind: str, item: Any, at: str, noun: str, example: str):
    """One recipe entry naming a component of ``kind`` — a name, or a table with ``name`` and its options —
    as (name, the options given, the registry entry, the validated options); one-line errors at ``at``."""
    from igdm_kit._plugins.manager import registry

    raw = {"name": item} if isinstance(item, str) else dict(item) if isinstance(item, dict) else None
    if raw is None or not isinstance(raw.get("name"), str):
        raise RecipeError(f"{at}: {noun} is a name or a table with a name", example, path=at)
    name = raw.pop("name")
    try:
        entry = registry(kind).entry(name)
    except UnknownComponentError as exc:
        raise RecipeError(f"{at}: unknown {noun.split()[-1]} {name!r}", exc.hint, path=at) from None
    try:
        options = entry.options_model.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise RecipeError(f"{at}{'.' + loc if loc else ''}: {err['msg']}",
                          f"options of {name!r}: {', '.join(entry.options_model.model_fields) or 'none'}",
                          path=f"{at}.{loc}" if loc else at) from None
    return name, raw, entry, options


def resolve(items: list[Any], norm: str, where: str = "eval.attacks") -> list[EvalSpec]:
    """Validated specs for ``items`` (names or tables) under threat ``norm``; one-line errors name the key."""
    from igdm_kit._plugins.manager import registry

    specs: list[EvalSpec] = []
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        name, raw, entry, options = component_spec("eval_attack", item, at, "an attack",
                                                   'e.g. "pgd20" or { name = "pgd", steps = 50, restarts = 5 }')
        cls = entry.component
        if norm not in cls.norms:
            raise RecipeError(f"{at}: {name!r} has no {norm} version (it supports {', '.join(cls.norms)})",
                              f"drop it from the attacks or use threat = {cls.norms[0]!r}", path=at)
        given = ",".join(f"{k}={_fmt(v)}" for k, v in sorted(raw.items()))
        key = f"{name}({given})" if given else name
        label = (cls.label or name) + (f" ({given.replace(',', ', ')})" if given else "")
        specs.append(EvalSpec(name, options, key, label, (cls.short or cls.label or name) + ("*" if given else "")))
    keys = [s.key for s in specs]
    dup = next((k for k in keys if keys.count(k) > 1), None)
    if dup:
        raise RecipeError(f"{where}: {dup!r} is listed twice", "list each attack (with its options) once",
                          path=where)
    if not specs:
        raise RecipeError(f"{where}: no attack selected", "known: " + ", ".join(registry("eval_attack").names()),
                          path=where)
    return specs


def eps_text(eps: float) -> str:
    """8/255 for radii on the 1/255 grid, else the number itself."""
    k = eps * 255
    return f"{round(k)}/255" if eps and abs(k - round(k)) < 1e-6 else f"{eps:g}"


def check_eps(eps: float, norm: str, where: str = "eval.eps", dims: int | None = None) -> None:
    """Refuse radii no one means: negative or non-finite, an L∞ ε above 1 (pixels lie in [0, 1]), or an Lp
    ε larger than the whole image cube's diameter (``dims`` = C·H·W, when known)."""
    if not math.isfinite(eps) or eps < 0:
        raise RecipeError(f"{where}: ε = {eps} is not a radius", "give a finite number ≥ 0, e.g. 8/255",
                          path=where)
    if norm == "Linf" and eps > 1:
        raise RecipeError(f"{where}: an L∞ ε of {eps:g} exceeds the pixel range [0, 1]",
                          f"did you mean {eps:g}/255?", path=where)
    if dims is not None and norm in ("L2", "L1"):
        diameter = math.sqrt(dims) if norm == "L2" else float(dims)
        if eps > diameter:
            raise RecipeError(f"{where}: an {norm} ε of {eps:g} exceeds the largest {norm} distance between two "
                              f"images of this size ({diameter:.4g})",
                              f"{norm} radii are absolute, e.g. {DEFAULT_EPS[norm]:g} (RobustBench's)", path=where)


@dataclass(frozen=True)
class ComponentSpec:
    """A component named in a recipe list (``[eval] shifts``, ``[train] callbacks``), its options validated."""

    name: str
    options: BaseModel
    #: the name, with the options given (``corruptions(severities=[1,3])``): unique in its list
    key: str


ShiftSpec = ComponentSpec


def resolve_components(kind: str, items: list[Any], where: str, noun: str, example: str) -> list[ComponentSpec]:
    """Validated specs (names or tables) of ``kind``; one-line errors name the key, a duplicate too."""
    specs = []
    for i, item in enumerate(items):
        name, raw, _, options = component_spec(kind, item, f"{where}[{i}]", noun, example)
        given = ",".join(f"{k}={v}" for k, v in sorted(raw.items())).replace(" ", "")
        specs.append(ComponentSpec(name, options, f"{name}({given})" if given else name))
    keys = [s.key for s in specs]
    dup = next((k for k in keys if keys.count(k) > 1), None)
    if dup:
        raise RecipeError(f"{where}: {dup!r} is listed twice", f"list each {noun.split()[-1]} once", path=where)
    return specs


def resolve_shifts(items: list[Any], where: str = "eval.shifts") -> list[ComponentSpec]:
    """Validated shift specs (names or tables); one-line errors name the key."""
    return resolve_components("shift", items, where, "a shift",
                              'e.g. "corruptions" or { name = "corruptions", severities = [1, 3, 5] }')


def resolve_callbacks(items: list[Any], where: str = "train.callbacks") -> list[ComponentSpec]:
    """Validated training-callback specs (names or tables); one-line errors name the key. A callback that is
    always on (the host's own) is not named: it would run twice."""
    from igdm_kit._plugins.manager import registry

    specs = resolve_components("callback", items, where, "a callback",
                               'e.g. "grad-norm" or { name = "grad-norm", every = 10 }')
    for i, s in enumerate(specs):
        if registry("callback").get(s.name).always_on:
            raise RecipeError(f"{where}[{i}]: callback {s.name!r} is always on", "remove it from the list",
                              path=f"{where}[{i}]")
    return specs
