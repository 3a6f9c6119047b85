"""IGDM — Lee, Cho & Kim, "Indirect Gradient Matching for Adversarial Robust Distillation", ICLR 2025.

The Indirect Gradient Distillation Module (Section 3.3, Eq. 8) matches the student's input gradient with
the teacher's through output differences along the attack's own perturbation δ = x_adv − x:

    L_IGDM = D(S(x⁺) − S(x⁻), T(x⁺) − T(x⁻)),   x⁺ = x + β·δ,  x⁻ = x − γ·δ  (β = γ = 1 in the paper)

By the first-order Taylor expansion (Eq. 4–6) each difference is ≈ J_f(x)·(β + γ)·δ, so matching them
aligns ∂f_S/∂x with ∂f_T/∂x (Eq. 7) without double backprop. D = ``kl``: KL(Δ_T ‖ Δ_S) (batchmean, on
softmaxes of the differences; the default), ``l1`` or ``l2``: mean absolute / squared difference. The
engine adds it as L_base + T(α)·L_IGDM (Eq. 9; T(α) = α·e/E is the ramp of Appendix A.4–A.6 and the
spec).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from igdm_kit.interfaces import GradientModule, ModuleOptions
from igdm_kit.losses import igdm_loss


class IGDM(GradientModule):
    description = "IGDM (Lee et al., ICLR 2025): D(S(x+δ) − S(x−δ), T(x+δ) − T(x−δ)), Eq. 8"
    needs_teacher = True

    class Options(ModuleOptions):
        distance: Literal["kl", "l1", "l2"] = Field(
            "kl", description="D: kl = KL(Δ_T ‖ Δ_S) on softmaxes of the differences; l1/l2 = mean abs/sq"
        )

    def teacher_inputs(self) -> set[str]:
        return {"x_plus", "x_minus"}

    per_sample = True

    def loss(self, ctx, reduction: str = "mean"):
        # With β = 1, x_plus aliases x_adv: S(x⁺) and T(x⁺) are the base method's own passes, reused.
        # Precision: under train.amp = "bf16" every forward's logits come back as float32 (the accelerator's
        # hook), so the differences of nearly equal logits and the KL are float32 arithmetic — subtracting in
        # bf16 would lose the 8-bit mantissa to cancellation; what remains is the forwards' own rounding
        # (about 1 % of Δ on trained models: benchmarks/bf16_igdm_error.py, recipes/bf16/README.md).
        return igdm_loss(ctx.student("x_plus"), ctx.student("x_minus"), ctx.teacher("x_plus"),
                         ctx.teacher("x_minus"), distance=self.options.distance, reduction=reduction)

    def loss_per_sample(self, ctx):
        return self.loss(ctx, reduction="none")
