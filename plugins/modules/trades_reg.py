"""TRADES_reg — TRADES' regularizer (Zhang et al., ICML 2019) as a gradient module, the comparison of
Lee, Cho & Kim, "Indirect Gradient Matching for Adversarial Robust Distillation", ICLR 2025, Appendix A.5
(Eq. 13).

    L = KL(S(x) ‖ S(x + β·δ))     (δ = x_adv − x, so with β = 1 this is S(x_adv), reused from the step)

The target S(x) is not detached, as in TRADES' reference. No teacher is needed; γ has no effect here.
"""

from __future__ import annotations

from igdm_kit.interfaces import GradientModule
from igdm_kit.losses import trades_reg_loss


class TradesReg(GradientModule):
    description = "TRADES regularizer (Eq. 13 of Lee et al., ICLR 2025): KL(S(x) ‖ S(x+δ)), no teacher"
    needs_teacher = False

    per_sample = True

    def loss(self, ctx, reduction: str = "mean"):
        return trades_reg_loss(ctx.student("x"), ctx.student("x_plus"), reduction=reduction)

    def loss_per_sample(self, ctx):
        return self.loss(ctx, reduction="none")
