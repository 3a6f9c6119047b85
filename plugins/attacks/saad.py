"""SAAD's inner maximization — Lee et al., "Sample-wise Adaptive Adversarial Distillation", TMLR 2026
(HongsinLee/saad @ 295121c, ``attacks.py`` L138-194 ``saad_inner_loss``; ``shared/spec/recent-methods/saad.md``).

AdaAD's attack with the teacher linearized on the true class: once per batch g_i = ∇_x T(x)_{i, y_i} (one
teacher forward and backward at x, in eval mode), then from z₀ = x + 0.001·N(0, I) K steps ascending

    L(z) = Σ_i KL(T̃_i ‖ S(z_i)),   T̃_i = T(x_i) with T̃_{i, y_i} += λ·⟨g_i, z_i − x_i⟩

(the gradient flows through S(z) and through δ = z − x in T̃). It costs K student passes and one teacher
pass where ``adaad`` costs K teacher passes. λ = ``lam`` (official ``lambda_inner`` = 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from igdm_kit.losses import kl_per_sample

from .base import KLAttack, KLAttackOptions


class SAADOptions(KLAttackOptions):
    lam: float = Field(1.0, ge=0, description="λ: how far the linearized teacher's true-class logit moves "
                                              "with ⟨∇_x T_y(x), δ⟩ (official lambda_inner = 1)")


class SAAD(KLAttack):
    description = ("SAAD attack: max Σ KL(T_lin ‖ S(x+δ)), T_lin = T(x) + λ⟨∇T_y(x), δ⟩ on the true class "
                   "(Lee et al., 2026)")
    needs_teacher = True
    Options = SAADOptions

    def objective(self, x, y, **kwargs):
        xg = x.clone().requires_grad_(True)
        with torch.enable_grad():
            t = self.teacher(xg)
            (g,) = torch.autograd.grad(t.gather(1, y[:, None]).sum(), xg)
        t, g = t.detach(), g.detach().flatten(1)
        onehot = F.one_hot(y, t.shape[1]).to(t.dtype)
        lam = self.options.lam

        def loss(z: torch.Tensor) -> torch.Tensor:
            shift = lam * (g * (z - x).flatten(1)).sum(1)
            return kl_per_sample(t + onehot * shift[:, None], self.get_logits(z)).sum()
        return loss
