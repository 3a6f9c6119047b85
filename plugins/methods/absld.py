"""ABSLD — Zhao, Wang, Wang, Chen, Lu & Xu, "Improving Adversarial Robust Fairness via Anti-Bias Soft Label
Distillation", NeurIPS 2024 (zhaoshiji123/ABSLD @ 7407c3a, ``resnet18_absld_cifar10.py``); written from
``shared/spec/recent-methods/absld.md``.

RSLAD with class-wise teacher temperatures τ^adv, τ^nat ∈ R^C: t^k_i = T(x_i)/τ^k_{y_i} (copies; the cached T(x)
is untouched) and, with KLm the element-wise mean KL (÷ B·C),

    L = s·(5/6·KLm(t^adv ‖ S(x_adv)) + 1/6·KLm(t^nat ‖ S(x)))       (no τ², the student's logits unscaled)

x_adv from ``rslad`` with t^adv as its target (``attack_target``). Over an epoch the student's per-sample CE
of the same forwards is summed per class (A^adv, A^nat); at its end, after r ×0.1 if the lr decays,
τ^k ← clip(τ^k − r·g/max_c|g_c|, 0.5, 5), g = A^k − mean_c A^k: the hardest class's soft labels sharpen by r
(a row whose classes' errors are all equal stays, where the official code's 0/0 gives NaN).
τ = 1 and r = 0.1 at the start; s = 1 (CIFAR-10's script; ×10 is RSLAD's CIFAR-100 convention).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from igdm_kit.interfaces import Method, Options

from .mtard import klm


class ABSLD(Method):
    description = "ABSLD (Zhao et al., NeurIPS 2024): RSLAD with class-wise teacher temperatures from the classes' error"
    default_attack = "rslad"
    needs_teacher = True
    stateful = True

    class Options(Options):
        scale: float = Field(1.0, gt=0, description="s of the loss (1: the CIFAR-10 script; RSLAD's 10 on CIFAR-100)")
        rate: float = Field(0.1, gt=0, le=10, description="r, the largest change of a temperature per epoch "
                                                          "(×rate_decay with the lr)")
        rate_decay: float = Field(0.1, gt=0, le=1, description="factor of r whenever the lr decays")
        temperature_range: tuple[float, float] = Field((0.5, 5.0), description="[lo, hi] of the temperatures")
        temperature_product: bool = Field(False, description="both terms and the attack use T(x)/(τ^adv·τ^nat), "
                                          "as the official code does through aliased tensors (the paper: each its own)")
        log_offset: float = Field(0.0, ge=0, le=1e-3, description="log(p + offset) in the KL, as the official "
                                  "code (1e-5)")

    def __init__(self, options: Options) -> None:
        super().__init__(options)
        self.tau: torch.Tensor | None = None  # [2, C]: τ^adv, τ^nat; None: all 1
        self.rate = options.rate
        self._ce: dict[str, torch.Tensor] = {}

    def teacher_inputs(self, epoch, epochs):
        return {"x"}

    def targets(self, ctx) -> tuple[torch.Tensor, torch.Tensor]:
        """(t^adv, t^nat): copies of T(x), row i divided by the temperatures of class y_i."""
        def scaled(k: int):
            def apply(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                if self.tau is None:
                    return t
                tau = self.tau.to(t.device, t.dtype)
                return t / (tau[0, y] * tau[1, y] if self.options.temperature_product else tau[k, y])[:, None]
            return apply
        return ctx.teacher_transformed("x", scaled(0)), ctx.teacher_transformed("x", scaled(1))

    def attack_target(self, ctx):
        return self.targets(ctx)[0]

    def loss(self, ctx):
        o = self.options
        t_adv, t_nat = self.targets(ctx)
        s_adv, s_x = ctx.student("x_adv"), ctx.student("x")
        # the classes' error risk: the CE of the loss's own forwards (read by step_statistics, no new pass)
        self._ce = {f"ce_{k}": F.cross_entropy(s.detach(), ctx.y, reduction="none")
                    for k, s in (("adv", s_adv), ("nat", s_x))}
        return {"adv_kl": o.scale * 5 / 6 * klm(t_adv, s_adv, o.log_offset),
                "nat_kl": o.scale * 1 / 6 * klm(t_nat, s_x, o.log_offset)}

    def step_statistics(self, ctx):
        return self._ce

    def on_epoch_end(self, epoch, stats, schedule):
        o = self.options
        if schedule.decayed:  # before this epoch's update, as the official code
            self.rate *= o.rate_decay
        tau = torch.ones(2, stats.num_classes, dtype=torch.float64) if self.tau is None else self.tau
        g = torch.stack([stats.sums["ce_adv"], stats.sums["ce_nat"]]).to(torch.float64)
        g = g - g.mean(dim=1, keepdim=True)
        top = g.abs().amax(dim=1, keepdim=True)
        # every class's error equal (g = 0): the row stays (the official 0/0 gives NaN temperatures)
        step = torch.where(top > 0, g / top.clamp(min=torch.finfo(g.dtype).tiny), torch.zeros_like(g))
        self.tau = (tau - self.rate * step).clamp(*o.temperature_range)

    def state_dict(self):
        return {"rate": self.rate, **({"tau": self.tau} if self.tau is not None else {})}

    def load_state_dict(self, state):
        self.rate = state.get("rate", self.options.rate)
        self.tau = state.get("tau")
