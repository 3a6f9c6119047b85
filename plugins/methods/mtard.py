"""MTARD — Zhao, Yu, Wang, Wang, Lu, Chen, Xu & Cheng, "Enhanced Accuracy and Robustness via Multi-Teacher
Adversarial Distillation", ECCV 2022 (zhaoshiji123/MTARD @ 6480a1b); B-MTARD — its TPAMI 2024 extension
(zhaoshiji123/MTARD-extension @ 93506d6). Written from ``shared/spec/recent-methods/mtard.md``.

Two teachers: the robust ``[teacher]`` at x_adv and a clean one, ``[teachers.clean]`` (e.g. ResNet-56), at x;
x_adv from ``pgd`` with ``start = "gaussian"`` (the recipes set it). With KLm the element-wise mean KL (÷ B·C):

    L_adv = s·KLm(T_adv(x_adv) ‖ S(x_adv)),   L_nat = s·KLm(T_nat(x) ‖ S(x)),   L = w_adv·L_adv + w_nat·L_nat

and the weights follow the terms' progress, from this step's values (averaged over the ranks) before L is
formed: L⁰ = the first step's values, ℓ_k = (L_k / L⁰_k)^b, w_nat ← w_nat − η_w·(w_nat − ℓ_nat/(ℓ_adv + ℓ_nat)),
w_adv = 1 − w_nat (w = ½ at the start; η_w ×0.1 whenever the lr decays). s = 1 (CIFAR-10), 10 (CIFAR-100).

B-MTARD divides each teacher's logits by its temperature (no τ²; s = 1, its only script is CIFAR-10's), the
same weights, and after each
step moves the temperatures by the teachers' entropies: with Ē_k = mean_{i,c} p log(p + 1e-5), p =
softmax(T_k/τ_k), τ_adv ← clip(τ_adv − η_τ·sign(Ē_adv/Ē_nat − 1), 1, 10) and τ_nat likewise with the ratio
inverted (η_τ = 0.001, ×0.1 with the lr). The state (weights, L⁰, temperatures, rates) is committed once per
optimizer step and saved for resume; a ``.item()`` never waits for the device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from igdm_kit.interfaces import Method, Options


def klm(target: torch.Tensor, logits: torch.Tensor, log_offset: float = 0.0) -> torch.Tensor:
    """(1/(B·C))·Σ_i Σ_c p_ic (log(p_ic + offset) − log q_ic), p = softmax(target), q = softmax(logits)."""
    log_q = F.log_softmax(logits, dim=1)
    if log_offset:
        p = F.softmax(target, dim=1)
        return (p * (torch.log(p + log_offset) - log_q)).mean()
    log_p = F.log_softmax(target, dim=1)
    return (log_p.exp() * (log_p - log_q)).mean()


class MTARDOptions(Options):
    scale: float = Field(1.0, gt=0, description="s of both terms: 1 on CIFAR-10, 10 on CIFAR-100 (RSLAD's scale)")
    weight_lr: float = Field(0.025, gt=0, le=1, description="η_w, the weights' rate (×rate_decay with the lr)")
    power: float = Field(1.0, gt=0, description="b in ℓ_k = (L_k/L⁰_k)^b (official \"bert\" = 1)")
    rate_decay: float = Field(0.1, gt=0, le=1, description="factor of the rates whenever the lr decays")
    log_offset: float = Field(0.0, ge=0, le=1e-3, description="log(p + offset) in the KL, as the official code "
                              "(1e-5): no gradient, but it changes the loss values that drive the weights")


class MTARD(Method):
    description = "MTARD (Zhao et al., ECCV 2022): w_adv·KLm(T_adv(x_adv) ‖ S(x_adv)) + w_nat·KLm(T_nat(x) ‖ S(x))"
    default_attack = "pgd"
    needs_teacher = True
    teacher_roles = frozenset({"clean"})
    stateful = True
    Options = MTARDOptions

    def __init__(self, options: Options) -> None:
        super().__init__(options)
        self.w_nat: torch.Tensor | None = None  # 0-d, on the device once a step ran; None: ½
        self.l0: torch.Tensor | None = None     # [2]: the first step's (L_adv, L_nat)
        self.weight_lr = options.weight_lr
        self._pending: dict[str, torch.Tensor] = {}

    def teacher_inputs(self, epoch, epochs):
        return {"x_adv"}

    def role_inputs(self, epoch, epochs):
        return {"clean": {"x"}}

    def terms(self, ctx) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_adv, L_nat), in the official order of the student's forwards (x_adv, then x)."""
        o = self.options
        l_adv = o.scale * klm(ctx.teacher("x_adv"), ctx.student("x_adv"), o.log_offset)
        l_nat = o.scale * klm(ctx.teacher("x", role="clean"), ctx.student("x"), o.log_offset)
        return l_adv, l_nat

    def weights(self, ctx, l_adv: torch.Tensor, l_nat: torch.Tensor) -> torch.Tensor:
        """w_nat after this step's update (a constant); the update is committed in ``on_step_end``."""
        values = ctx.mean_over_ranks(torch.stack([l_adv.detach(), l_nat.detach()]).double())
        l0 = values if self.l0 is None else self.l0.to(values.device)
        ell = (values / l0) ** self.options.power
        w_nat = torch.tensor(0.5, dtype=torch.float64, device=values.device) if self.w_nat is None else \
            self.w_nat.to(values.device)
        w_nat = w_nat - self.weight_lr * (w_nat - ell[1] / (ell[0] + ell[1]))
        self._pending.update(w_nat=w_nat, l0=l0)
        return w_nat

    def loss(self, ctx):
        l_adv, l_nat = self.terms(ctx)
        w_nat = self.weights(ctx, l_adv, l_nat).to(l_adv.dtype)
        return {"adv_kl": (1 - w_nat) * l_adv, "nat_kl": w_nat * l_nat}

    def on_step_end(self, epoch, step, terms):
        self.w_nat, self.l0 = self._pending.get("w_nat", self.w_nat), self._pending.get("l0", self.l0)
        self._pending = {}

    def on_epoch_end(self, epoch, stats, schedule):
        if schedule.decayed:
            self.weight_lr *= self.options.rate_decay

    def state_dict(self):
        state = {"weight_lr": self.weight_lr}
        if self.w_nat is not None:
            state.update(w_nat=self.w_nat.detach().cpu(), l0=self.l0.detach().cpu())
        return state

    def load_state_dict(self, state):
        self.weight_lr = state.get("weight_lr", self.options.weight_lr)
        self.w_nat, self.l0 = state.get("w_nat"), state.get("l0")


