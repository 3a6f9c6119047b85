"""TRADES — Zhang, Yu, Jiao, Xing, El Ghaoui & Jordan, "Theoretically Principled Trade-off between
Robustness and Accuracy", ICML 2019.

Loss: CE(S(x), y) + β·KL(S(x) ‖ S(x_adv)), with x_adv from the ``trades`` attack. The target S(x) is
**not** detached (as TRADES' reference): the KL also pulls S(x) towards S(x_adv).
"""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field

from igdm_kit.interfaces import Method, Options
from igdm_kit.losses import kl_div


class TRADES(Method):
    description = "TRADES (Zhang et al., 2019): CE(S(x), y) + β·KL(S(x) ‖ S(x_adv))"
    default_attack = "trades"
    needs_teacher = False

    class Options(Options):
        beta: float = Field(6.0, ge=0, description="weight β of the robustness term KL(S(x) ‖ S(x_adv))")

    def loss(self, ctx):
        nat = ctx.student("x")
        terms = {"nat_ce": F.cross_entropy(nat, ctx.y)}
        if self.options.beta > 0:
            terms["adv_kl"] = self.options.beta * kl_div(nat, ctx.student("x_adv"))
        return terms
