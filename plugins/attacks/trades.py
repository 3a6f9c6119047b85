"""TRADES' inner maximization — Zhang, Yu, Jiao, Xing, El Ghaoui & Jordan, "Theoretically Principled
Trade-off between Robustness and Accuracy", ICML 2019.

Maximizes L(z) = KL(S(x) ‖ S(z)) (batchmean) from x + 0.001·N(0, I). S(x) is computed once, in the same
model mode as the attack, and held fixed. At z = x the exact gradient is zero: the small Gaussian start is
what gets the ascent going. With ``random_start = false`` the first step follows the sign of rounding noise
(there is no principled direction), so keep the random start for this attack.
"""

from __future__ import annotations

import torch

from igdm_kit.losses import kl_div

from .base import KLAttack


class TRADES(KLAttack):
    description = "TRADES attack: max KL(S(x) ‖ S(x+δ)), start x + 0.001·N(0, I) (Zhang et al., 2019)"

    def objective(self, x, y, **kwargs):
        with torch.no_grad():
            target = self.get_logits(x)  # called inside the attack, so in the attack's mode
        return lambda z: kl_div(target, self.get_logits(z))