class BMTARDOptions(MTARDOptions):
    temperature_lr: float = Field(0.001, gt=0, le=1, description="η_τ, the temperatures' rate (×rate_decay "
                                                                  "with the lr)")
    temperature_range: tuple[float, float] = Field((1.0, 10.0), description="[lo, hi] the temperatures are "
                                                   "clipped to")


class BMTARD(MTARD):
    description = ("B-MTARD (Zhao et al., TPAMI 2024): MTARD with each teacher's temperature balanced by its "
                   "entropy")
    Options = BMTARDOptions

    def __init__(self, options: Options) -> None:
        super().__init__(options)
        self.tau: torch.Tensor | None = None  # [2]: (τ_adv, τ_nat); None: 1, 1
        self.temperature_lr = options.temperature_lr

    def terms(self, ctx):
        o = self.options
        t_adv, t_nat = ctx.teacher("x_adv"), ctx.teacher("x", role="clean")
        tau = torch.ones(2, dtype=torch.float64, device=t_adv.device) if self.tau is None else \
            self.tau.to(t_adv.device)
        t_adv, t_nat = t_adv / tau[0].to(t_adv.dtype), t_nat / tau[1].to(t_nat.dtype)
        entropy = torch.stack([(p * torch.log(p + 1e-5)).mean() for p in (F.softmax(t, dim=1) for t in
                                                                          (t_adv, t_nat))]).double()
        e = ctx.mean_over_ranks(entropy)
        step = self.temperature_lr * torch.stack([torch.sign(e[0] / e[1] - 1), torch.sign(e[1] / e[0] - 1)])
        self._pending["tau"] = (tau - step).clamp(*o.temperature_range)
        return (o.scale * klm(t_adv, ctx.student("x_adv"), o.log_offset),
                o.scale * klm(t_nat, ctx.student("x"), o.log_offset))

    def on_step_end(self, epoch, step, terms):
        self.tau = self._pending.get("tau", self.tau)
        super().on_step_end(epoch, step, terms)

    def on_epoch_end(self, epoch, stats, schedule):
        if schedule.decayed:
            self.temperature_lr *= self.options.rate_decay
        super().on_epoch_end(epoch, stats, schedule)

    def state_dict(self):
        state = {**super().state_dict(), "temperature_lr": self.temperature_lr}
        if self.tau is not None:
            state["tau"] = self.tau.detach().cpu()
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.temperature_lr = state.get("temperature_lr", self.options.temperature_lr)
        self.tau = state.get("tau")
