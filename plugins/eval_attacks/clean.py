"""Clean accuracy: the model's prediction on x itself."""

from __future__ import annotations

from igdm_kit.interfaces import EvalAttack


class Clean(EvalAttack):
    description = "clean accuracy (no attack)"
    label = short = "Clean"
    norms = ("Linf", "L2", "L1")

    def robust(self, model, x, y, ctx):
        return ctx.per_batch(model, x, y, lambda xb, yb: xb)
