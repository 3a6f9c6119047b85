"""MART — Wang et al., "Improving Adversarial Robustness Requires Revisiting Misclassified Examples",
ICLR 2020.

Loss, with p = softmax, B the batch size, x_adv from PGD on cross-entropy:

    BCE = CE(S(x_adv), y) − log(1 − max_{k≠y} p(S(x_adv))_k)
    L   = BCE + β · (1/B) Σ_i KL(p(S(x_i)) ‖ p(S(x_adv,i))) · (1 − p(S(x_i))_{y_i})

(the boosted cross-entropy on adversarial examples plus a KL term weighted towards misclassified examples;
β = 6 as in the paper). The small constants guard the logarithm as the reference code does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from igdm_kit.interfaces import Method, Options


class MART(Method):
    description = "MART (Wang et al., 2020): boosted CE on x_adv + misclassification-weighted KL"
    default_attack = "pgd"
    needs_teacher = False

    class Options(Options):
        beta: float = Field(6.0, ge=0, description="weight β of the misclassification-aware KL term")

    def loss(self, ctx):
        logits_adv = ctx.student("x_adv")
        y = ctx.y
        adv_probs = F.softmax(logits_adv, dim=1)
        # the most likely wrong class on x_adv
        top2 = adv_probs.argsort(dim=1)[:, -2:]
        wrong = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
        bce = F.cross_entropy(logits_adv, y) + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), wrong)
        terms = {"bce": bce}
        if self.options.beta:
            nat_probs = F.softmax(ctx.student("x"), dim=1)
            true_probs = nat_probs.gather(1, y[:, None]).squeeze(1)
            kl = (nat_probs * (torch.log(nat_probs + 1e-12) - torch.log(adv_probs + 1e-12))).sum(1)
            terms["robust_kl"] = self.options.beta * (kl * (1.0000001 - true_probs)).mean()
        return terms
