"""PGD with cross-entropy (Madry et al., 2018): max_{‖δ‖∞≤ε} CE(S(x+δ), y), uniform random start.

This is torchattacks' own ``PGD`` (which uses ``torch.autograd.grad`` and clamps to the ε-ball and [0,1]
after every step) with igdm-kit's options and exact mode restoring.
"""

from __future__ import annotations

import torchattacks
from torch import nn

from igdm_kit.interfaces import AttackOptions, TrainingAttack

from .base import TrainingAttackMixin


class PGD(TrainingAttackMixin, torchattacks.PGD, TrainingAttack):
    description = "PGD on cross-entropy, uniform random start (Madry et al., 2018)"

    def __init__(self, model: nn.Module, *, options: AttackOptions | None = None,
                 teacher: nn.Module | None = None) -> None:
        options = options or AttackOptions()
        super().__init__(model, eps=options.eps, alpha=options.step_size, steps=options.steps,
                         random_start=options.random_start)
        self._configure(options)
