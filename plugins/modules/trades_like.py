"""IGDM_TRADES-like — Lee, Cho & Kim, "Indirect Gradient Matching for Adversarial Robust Distillation",
ICLR 2025, Appendix A.5 (Eq. 12): IGDM with the teacher's logit difference replaced by 0, an ablation
showing that the teacher's difference is what makes IGDM work.

    L = KL(S(x⁻) ‖ S(x⁺)),   x⁺ = x + β·δ,  x⁻ = x − γ·δ

Both sides are the student's and both carry gradient. No teacher is needed.
"""

from __future__ import annotations

from igdm_kit.interfaces import GradientModule
from igdm_kit.losses import trades_like_loss


class IGDMTradesLike(GradientModule):
    description = "IGDM_TRADES-like (Lee et al., ICLR 2025, Eq. 12): KL(S(x−δ) ‖ S(x+δ)), no teacher"
    needs_teacher = False

    per_sample = True

    def loss(self, ctx, reduction: str = "mean"):
        return trades_like_loss(ctx.student("x_plus"), ctx.student("x_minus"), reduction=reduction)

    def loss_per_sample(self, ctx):
        return self.loss(ctx, reduction="none")
