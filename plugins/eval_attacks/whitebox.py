"""White-box gradient attacks on torchattacks: FGSM, PGD on CE or on the margin, with restarts.

* ``fgsm`` — one step of size ε from x, no random start (Goodfellow et al., 2015): torchattacks' ``FGSM``
  at L∞; at L2 the one-step ``PGDL2`` with step ε and no start (the fast gradient method, FGM).
* ``pgd`` — K steps of size η of projected gradient ascent from a uniform random start in the ball (Madry
  et al., 2018) on the CE (torchattacks' ``PGD`` / ``PGDL2``) or on the margin max_{j≠y} z_j − z_y
  (``igdm_kit.attacks.MarginPGD``: torchattacks has no margin-loss PGD); ``restarts`` runs it again
  from new random starts and an image counts as robust only if it survives every restart.
* ``pgd20`` — the paper's PGD-20: CE, 20 steps of 2/255 (L∞; 2.5·ε/20 at L2), random start.
* ``cw`` — the paper's CW-∞: PGD on the margin, 30 steps of 2/255 (L∞; 2.5·ε/30 at L2), random start.

The step size defaults to 2/255 at L∞ and to 2.5·ε/K at L2 (Madry et al.'s L2 rule).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from igdm_kit.interfaces import EvalAttack, Fraction, Options


class FGSM(EvalAttack):
    description = "FGSM: one step of size ε, no random start (L∞; FGM at L2)"
    label = short = "FGSM"

    def make(self, model, threat):
        """The torchattacks attack for ``threat`` against ``model``."""
        import torchattacks

        if threat.norm == "L2":
            return torchattacks.PGDL2(model, eps=threat.eps, alpha=threat.eps, steps=1, random_start=False)
        return torchattacks.FGSM(model, eps=threat.eps)

    def robust(self, model, x, y, ctx):
        return ctx.per_batch(model, x, y, self.make(model, ctx.threat))


class PGDOptions(Options):
    steps: int = Field(20, ge=1, le=100_000, description="number of steps K")
    step_size: Fraction | None = Field(None, gt=0, description="step size η; default 2/255 at L∞, 2.5·ε/K at L2")
    restarts: int = Field(1, ge=1, le=1000, description="random restarts; robust only if robust in all")
    random_start: bool = Field(True, description="start from a uniform random point in the ball")
    loss: Literal["ce", "margin"] = Field("ce", description="ascend the cross-entropy or the margin "
                                          "max_{j≠y} z_j − z_y")


class PGD(EvalAttack):
    description = "PGD on CE or the margin, K steps, random start, restarts (Madry et al., 2018)"
    label = short = "PGD"
    Options = PGDOptions

    def step_size(self, threat) -> float:
        o = self.options
        if o.step_size is not None:
            return o.step_size
        return 2 / 255 if threat.norm == "Linf" else 2.5 * threat.eps / o.steps

    def make(self, model, threat):
        """The torchattacks attack for ``threat`` against ``model`` (one restart)."""
        import torchattacks

        from igdm_kit.attacks import MarginPGD

        o, eta = self.options, self.step_size(threat)
        if o.loss == "margin":
            return MarginPGD(model, eps=threat.eps, alpha=eta, steps=o.steps, random_start=o.random_start,
                             norm=threat.norm)
        cls = torchattacks.PGDL2 if threat.norm == "L2" else torchattacks.PGD
        return cls(model, eps=threat.eps, alpha=eta, steps=o.steps, random_start=o.random_start)

    def robust(self, model, x, y, ctx):
        attack = self.make(model, ctx.threat)
        flags = ctx.per_batch(model, x, y, attack)
        for _ in range(self.options.restarts - 1):  # the worst case per image over the restarts
            flags &= ctx.per_batch(model, x, y, attack)
        return flags


class PGD20(PGD):
    description = "the paper's PGD-20: CE, 20 steps of 2/255, random start"
    label = short = "PGD-20"


class CWOptions(PGDOptions):
    steps: int = Field(30, ge=1, le=100_000, description="number of steps K")
    loss: Literal["ce", "margin"] = Field("margin", description="the margin max_{j≠y} z_j − z_y")


class CW(PGD):
    description = "the paper's CW-∞: PGD on the margin max_{j≠y} z_j − z_y, 30 steps of 2/255, random start"
    label = short = "CW-∞"
    Options = CWOptions
