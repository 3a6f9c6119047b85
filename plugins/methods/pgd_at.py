"""PGD-AT — Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018.

Loss: CE(S(x_adv), y), with x_adv from the ``pgd`` attack (CE, uniform random start).
"""

from __future__ import annotations

import torch.nn.functional as F

from igdm_kit.interfaces import Method


class PGDAT(Method):
    description = "PGD adversarial training (Madry et al., 2018): CE(S(x_adv), y)"
    default_attack = "pgd"
    needs_teacher = False

    def loss(self, ctx):
        return {"adv_ce": F.cross_entropy(ctx.student("x_adv"), ctx.y)}
