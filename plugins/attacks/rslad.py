"""RSLAD's inner maximization — Zi, Zhao, Ma & Jiang, "Revisiting Adversarial Robustness Distillation:
Robust Soft Labels Make Student Better", ICCV 2021.

Maximizes L(z) = KL(T(x) ‖ S(z)) (batchmean) from x + 0.001·N(0, I): the teacher's clean soft labels are
the target. T(x) is computed once per batch: the engine passes it as ``teacher_logits=`` (the same T(x)
the outer loss uses, so the teacher runs once); called without it, the attack evaluates the teacher it
was built with. Side output ``kappa`` (Fair-RSLAD): the iterates z_0 … z_{K−1} the student classified
correctly, from the attack's own (eval-mode) forwards.
"""

from __future__ import annotations

import torch

from igdm_kit.losses import kl_div

from .base import CountsKappa, KLAttack, missing_teacher


class RSLAD(CountsKappa, KLAttack):
    description = "RSLAD attack: max KL(T(x) ‖ S(x+δ)), start x + 0.001·N(0, I) (Zi et al., 2021)"
    needs_teacher_clean_logits = True

    def forward(self, images, labels=None, **kwargs):
        return self.counting(images, labels, lambda: super(RSLAD, self).forward(images, labels, **kwargs))

    def objective(self, x, y, teacher_logits: torch.Tensor | None = None, **kwargs):
        if teacher_logits is None:
            if self.teacher is None:
                raise missing_teacher("rslad")
            with torch.no_grad():
                teacher_logits = self.teacher(x)
        target = teacher_logits.detach()
        return lambda z: kl_div(target, self.get_logits(z))
