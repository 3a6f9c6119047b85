"""SAAD — Lee et al., "Sample-wise Adaptive Adversarial Distillation", TMLR 2026 (by IGDM's authors);
written from HongsinLee/saad @ 295121c (``saad.py`` L46-97, ``utils.py`` L26-53), as
``shared/spec/recent-methods/saad.md``.

IGDM on AdaAD with per-sample weights from the teacher's entropy at x_adv, the ``saad`` attack (a linearized
teacher) and SWA (``[train.swa] start = 95`` of 200). With t⁺ = T(x_adv), H_i the Rényi entropy of order γ of
softmax(t⁺_i) (γ = 1: Shannon, −Σ p log(p + 1e-12)),

    w_i = max(0, s·(H_i − min_j H_j)),   ŵ_i = w_i / (max_j w_j + 1e-8)      (in-batch; s = 5)
    L = (1/B) Σ_i [ w_i·( KL_i(t⁺ ‖ S(x_adv)) + α·(e/E)·KL_i(Δ_T ‖ Δ_S) ) + β·(1 − ŵ_i)·KL_i(T(x) ‖ S(x)) ]

KL_i summed over classes; the weights are constants. The module term is the recipe's ``[module]`` (``igdm``,
the paper's α·e/E), weighted per sample by w through ``module_weights``. With w ≡ 1 and β = 0 this is
AdaAD + IGDM. The weights are not normalized in scale (mean w ≈ s·(mean H − min H), as the official code).
"""

from __future__ import annotations

import torch
from pydantic import Field

from igdm_kit.interfaces import Method, Options, SampleTerm
from igdm_kit.losses import kl_per_sample


def entropy_weights(logits: torch.Tensor, order: float, scale: float) -> torch.Tensor:
    """w_i = max(0, scale·(H_γ(softmax(logits_i)) − min_j H_γ)), constants (``samplewise_renyi_entropy``)."""
    with torch.no_grad():
        p = torch.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=1)  # ≥ fp32
        if order == 1:
            h = -(p * torch.log(p + 1e-12)).sum(1)
        else:
            h = torch.log((p ** order).sum(1)) / (1 - order)
        return (scale * (h - h.min())).clamp_min(0).to(logits.dtype)


class SAAD(Method):
    description = "SAAD (Lee et al., TMLR 2026): AdaAD + a gradient module, each sample weighted by T(x_adv)'s entropy"
    default_attack = "saad"
    needs_teacher = True
    weights_module = True

    class Options(Options):
        beta: float = Field(0.0, ge=0, description="weight β of the clean term (1 − ŵ_i)·KL(T(x) ‖ S(x)) "
                                                   "(official: 0)")
        order: float = Field(1.0, gt=0, description="Rényi order γ of the entropy (1: Shannon; official 1)")
        scale: float = Field(5.0, gt=0, description="s in w_i = s·(H_i − min H) (hard-coded 5 officially)")

    def __init__(self, options: Options) -> None:
        super().__init__(options)
        self._weights: torch.Tensor | None = None

    def teacher_inputs(self, epoch, epochs):
        return {"x_adv"} | ({"x"} if self.options.beta > 0 else set())

    def loss(self, ctx):
        o = self.options
        t_adv = ctx.teacher("x_adv")
        w = entropy_weights(t_adv, o.order, o.scale)
        self._weights = w
        terms = {"adv_kl": SampleTerm(kl_per_sample(t_adv, ctx.student("x_adv")), w)}
        if o.beta > 0 or ctx.reference:  # the official code computes S(x) even at β = 0
            s_x = ctx.student("x")
            if o.beta > 0:
                w_hat = w / (w.max() + 1e-8)
                terms["nat_kl"] = SampleTerm(o.beta * kl_per_sample(ctx.teacher("x"), s_x), 1 - w_hat)
        return terms

    def module_weights(self, ctx):
        return self._weights
