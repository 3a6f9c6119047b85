"""Evaluation contracts: a threat model (``Threat``), an evaluation attack (``EvalAttack``) with the
context it runs in (``EvalContext``), and a benchmark's evaluation protocol (``EvalProtocol``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from igdm_kit.interfaces.options import NoOptions, Options

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch
    from torch import nn


#: The Lp norms; any other threat name is a non-Lp threat an evaluation attack declares in its ``norms``
#: (e.g. "ReColor": a bounded colour map, "StAdv": a bounded flow field), with its own meaning of ``eps``.
LP_NORMS: tuple[str, ...] = ("Linf", "L2", "L1")
#: The default radius per Lp norm (RobustBench's: L∞ 8/255, L2 0.5, L1 12).
DEFAULT_EPS: dict[str, float] = {"Linf": 8 / 255, "L2": 0.5, "L1": 12.0}


@dataclass(frozen=True)
class Threat:
    """An evaluation threat model: the ball ‖δ‖_norm ≤ eps around x, intersected with [0, 1] — or, for a
    non-Lp ``norm`` (see ``LP_NORMS``), the set of images its attack defines with bound ``eps``."""

    norm: str = "Linf"
    eps: float = 8 / 255


@dataclass(frozen=True)
class EvalProtocol:
    """How a benchmark evaluates a model, so that a number is comparable with its leaderboard: what a
    ``TeacherLoader.protocol`` returns for the models it loads (e.g. RobustBench's ImageNet L∞ protocol: its
    5,000 test images, its preprocessing, ε = 4/255, AutoAttack standard). ``igdm-kit eval`` fills every
    setting the user left unset from it, says so, and warns of each one the user set otherwise.

    ``data_options`` are dataset options (as ``--data-opt`` sets them); ``caveat`` says what of the
    protocol cannot be reproduced (the number then differs from the leaderboard's however it is run)."""

    name: str
    threat: str
    eps: float
    eps_text: str
    data_options: dict[str, Any] = field(default_factory=dict)
    attack: str = "autoattack"
    caveat: str | None = None


class EvalContext(Protocol):
    """What an evaluation attack gets besides the model and the data (implemented in
    ``igdm_kit._evaluation.runner``): the threat model, batching, the seed, progress and a place for state."""

    threat: Threat
    batch_size: int
    device: Any
    seed: int | None
    #: a file the attack may keep its progress in, to resume after an interruption (None: not resumable)
    state_path: Any

    def per_batch(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                  perturb: Any) -> torch.Tensor:
        """Robust flags (bool, one per image): ``model`` classifies ``perturb(xb, yb)`` correctly, batch by
        batch on the context's device, progress reported; ``perturb`` returns the attacked batch."""
        ...

    def progress(self, task: str, done: int, total: int) -> None: ...
    def warn(self, message: str) -> None: ...
    def report(self, details: dict[str, Any]) -> None:
        """Extra numbers for the results, under the attack's key in ``details``."""
        ...


class EvalAttack:
    """An evaluation attack, registered by ``register_eval_attacks`` and named in ``[eval] attacks``.

    ``robust(model, x, y, ctx)`` returns one bool per image: still classified correctly under the attack
    within ``ctx.threat`` (the model is in eval mode; its mode is the host's to restore). An attack that
    supports only some norms lists them in ``norms``; a recipe asking for another threat is refused.
    Reported numbers, and the worst case per image across every attack run, come from these flags.
    """

    Options: ClassVar[type[Options]] = NoOptions
    #: the column header of result tables (e.g. "PGD-20"); ``short`` for compact tables (e.g. "AA")
    label: ClassVar[str] = ""
    short: ClassVar[str] = ""
    norms: ClassVar[tuple[str, ...]] = ("Linf", "L2")
    #: keeps its progress in ``ctx.state_path`` (the first resumable attack of a list gets the state file the
    #: user named, e.g. ``--aa-state``; later ones a sibling named after their key)
    resumable: ClassVar[bool] = False
    description: ClassVar[str] = ""

    def __init__(self, options: Options) -> None:
        self.options = options

    def robust(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: EvalContext) -> torch.Tensor:
        raise NotImplementedError
