"""RSLAD — Zi, Zhao, Ma & Jiang, "Revisiting Adversarial Robustness Distillation: Robust Soft Labels Make
Student Better", ICCV 2021.

Loss: s·(5/6·KL(T(x) ‖ S(x_adv)) + 1/6·KL(T(x) ‖ S(x))), with x_adv from the ``rslad`` attack (which uses
the same T(x)). s = 0.1 is the scale RSLAD's reference applies relative to batchmean KL; the paper's α for
IGDM_RSLAD assume it. T(x) is a constant (the teacher runs without gradients).
"""

from __future__ import annotations

from pydantic import Field

from igdm_kit.interfaces import Method, Options
from igdm_kit.losses import kl_div


class RSLAD(Method):
    description = "RSLAD (Zi et al., 2021): s·(5/6·KL(T(x) ‖ S(x_adv)) + 1/6·KL(T(x) ‖ S(x)))"
    default_attack = "rslad"
    needs_teacher = True

    class Options(Options):
        scale: float = Field(0.1, gt=0, description="overall scale s of the loss (RSLAD's reference: 0.1)")

    def teacher_inputs(self, epoch, epochs):
        return {"x"}

    def loss(self, ctx):
        s, target = self.options.scale, ctx.teacher("x")
        return {"adv_kl": s * 5 / 6 * kl_div(target, ctx.student("x_adv")),
                "nat_kl": s * 1 / 6 * kl_div(target, ctx.student("x"))}
