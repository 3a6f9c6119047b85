"""AKD — Maroto, Ortiz-Jiménez & Frossard, "On the Benefits of Knowledge Distillation for Adversarial
Robustness", arXiv:2203.07159 (CoRR), 2022.

Loss: −(1/B)·Σ_i t_i·log q(S(x_adv,i)) with t = λ·p(T(x_adv)) + (1 − λ)·onehot(y) and x_adv from the
``pgd`` attack. It is linear in t, so it is computed as the two terms
λ·(−(1/B)·Σ p(T(x_adv))·log q(S(x_adv))) + (1 − λ)·CE(S(x_adv), y) — the same number, and λ = 0 then
needs no teacher forward.
"""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field

from igdm_kit.interfaces import Method, Options


class AKD(Method):
    description = "AKD (Maroto et al., 2022): CE of S(x_adv) against λ·p(T(x_adv)) + (1 − λ)·onehot(y)"
    default_attack = "pgd"
    needs_teacher = True

    class Options(Options):
        lam: float = Field(0.9, ge=0, le=1, description="weight λ of the teacher's soft labels in the target")

    def teacher_inputs(self, epoch, epochs):
        return {"x_adv"} if self.options.lam > 0 else set()

    def loss(self, ctx):
        lam = self.options.lam
        log_q = F.log_softmax(ctx.student("x_adv"), dim=1)
        terms = {}
        if lam > 0:
            soft = F.softmax(ctx.teacher("x_adv"), dim=1)
            terms["adv_soft_ce"] = lam * -(soft * log_q).sum(dim=1).mean()
        if lam < 1:
            terms["adv_ce"] = (1 - lam) * F.nll_loss(log_q, ctx.y)
        return terms
