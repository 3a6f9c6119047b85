"""AdaIAD — Huang, Chen, Wang, Lu, Cheng & Wang, "Boosting Accuracy and Robustness of Student Models via
Adaptive Adversarial Distillation", CVPR 2023 (AdaAD with IAD's introspection: Zhu et al., "Reliable
Adversarial Distillation with Unreliable Teachers", ICLR 2022).

Loss: AdaAD, λ·KL(T(x_adv) ‖ S(x_adv)) + (1 − λ)·KL(T(x) ‖ S(x)), and after the warmup (e > W, as IAD)

    + (1/B)·Σ_i (1 − w_i)·KL_i(S(x_i) ‖ S(x_adv,i)),   w_i = p(T(x_adv,i))[y_i]^β_iad (a constant),

so the teacher is evaluated at x_adv for both the distillation and w_i (one batched forward). x_adv comes
from the ``adaad`` attack. Warmup and β_iad work as in IAD (``iad.py``). ``temperature`` τ turns both AdaAD
terms into KL_τ (default 1; the official AdaIAD code defaults to τ = 30, spec "Reference behaviours");
``kl_reduction`` (from AdaAD) applies to those two terms too. The introspection term keeps the spec's
per-sample batch mean at τ = 1.
"""

from __future__ import annotations

from pydantic import Field

from .adaad import AdaAD
from .iad import IntrospectionOptions, Introspective


class AdaIAD(Introspective, AdaAD):
    description = "AdaIAD (Huang et al., 2023): AdaAD + IAD's introspection after warmup"

    class Options(IntrospectionOptions, AdaAD.Options):
        temperature: float = Field(1.0, gt=0, description="temperature τ of both AdaAD terms, KL_τ = "
                                   "τ²·KL(·/τ ‖ ·/τ) (the official AdaIAD code: 30)")

    @property
    def temperature(self) -> float:
        return self.options.temperature
