"""AdaAD's inner maximization — Huang, Chen, Wang, Lu, Cheng & Wang, "Boosting Accuracy and Robustness
of Student Models via Adaptive Adversarial Distillation", CVPR 2023.

Maximizes L(z) = KL(T(z) ‖ S(z)) (batchmean) from x + 0.001·N(0, I): the point where student and teacher
disagree most. The gradient flows through both models (w.r.t. z only); the teacher runs in eval mode and
its mode is restored afterwards (``TrainingAttackMixin``).
"""

from __future__ import annotations

from igdm_kit.losses import kl_div

from .base import KLAttack


class AdaAD(KLAttack):
    description = "AdaAD attack: max KL(T(x+δ) ‖ S(x+δ)), start x + 0.001·N(0, I) (Huang et al., 2023)"
    needs_teacher = True

    def objective(self, x, y, **kwargs):
        teacher = self.teacher
        return lambda z: kl_div(teacher(z), self.get_logits(z))
