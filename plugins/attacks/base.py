"""Shared behaviour of the training attacks: options, exact mode restoring, teacher plumbing, the PGD loop.

Every training attack ascends its loss L(z) by K steps of ``z ← Proj(z + η·sign(∇_z L(z)))`` (spec,
"Inner maximization"); the attacks differ only in L and in the start. ``maximize`` is that loop, and
``KLAttack`` is the base of the KL-objective attacks (TRADES, RSLAD, AdaAD), which start from
x + 0.001·N(0, I) and only say which L they maximize. As in every reference, that start is not clamped: the
first gradient is taken there, and each step's projection then brings z into the ε-ball and [0, 1]
(``clamp_start = true`` projects the start first, as earlier igdm-kit versions did).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from pydantic import Field
from torch import nn
from torchattacks.attack import Attack

from igdm_kit.errors import RecipeError
from igdm_kit.interfaces import AttackOptions, TrainingAttack


class KLAttackOptions(AttackOptions):
    clamp_start: bool = Field(False, description="project the start x + 0.001·N(0, I) into the ε-ball and "
                                                 "[0, 1] before the first step (the references do not)")


class TrainingAttackMixin:
    """Mixed into a ``torchattacks.Attack`` subclass (bases: this, the torchattacks class, then
    ``interfaces.TrainingAttack`` for the contract's flags).

    torchattacks only puts a model back into train mode after an attack (``_recover_model_mode``), so an
    attack with ``bn_mode="train"`` would leave an eval-mode model training. This mixin records the mode of
    every submodule of the student — and of the teacher, if the attack has one (``self.teacher``) — before
    the attack and restores exactly that afterwards; the teacher runs in eval mode during the attack. It
    also pins the attack to the device of its inputs (torchattacks fixes the device when the attack is
    built).
    """

    options: AttackOptions
    teacher: nn.Module | None

    def _configure(self, options: AttackOptions) -> None:
        if not isinstance(options, self.Options):  # shared AttackOptions: this attack's own defaults
            options = self.Options.model_validate(options.model_dump())
        self.options = options
        self.set_model_training_mode(model_training=options.bn_mode == "train",
                                     batchnorm_training=options.bn_mode == "train")

    def __call__(self, inputs: torch.Tensor, labels: torch.Tensor | None = None, *args, **kwargs):
        modules = list(self.model.modules())
        if self.teacher is not None:
            modules += list(self.teacher.modules())
        modes = [m.training for m in modules]
        self.device = inputs.device
        try:
            if self.teacher is not None:
                self.teacher.eval()  # the teacher is never evaluated in train mode (spec, notation)
            return super().__call__(inputs, labels, *args, **kwargs)
        finally:
            for m, mode in zip(modules, modes, strict=True):
                m.training = mode


def project(z: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Proj(z): clamp to the L∞ ball of radius eps around x, then to [0, 1]."""
    return torch.clamp(torch.min(torch.max(z, x - eps), x + eps), 0.0, 1.0)


def eval_teacher(teacher: nn.Module) -> nn.Module:
    """The teacher is always in eval mode with frozen parameters."""
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def gaussian_start(x: torch.Tensor, options: KLAttackOptions) -> torch.Tensor:
    """x + 0.001·N(0, I) (TRADES/RSLAD/AdaAD's start), or x itself when ``random_start`` is off.

    Not clamped, as every reference: near saturated pixels the first gradient is taken just outside
    [0, 1]. ``clamp_start`` projects it into the ε-ball and [0, 1].
    """
    if not options.random_start:
        return x.clone()
    start = x + 0.001 * torch.randn_like(x)
    return project(start, x, options.eps) if options.clamp_start else start


def maximize(loss: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, start: torch.Tensor,
             options: AttackOptions) -> torch.Tensor:
    """K steps of z ← Proj(z + η·sign(∇_z L(z))) from ``start``; returns the detached z.

    The gradient comes from ``torch.autograd.grad`` with respect to z only, so no parameter's ``.grad``
    is touched (student or teacher). The result is always projected (after K ≥ 1 steps that changes
    nothing), so with K = 0 an unclamped start still comes back as a valid point.
    """
    x = x.detach()
    z = start.detach()
    for _ in range(options.steps):
        z.requires_grad_(True)
        (grad,) = torch.autograd.grad(loss(z), z)
        z = project(z.detach() + options.step_size * grad.sign(), x, options.eps)
    return project(z.detach(), x, options.eps)


class CountsKappa:
    """Side output ``kappa`` (Fair-ARD, NeurIPS 2023) for an attack whose every ``get_logits`` call is one
    iterate: κ_i = #{k < K : argmax S(z_k)_i = y_i}, z_0 … z_{K−1} judged before each step (x_adv = z_K is not
    counted), from the attack's own forwards (no extra pass). Listed before the torchattacks class."""

    outputs: ClassVar[frozenset[str]] = frozenset({"kappa"})
    _labels: torch.Tensor | None = None
    _kappa: torch.Tensor | None = None

    def get_logits(self, inputs, labels=None, *args, **kwargs):
        logits = super().get_logits(inputs, labels, *args, **kwargs)
        if self._labels is not None:
            self._kappa += (logits.detach().argmax(dim=1) == self._labels).long()
        return logits

    def side_outputs(self) -> dict[str, torch.Tensor]:
        return {} if self._kappa is None else {"kappa": self._kappa}

    def counting(self, images: torch.Tensor, labels: torch.Tensor | None, attack: Callable[[], torch.Tensor]):
        """``attack()`` with κ counted against ``labels`` (none without labels)."""
        self._labels = None if labels is None else labels.detach().to(images.device)
        self._kappa = None if labels is None else torch.zeros_like(self._labels, dtype=torch.long)
        try:
            return attack()
        finally:
            self._labels = None


class KLAttack(TrainingAttackMixin, Attack, TrainingAttack):
    """A training attack that maximizes a KL objective from x + 0.001·N(0, I); subclasses give
    ``objective(x, y, **kwargs)``, which returns L as a function of z (in the attack's model mode)."""

    Options: ClassVar[type[AttackOptions]] = KLAttackOptions

    def __init__(self, model: nn.Module, *, options: AttackOptions | None = None,
                 teacher: nn.Module | None = None) -> None:
        super().__init__(type(self).__name__, model)
        if self.needs_teacher and teacher is None:
            raise missing_teacher(type(self).__name__.lower())
        self.teacher = teacher
        self._configure(options or self.Options())

    def objective(self, x: torch.Tensor, y: torch.Tensor | None,
                  **kwargs) -> Callable[[torch.Tensor], torch.Tensor]:
        raise NotImplementedError

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        x = images.detach().to(self.device)
        loss = self.objective(x, labels, **kwargs)
        return maximize(loss, x, gaussian_start(x, self.options), self.options)


def missing_teacher(attack: str) -> RecipeError:
    return RecipeError(f"attack {attack!r} needs a teacher and none was given",
                       "add a [teacher] section to the recipe, or choose an attack on the student alone "
                       "('pgd', 'trades')")
