"""IAD (IAD-I) — Zhu, Yao, Han, Zhang, Liu, Niu, Zhou, Xu & Yang, "Reliable Adversarial Distillation with
Unreliable Teachers", ICLR 2022 (arXiv:2106.04928, 2021).

Loss: for epochs e ≤ W, ARD; for e > W,

    ARD + (1/B)·Σ_i (1 − w_i)·KL_i(S(x_i) ‖ S(x_adv,i)),   w_i = p(T(x_adv,i))[y_i]^β_iad (a constant),

with x_adv from the ``pgd`` attack. The less the teacher trusts its own adversarial prediction (small
w_i), the more the student is asked to agree with itself on x and x_adv ("introspection"). The target
S(x) is not detached (as the reference). The reference also multiplies this term by α_ard; the spec does
not (the same at the default α_ard = 1).

Warmup: ``warmup`` (60) is given for the reference's 200-epoch schedule. With ``scale_warmup`` (default)
the introspection starts after W = warmup·E/200 epochs, so a shorter run keeps the same fraction of ARD
epochs (E = 200: epochs 1–60 are ARD, as the reference's 0-based ``epoch >= 60``; E = 50: W = 15).
``scale_warmup = false`` takes ``warmup`` as an absolute epoch count. W need not be an integer: the test is
e > W.

The introspection pieces live here; AdaIAD (``adaiad.py``) reuses them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from igdm_kit.interfaces import Options

from .ard import ARD

#: The schedule the reference's warmup was given for.
REFERENCE_EPOCHS = 200


class IntrospectionOptions(Options):
    warmup: int = Field(60, ge=0, description="epochs of plain distillation before introspection starts "
                        "(for a 200-epoch run; see scale_warmup)")
    scale_warmup: bool = Field(True, description="scale warmup by E/200 for a run of E epochs; false: warmup "
                               "counts epochs as given")
    beta_iad: float = Field(0.1, ge=0, description="exponent β of the teacher's confidence w = p_T(y)^β")


def introspection_active(options: IntrospectionOptions, epoch: int, epochs: int) -> bool:
    """Whether epoch e (1-based) of E is past the warmup W."""
    warmup = options.warmup * epochs / REFERENCE_EPOCHS if options.scale_warmup else options.warmup
    return epoch > warmup


def introspection_loss(ctx, beta_iad: float) -> torch.Tensor:
    """(1/B)·Σ_i (1 − w_i)·KL_i(S(x_i) ‖ S(x_adv,i)), w_i = p(T(x_adv,i))[y_i]^β_iad."""
    with torch.no_grad():
        w = F.softmax(ctx.teacher("x_adv"), dim=1).gather(1, ctx.y[:, None]).squeeze(1).pow(beta_iad)
    log_p, log_q = F.log_softmax(ctx.student("x"), dim=1), F.log_softmax(ctx.student("x_adv"), dim=1)
    kl_per_sample = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(dim=1)
    return ((1 - w) * kl_per_sample).mean()


class Introspective:
    """Mixed in before a distillation method: adds the introspection term after the warmup, with the
    inputs it needs (S(x), S(x_adv), T(x_adv)). Its ``Options`` must include ``IntrospectionOptions``."""

    def teacher_inputs(self, epoch, epochs):
        extra = {"x_adv"} if introspection_active(self.options, epoch, epochs) else set()
        return super().teacher_inputs(epoch, epochs) | extra

    def loss(self, ctx):
        terms = super().loss(ctx)
        if introspection_active(self.options, ctx.epoch, ctx.epochs):
            terms["introspect_kl"] = introspection_loss(ctx, self.options.beta_iad)
        return terms


class IAD(Introspective, ARD):
    description = "IAD-I (Zhu et al., 2022): ARD, then + (1/B)·Σ(1 − w_i)·KL_i(S(x) ‖ S(x_adv)) after warmup"

    class Options(IntrospectionOptions, ARD.Options):
        pass
