"""DGAD — Park, Jung, Lee & Lee, "Dynamic Guidance Adversarial Distillation with Enhanced Teacher Knowledge",
ECCV 2024 (spec: ``shared/spec/recent-methods/dgad.md``, from kunsaram01/DGAD @ a0329c8).

With the ``adaad`` attack, S(x), S(x_adv), t^o = T(x), t^a = T(x_adv):

    MAP  Λ_i = 1[argmax t^o_i ≠ y_i], M = Σ Λ_i — samples the teacher gets wrong are distilled at x, the rest at x_adv
    ELS  t̃^o_i: t^o_i with y_i and argmax t^o_i swapped (Λ_i = 1); t̃^a_i: t^a_i with y_i and the strongest other
         class swapped where the teacher is fooled (t^a_{i,y} < max_{j≠y} t^a_ij) — on copies of the teacher's outputs
    L = (M/b)·(1/M) Σ Λ_i KL_i(t̃^o_i ‖ S(x_i)) + ((b − M)/b)·(1/(B − M)) Σ (1 − Λ_i) KL_i(t̃^a_i ‖ S(x_adv,i))
        + γ·MSE(p(S(x_adv)), p(S(x)))                                    (PCR; ÷ B·C, gradient through both)

b = B, the batch (``nominal_batch = 128`` is the official code's fixed ``args.bs``, which weighs a last, partial
batch differently). A batch the teacher gets all wrong (M = B) has no adversarial part, where the official code
divides by zero. Its DGAD_IAD1 variant is DGAD exactly (its introspection KL compares S with itself: the spec).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from igdm_kit.interfaces import Method, Options
from igdm_kit.losses import kl_div, swap_classes


class DGAD(Method):
    description = "DGAD (Park et al., ECCV 2024): MAP + ELS distillation at x or x_adv, + γ·PCR"
    default_attack = "adaad"
    needs_teacher = True

    class Options(Options):
        gamma: float = Field(1.0, ge=0, description="weight γ of the prediction-consistency term (PCR)")
        nominal_batch: int | None = Field(None, gt=0, description="b of the weights M/b, (b − M)/b; default the "
                                          "batch's size (128: the official code's fixed args.bs, a quirk)")

    def teacher_inputs(self, epoch, epochs):
        return {"x", "x_adv"}

    def loss(self, ctx):
        y, s_x, s_adv = ctx.y, ctx.student("x"), ctx.student("x_adv")
        t_o, t_a = ctx.teacher("x"), ctx.teacher("x_adv")
        wrong = t_o.argmax(1) != y  # Λ
        t_o = swap_classes(t_o, y, t_o.argmax(1), wrong)
        others = t_a.detach().scatter(1, y[:, None], float("-inf"))  # max over j ≠ y
        fooled = t_a.gather(1, y[:, None]).squeeze(1) < others.max(1).values
        t_a = swap_classes(t_a, y, others.argmax(1), fooled)
        n, m = y.shape[0], wrong.sum()
        b = self.options.nominal_batch or n
        kl_clean = kl_div(t_o, s_x, reduction="none")
        kl_adv = kl_div(t_a, s_adv, reduction="none")
        clean = (kl_clean * wrong).sum() / (m + 1e-10)
        adv = (kl_adv * ~wrong).sum() / (n - m) if int(m) < n else s_adv.sum() * 0.0
        terms = {"kd": (m / b) * clean + ((b - m) / b) * adv}
        if self.options.gamma > 0:
            terms["pcr"] = self.options.gamma * F.mse_loss(F.softmax(s_adv, 1), F.softmax(s_x, 1))
        return terms
