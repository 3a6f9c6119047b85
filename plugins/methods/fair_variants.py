"""Fair-IAD and Fair-RSLAD — the robust-fairness framework of Fair-ARD (Yue, Zhang, Sun, Wang & Gao,
NeurIPS 2023) on IAD and RSLAD; written from NISP-official/Fair-ARD @ 910c8cd (``Fair-IAD.py`` L68-224,
``Fair-RSLAD.py`` L40-151), as ``shared/spec/recent-methods/fair_ard.md``.

Each keeps its base method's attack and loss and multiplies every per-sample term by the weight w_{y_i} of
the sample's class; the weights come from the attack's κ (the iterates classified correctly) summed per class
over an epoch, exactly as ``fair-ard`` (``class_weights``), w = 1 in the first epoch.

Fair-IAD (``pgd`` in train mode, unclamped start; τ = 1, α = 1, β_IAD = 0.1, introspection after the warm-up):

    L = α·τ²·(1/B) Σ_i w_{y_i} KL_i(T(x_i)/τ ‖ S(x_adv,i)/τ) + (1 − α)·(1/B) Σ_i w_{y_i} CE(S(x_i), y_i)
        [+ (1/B) Σ_i w_{y_i} (1 − a_i) KL_i(S(x_i) ‖ S(x_adv,i)),  a_i = p(T(x_adv,i))_{y_i}^β_IAD]

(KL_i summed over classes; a_i constant; the target S(x) not detached).

Fair-RSLAD (``rslad``, whose κ counts the eval-mode iterates):

    L = 5/6·(1/B) Σ_i w_{y_i} KLm_i(T(x_i) ‖ S(x_adv,i)) + 1/6·(1/B) Σ_i w_{y_i} KLm_i(T(x_i) ‖ S(x_i))

(KLm_i = the per-sample KL averaged over the C classes, ``nn.KLDivLoss()`` on one row; no RSLAD scale).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from igdm_kit.interfaces import SampleTerm
from igdm_kit.losses import kl_per_sample

from .fair_ard import FairARD, class_weights
from .iad import IntrospectionOptions, introspection_active


class FairIAD(FairARD):
    description = "Fair-IAD (Yue et al., NeurIPS 2023): IAD with per-class weights from PGD's κ, per epoch"

    class Options(IntrospectionOptions, FairARD.Options):
        temperature: float = Field(1.0, gt=0, description="temperature τ of the KD term (official Fair-IAD: 1)")

    def teacher_inputs(self, epoch, epochs):
        extra = {"x_adv"} if introspection_active(self.options, epoch, epochs) else set()
        return super().teacher_inputs(epoch, epochs) | extra

    def loss(self, ctx):
        o, terms = self.options, {}
        s_adv = ctx.student("x_adv")
        w = self.sample_weights(ctx.y, s_adv.dtype)
        if o.alpha_ard > 0:
            kl = kl_per_sample(ctx.teacher("x"), s_adv, temperature=o.temperature)
            terms["adv_kl"] = SampleTerm(o.alpha_ard * kl, w)
        introspect = introspection_active(o, ctx.epoch, ctx.epochs)
        if o.alpha_ard < 1 or introspect or ctx.reference:
            s_x = ctx.student("x")
            if o.alpha_ard < 1:
                terms["nat_ce"] = SampleTerm((1 - o.alpha_ard) * F.cross_entropy(s_x, ctx.y, reduction="none"), w)
            if introspect:
                with torch.no_grad():
                    a = F.softmax(ctx.teacher("x_adv"), dim=1).gather(1, ctx.y[:, None]).squeeze(1).pow(o.beta_iad)
                terms["introspect_kl"] = SampleTerm((1 - a) * kl_per_sample(s_x, s_adv), w)
        return terms


class FairRSLAD(FairARD):
    description = "Fair-RSLAD (Yue et al., NeurIPS 2023): RSLAD with per-class weights from its attack's κ"
    default_attack = "rslad"

    class Options(FairARD.Options):
        alpha_ard: float = Field(5 / 6, ge=0, le=1, description="weight of the adversarial KD term; 1 − α "
                                                                "weighs KLm(T(x) ‖ S(x)) (RSLAD: 5/6)")
        weight_offset: float = Field(1e-5, ge=0, description="ε in w̃_c = (κ̄_c + ε)^(−β); the official "
                                     "Fair-RSLAD has none (0: a class never classified correctly gives NaN)")

    def teacher_inputs(self, epoch, epochs):
        return {"x"}

    def loss(self, ctx):
        o, t_x = self.options, ctx.teacher("x")
        s_adv = ctx.student("x_adv")
        w = self.sample_weights(ctx.y, s_adv.dtype)
        return {"adv_kl": SampleTerm(o.alpha_ard * kl_per_sample(t_x, s_adv, classes="mean"), w),
                "nat_kl": SampleTerm((1 - o.alpha_ard) * kl_per_sample(t_x, ctx.student("x"), classes="mean"), w)}

    def on_epoch_end(self, epoch, stats, schedule):
        o = self.options
        self.weights = class_weights(stats.sums["kappa"], stats.num_samples, o.beta, o.clip_low, o.clip_high,
                                     offset=o.weight_offset)
