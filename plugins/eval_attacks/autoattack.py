"""AutoAttack — Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020 — from the official package (``pyautoattack``).

``version``: ``standard`` (APGD-CE, APGD-T, FAB-T, Square; what RobustBench reports), ``plus`` (adds
APGD-DLR, FAB and restarts), ``rand`` (APGD-CE/DLR with EOT, for randomized defenses) or ``custom`` with
``attacks``. Run at L∞, L2 or L1 with the threat's ε. Resumable: igdm-kit drives the package one attack
and one batch at a time and saves the robust flags after each (``igdm_kit.attacks.run_autoattack``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from igdm_kit.interfaces import EvalAttack, Options

AttackName = Literal["apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square"]


class AutoAttackEval(EvalAttack):
    description = "AutoAttack (Croce & Hein, 2020), the official package: standard, plus, rand or custom"
    label, short = "AutoAttack", "AA"
    norms = ("Linf", "L2", "L1")
    resumable = True  # its progress is kept in ctx.state_path after every batch

    class Options(Options):
        version: Literal["standard", "plus", "rand", "custom"] = Field(
            "standard", description="the package's version; custom runs `attacks`")
        attacks: list[AttackName] | None = Field(None, description="the attacks of version = \"custom\"")

        @model_validator(mode="after")
        def _custom(self):
            if (self.version == "custom") != (self.attacks is not None):
                raise ValueError("give `attacks` exactly when version = \"custom\"")
            if self.attacks is not None and not self.attacks:
                raise ValueError("attacks must name at least one attack")
            return self

    def robust(self, model, x, y, ctx):
        from igdm_kit.attacks import run_autoattack

        o = self.options
        warnings: list[str] = []
        result = run_autoattack(model, x, y, eps=ctx.threat.eps, norm=ctx.threat.norm, version=o.version,
                                attacks=o.attacks, batch_size=ctx.batch_size, device=ctx.device,
                                seed=ctx.seed, state_path=ctx.state_path, progress=ctx.progress,
                                warnings=warnings)
        for w in warnings:
            ctx.warn(w)
        ctx.report(result["after"])  # robust accuracy after each of its attacks
        return result["robust"]
