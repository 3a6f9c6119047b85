"""MI-FGSM — Dong et al., "Boosting Adversarial Attacks with Momentum", CVPR 2018 — as an evaluation
attack: K steps of size ε/K along sign(g_t), with the momentum g_t = μ·g_{t−1} + ∇/‖∇‖₁ (torchattacks'
``MIFGSM``), L∞ only. Registered by this plugin through ``register_eval_attacks``; usable in a recipe's
``[eval] attacks`` and in ``igdm-kit eval --attack mim:steps=10`` like a built-in.
"""

from __future__ import annotations

from pydantic import Field

from igdm_kit.interfaces import EvalAttack, Options


class MIM(EvalAttack):
    description = "MI-FGSM (Dong et al., 2018): momentum iterative FGSM, L∞"
    label = short = "MIM"
    norms = ("Linf",)

    class Options(Options):
        steps: int = Field(10, ge=1, description="iterations K (step ε/K)")
        decay: float = Field(1.0, ge=0, description="momentum μ")

    def robust(self, model, x, y, ctx):
        import torchattacks

        o, eps = self.options, ctx.threat.eps
        attack = torchattacks.MIFGSM(model, eps=eps, alpha=eps / o.steps, steps=o.steps, decay=o.decay)
        return ctx.per_batch(model, x, y, attack)
