"""Fair-ARD — Yue, Zhang, Sun, Wang & Gao (Revisiting Adversarial Robustness Distillation from the
Perspective of Robust Fairness), NeurIPS 2023; written from the official code, NISP-official/Fair-ARD @
910c8cd (``Fair-ARD.py`` L116-170), as ``shared/spec/recent-methods/fair_ard.md``.

ARD with class weights w from the classes' geometric difficulty: κ_i = the number of PGD iterates
z_0 … z_{K−1} the student classified correctly (the ``pgd`` attack's side output), summed per class over
an epoch; at its end

    κ̄_c = (Σ_{i: y_i = c} κ_i) / (N/C),   w̃_c = (κ̄_c + 1e-5)^(−β),   w_c = clip(C·w̃_c / Σ_c' w̃_c', lo, hi)

(normalized to mean 1, *then* clipped; β = 2, [lo, hi] = [5/6, 5/2]); the first epoch uses w = 1. The loss:

    L = α·τ²·(1/B) Σ_i w_{y_i}·(1/C) Σ_c KL_c(T(x_i)/τ ‖ S(x_adv,i)/τ) + (1 − α)·(1/B) Σ_i w_{y_i} CE(S(x_i), y_i)

(per-sample ``nn.KLDivLoss()`` = mean over the C classes; α = 1, τ = 30). Run with the attack the official
code uses: ``pgd`` with ``bn_mode = "train"``, ``clamp_start = false`` (its recipes set them). Fair-IAD and
Fair-RSLAD are ``fair_variants.py``; Fair-MTARD is not implemented.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from igdm_kit.interfaces import Method, Options, SampleTerm
from igdm_kit.losses import kl_per_sample


def class_weights(kappa_sums: torch.Tensor, num_samples: int, beta: float, low: float, high: float,
                  offset: float = 1e-5) -> torch.Tensor:
    """w_c = clip(C·w̃_c / Σ w̃, low, high), w̃_c = (Σκ_c / (N/C) + offset)^(−β) (``weight_assign``)."""
    c = kappa_sums.shape[0]
    raw = (kappa_sums.to(torch.float64) / (num_samples / c) + offset) ** (-beta)
    return (c * raw / raw.sum()).clamp(low, high)


class FairARD(Method):
    description = "Fair-ARD (Yue et al., NeurIPS 2023): ARD with per-class weights from PGD's κ, per epoch"
    default_attack = "pgd"
    needs_teacher = True
    stateful = True
    weights_module = True
    attack_outputs = frozenset({"kappa"})

    class Options(Options):
        alpha_ard: float = Field(1.0, ge=0, le=1, description="weight α of the KD term; 1 − α weighs the "
                                                              "class-weighted CE(S(x), y)")
        temperature: float = Field(30.0, gt=0, description="temperature τ of the KD term (official: 30)")
        beta: float = Field(2.0, ge=0, description="exponent β of the class weights, (κ̄_c + 1e-5)^(−β)")
        clip_low: float = Field(5 / 6, gt=0, description="lower clip of the normalized class weights")
        clip_high: float = Field(5 / 2, gt=0, description="upper clip of the normalized class weights")

        @model_validator(mode="after")
        def _clip_order(self):
            if self.clip_low > self.clip_high:
                raise ValueError(f"clip_low ({self.clip_low}) must not exceed clip_high ({self.clip_high})")
            return self

    def __init__(self, options: Options) -> None:
        super().__init__(options)
        self.weights: torch.Tensor | None = None  # [C]; None: every class 1 (the first epoch)

    def teacher_inputs(self, epoch, epochs):
        return {"x"} if self.options.alpha_ard > 0 else set()

    def sample_weights(self, y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if self.weights is None:
            return torch.ones(y.shape[0], dtype=dtype, device=y.device)
        return self.weights.to(device=y.device, dtype=dtype)[y]

    def loss(self, ctx):
        o, terms = self.options, {}
        s_adv = ctx.student("x_adv")
        w = self.sample_weights(ctx.y, s_adv.dtype)
        if o.alpha_ard > 0:
            kl = kl_per_sample(ctx.teacher("x"), s_adv, temperature=o.temperature, classes="mean")
            terms["adv_kl"] = SampleTerm(o.alpha_ard * kl, w)
        if o.alpha_ard < 1 or ctx.reference:  # the official code computes S(x) even at α = 1
            s_x = ctx.student("x")
            if o.alpha_ard < 1:
                terms["nat_ce"] = SampleTerm((1 - o.alpha_ard) * F.cross_entropy(s_x, ctx.y, reduction="none"), w)
        return terms

    def module_weights(self, ctx):
        return self.sample_weights(ctx.y, ctx.x.dtype)

    # -- state: κ per class over the epoch → class weights at its end -------------------------------------------
    def step_statistics(self, ctx):
        return {"kappa": ctx.attack_output("kappa")}

    def on_epoch_end(self, epoch, stats, schedule):
        o = self.options
        self.weights = class_weights(stats.sums["kappa"], stats.num_samples, o.beta, o.clip_low, o.clip_high)

    def state_dict(self):
        return {} if self.weights is None else {"class_weights": self.weights}

    def load_state_dict(self, state):
        self.weights = state.get("class_weights")
