"""AdaAD — Huang, Chen, Wang, Lu, Cheng & Wang, "Boosting Accuracy and Robustness of Student Models via
Adaptive Adversarial Distillation", CVPR 2023.

Loss: λ·KL(T(x_adv) ‖ S(x_adv)) + (1 − λ)·KL(T(x) ‖ S(x)), λ = 1 (the reference always uses 1), with x_adv
from the ``adaad`` attack (max KL(T(z) ‖ S(z)), through both models). ``teacher_in_attack = false``
replaces that attack by ``pgd`` on the student alone ("AdaAD w/o T_in", Table 6 of the IGDM paper); the
recipe learns it from ``attack_for``. ``kl_reduction = "mean"`` is ``nn.KLDivLoss()``'s element-wise mean
(batchmean / C) of AdaAD's official CIFAR-10 branch; its CIFAR-100 branch and the IGDM reference use
batchmean (spec, "Reference behaviours").
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from igdm_kit.interfaces import Method, Options
from igdm_kit.losses import kl_div


class AdaAD(Method):
    description = "AdaAD (Huang et al., 2023): λ·KL(T(x_adv) ‖ S(x_adv)) + (1 − λ)·KL(T(x) ‖ S(x))"
    default_attack = "adaad"
    needs_teacher = True

    class Options(Options):
        lam: float = Field(1.0, ge=0, le=1, description="weight λ of the adversarial term; 1 − λ weighs "
                           "the clean term KL(T(x) ‖ S(x))")
        teacher_in_attack: bool = Field(True, description="inner attack through the teacher ('adaad'); false: "
                                        "'pgd' on the student alone (\"w/o T_in\")")
        kl_reduction: Literal["batchmean", "mean"] = Field(
            "batchmean", description="KL reduction: batchmean (the spec, the IGDM reference) or mean = "
                                     "batchmean / C (nn.KLDivLoss(), AdaAD's official CIFAR-10 code)")

    #: τ of both KL terms: 1 for AdaAD (its reference has none); AdaIAD makes it an option.
    @property
    def temperature(self) -> float:
        return 1.0

    def kl(self, target, logits):
        """KL_τ(target ‖ logits) with the method's temperature and reduction."""
        return kl_div(target, logits, temperature=self.temperature, reduction=self.options.kl_reduction)

    @classmethod
    def attack_for(cls, options) -> str:
        return cls.default_attack if options.teacher_in_attack else "pgd"

    def teacher_inputs(self, epoch, epochs):
        lam = self.options.lam
        return ({"x_adv"} if lam > 0 else set()) | ({"x"} if lam < 1 else set())

    def loss(self, ctx):
        lam = self.options.lam
        terms = {}
        if lam > 0:
            terms["adv_kl"] = lam * self.kl(ctx.teacher("x_adv"), ctx.student("x_adv"))
        # AdaAD's reference code always runs T(x) and S(x), even at weight 0; with reference_passes the
        # engine reproduces those forwards (and the student's BatchNorm update) without adding the term.
        if lam < 1 or ctx.reference:
            t_x, s_x = ctx.teacher("x"), ctx.student("x")
            if lam < 1:
                terms["nat_kl"] = (1 - lam) * self.kl(t_x, s_x)
        return terms
