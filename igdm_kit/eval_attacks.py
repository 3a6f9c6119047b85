"""The evaluation attacks, in one table: name → labels and how to build the attack.

Everything that lists evaluation attacks derives from ``EVAL_ATTACKS``: the recipe schema's
``[eval] attacks``, the labels of the CLI tables, the sweep's columns and ``igdm_kit.evaluation``. Importing
this module does not import torch (the recipe schema and ``--help`` need the names only); the factories
import it when called.

* ``clean``: accuracy on x;
* ``fgsm``: one step x + ε·sign(∇_x CE), no random start (torchattacks' ``FGSM``);
* ``pgd20``: PGD on CE, 20 steps of 2/255 from a uniform random start (torchattacks' ``PGD``);
* ``cw``: CW-∞, PGD on the margin loss max_{j≠y} z_j − z_y, 30 steps of 2/255, uniform random start
  (``igdm_kit.evaluation.CWLinf``; torchattacks' ``CW`` is the L2 attack, not this one);
* ``autoattack``: the official AutoAttack (``pyautoattack``, version ``standard``), resumable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

#: The step size of the paper's white-box attacks (Section 4.1).
STEP_SIZE = 2 / 255


@dataclass(frozen=True)
class EvalAttack:
    name: str
    #: the column header of ``eval`` / ``run`` tables, e.g. "PGD-20"
    label: str
    #: the compact header of multi-column tables (the sweep), e.g. "AA"
    short: str
    #: ``clean`` (no attack), ``white-box`` (``build(model, eps)`` → a torchattacks attack, run per batch)
    #: or ``autoattack`` (the official package, driven with a resumable state file)
    kind: Literal["clean", "white-box", "autoattack"]
    build: Callable[[Any, float], Any] | None = None


def _fgsm(model, eps: float):
    import torchattacks

    return torchattacks.FGSM(model, eps=eps)


def _pgd20(model, eps: float):
    import torchattacks

    return torchattacks.PGD(model, eps=eps, alpha=STEP_SIZE, steps=20, random_start=True)


def _cw(model, eps: float):
    from .evaluation import CWLinf

    return CWLinf(model, eps=eps, alpha=STEP_SIZE, steps=30, random_start=True)


EVAL_ATTACKS: dict[str, EvalAttack] = {a.name: a for a in (
    EvalAttack("clean", "Clean", "Clean", "clean"),
    EvalAttack("fgsm", "FGSM", "FGSM", "white-box", _fgsm),
    EvalAttack("pgd20", "PGD-20", "PGD-20", "white-box", _pgd20),
    EvalAttack("cw", "CW-∞", "CW-∞", "white-box", _cw),
    EvalAttack("autoattack", "AutoAttack", "AA", "autoattack"),
)}

#: The names in the paper's order (the default attack list of ``[eval]`` and ``igdm-kit eval``).
ATTACKS: tuple[str, ...] = tuple(EVAL_ATTACKS)
#: The names as a type, for the recipe schema.
AttackName = Literal[ATTACKS]  # type: ignore[valid-type]


def labels() -> dict[str, str]:
    """name → column header, e.g. {"pgd20": "PGD-20", ...}."""
    return {a.name: a.label for a in EVAL_ATTACKS.values()}
