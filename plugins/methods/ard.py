"""ARD — Goldblum, Fowl, Feizi & Goldstein, "Adversarially Robust Distillation", AAAI 2020.

Loss: α_ard·KL_τ(T(x) ‖ S(x_adv)) + (1 − α_ard)·CE(S(x), y), with KL_τ(a ‖ b) = τ²·KL(a/τ ‖ b/τ) and x_adv
from the ``pgd`` attack on the student. Defaults α_ard = 1, τ = 1 (the original ARD used τ = 30).
"""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field

from igdm_kit.interfaces import Method, Options
from igdm_kit.losses import kl_div


class ARD(Method):
    description = "ARD (Goldblum et al., 2020): α·KL_τ(T(x) ‖ S(x_adv)) + (1 − α)·CE(S(x), y)"
    default_attack = "pgd"
    needs_teacher = True

    class Options(Options):
        alpha_ard: float = Field(1.0, ge=0, le=1, description="weight α_ard of the distillation term; "
                                 "1 − α_ard weighs CE(S(x), y)")
        temperature: float = Field(1.0, gt=0, description="distillation temperature τ (original ARD: 30)")

    def teacher_inputs(self, epoch, epochs):
        return {"x"} if self.options.alpha_ard > 0 else set()

    def loss(self, ctx):
        a, tau = self.options.alpha_ard, self.options.temperature
        terms = {}
        # ARD's reference code always runs S(x), first, even at weight 0; with reference_passes the
        # engine reproduces that forward (and its BatchNorm update) without adding the term.
        s_x = ctx.student("x") if a < 1 or ctx.reference else None
        if a > 0:
            terms["adv_kl"] = a * kl_div(ctx.teacher("x"), ctx.student("x_adv"), temperature=tau)
        if a < 1:
            terms["nat_ce"] = (1 - a) * F.cross_entropy(s_x, ctx.y)
        return terms
