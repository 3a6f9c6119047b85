"""Shared behaviour of the training attacks: options, exact mode restoring, teacher plumbing."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from igdm_kit.interfaces import AttackOptions


class TrainingAttackMixin:
    """Mixed into a ``torchattacks.Attack`` subclass.

    torchattacks only puts a model back into train mode after an attack (``_recover_model_mode``), so an
    attack with ``bn_mode="train"`` would leave an eval-mode model training. This mixin records the mode of
    every submodule before the attack and restores exactly that afterwards. It also pins the attack to the
    device of its inputs (torchattacks fixes the device when the attack is built).
    """

    Options: ClassVar[type[AttackOptions]] = AttackOptions
    #: The attack differentiates through the teacher (AdaAD) and must be given it.
    needs_teacher: ClassVar[bool] = False
    #: The attack needs the teacher's logits on the clean input, T(x), passed as ``teacher_logits=``.
    needs_teacher_clean_logits: ClassVar[bool] = False
    description: ClassVar[str] = ""

    options: AttackOptions

    def _configure(self, options: AttackOptions) -> None:
        self.options = options
        self.set_model_training_mode(model_training=options.bn_mode == "train",
                                     batchnorm_training=options.bn_mode == "train")

    def __call__(self, inputs: torch.Tensor, labels: torch.Tensor | None = None, *args, **kwargs):
        modes = [m.training for m in self.model.modules()]
        self.device = inputs.device
        try:
            return super().__call__(inputs, labels, *args, **kwargs)
        finally:
            for m, mode in zip(self.model.modules(), modes, strict=True):
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
