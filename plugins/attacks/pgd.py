"""PGD with cross-entropy (Madry et al., 2018): max_{‖δ‖∞≤ε} CE(S(x+δ), y), uniform random start.

This is torchattacks' own ``PGD`` (which uses ``torch.autograd.grad`` and clamps to the ε-ball and [0,1]
after every step) with igdm-kit's options and exact mode restoring. torchattacks clamps the start
x + U(−ε, ε) to [0, 1]; ``clamp_start = false`` takes the first step from the unclamped start, as the original
ARD and IAD code do (spec, "Reference behaviours"; same random draw, so the two differ only where the
start leaves [0, 1]). ``start = "gaussian"`` starts from x + 0.001·N(0, I), unclamped (MTARD's PGD-CE, R6c).

Side output ``kappa`` (Fair-ARD, NeurIPS 2023): κ_i = #{k < K : argmax S(z_k)_i = y_i}, the iterates
z_0 … z_{K−1} classified correctly before each step (x_adv = z_K is not counted), from the attack's own
forwards (no extra pass).
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
import torchattacks
from pydantic import Field
from torch import nn

from igdm_kit.interfaces import AddedLater, AttackOptions, TrainingAttack

from .base import TrainingAttackMixin, maximize


class PGDOptions(AttackOptions):
    clamp_start: bool = Field(True, description="clamp the uniform start x + U(−ε, ε) to [0, 1] before the "
                                                "first step (torchattacks); false: as the original ARD/IAD")
    start: Annotated[Literal["uniform", "gaussian"], AddedLater()] = Field(
        "uniform", description="random start: x + U(−ε, ε) (Madry et al.), or x + 0.001·N(0, I), unclamped "
                               "(MTARD, B-MTARD)")


class PGD(TrainingAttackMixin, torchattacks.PGD, TrainingAttack):
    description = "PGD on cross-entropy, uniform random start (Madry et al., 2018)"
    Options = PGDOptions
    outputs = frozenset({"kappa"})

    def __init__(self, model: nn.Module, *, options: AttackOptions | None = None,
                 teacher: nn.Module | None = None) -> None:
        options = options or PGDOptions()
        super().__init__(model, eps=options.eps, alpha=options.step_size, steps=options.steps,
                         random_start=options.random_start)
        self._configure(options)
        self._labels: torch.Tensor | None = None
        self._kappa: torch.Tensor | None = None

    def get_logits(self, inputs, labels=None, *args, **kwargs):
        """The attacked model's logits at one iterate, counting its correct predictions (κ)."""
        logits = super().get_logits(inputs, labels, *args, **kwargs)
        if self._labels is not None:
            self._kappa += (logits.detach().argmax(dim=1) == self._labels).long()
        return logits

    def side_outputs(self) -> dict[str, torch.Tensor]:
        return {} if self._kappa is None else {"kappa": self._kappa}

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self._labels = labels.detach().to(images.device)
        self._kappa = torch.zeros_like(self._labels, dtype=torch.long)
        try:
            return self._attack(images, labels)
        finally:
            self._labels = None

    def _attack(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        o = self.options
        gaussian = o.random_start and o.start == "gaussian"
        if (o.clamp_start and not gaussian) or not o.random_start:
            return super().forward(images, labels)
        x, y = images.clone().detach().to(self.device), labels.clone().detach().to(self.device)
        if gaussian:
            start = x + 0.001 * torch.randn_like(x)  # MTARD's start, not clamped
        else:
            start = x + torch.empty_like(x).uniform_(-o.eps, o.eps)  # torchattacks' draw, not clamped
        return maximize(lambda z: F.cross_entropy(self.get_logits(z), y), x, start, o)
