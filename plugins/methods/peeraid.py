"""PeerAiD — Jung, Lee, Lee & Kang, "PeerAiD: Improving Adversarial Distillation from a Specialized Peer
Tutor", CVPR 2024 (jaewonalive/PeerAiD @ cd12e92, ``main.py`` L315-432); written from
``shared/spec/recent-methods/peeraid.md``.

No pretrained teacher: a peer P of ``[peer]``'s architecture is trained from scratch beside the student S on
the student's own adversarial examples, and the student distils it. x_adv comes from ``rslad`` against the
peer's eval-mode P(x) (``attack_target``). With KLm the element-wise mean KL (÷ B·C), τ and τ_r temperatures,

    L_peer = γ1·CE(P(x_adv), y) + γ2·τ_r²·KLm(S(x_adv)/τ_r ‖ P(x_adv)/τ_r)
    L_S    = λ1·CE(S(x_adv), y) + λ2·τ²·KLm(P(x_adv)/τ ‖ S(x_adv)/τ) + λ3·τ²·KLm(S(x)/τ ‖ S(x_adv)/τ)

one backward of L_peer + L_S, then both optimizers step (the engine's R2). The student's target in L_S is the
detached P(x_adv); its clean term's target S(x) is not detached (as the official code). In L_peer the student's
S(x_adv) is detached by default (the paper's peer loss); ``detach_peer_target = false`` lets γ2's term reach
the student too, as the official code does. Defaults: CIFAR-10 (τ 5, τ_r 1, λ = (0, 1, 1), γ = (1, 0.1));
CIFAR-100 has γ2 = 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from igdm_kit.interfaces import Method, Options

from .mtard import klm


class PeerAiD(Method):
    description = "PeerAiD (Jung et al., CVPR 2024): distil a peer trained online on the student's attacks"
    default_attack = "rslad"
    needs_peer = True
    supplies_attack_target = True

    class Options(Options):
        temperature: float = Field(5.0, gt=0, description="τ of the student's KD terms")
        peer_temperature: float = Field(1.0, gt=0, description="τ_r of the peer's agreement term")
        lambda_ce: float = Field(0.0, ge=0, description="λ1: CE(S(x_adv), y)")
        lambda_kd: float = Field(1.0, ge=0, description="λ2: τ²·KLm(P(x_adv)/τ ‖ S(x_adv)/τ)")
        lambda_nat: float = Field(1.0, ge=0, description="λ3: τ²·KLm(S(x)/τ ‖ S(x_adv)/τ)")
        gamma_ce: float = Field(1.0, ge=0, description="γ1: the peer's CE(P(x_adv), y)")
        gamma_kd: float = Field(0.1, ge=0, description="γ2: τ_r²·KLm(S(x_adv)/τ_r ‖ P(x_adv)/τ_r) (CIFAR-100: 1)")
        detach_peer_target: bool = Field(True, description="the peer's agreement term does not train the "
                                         "student (false: it does, as the official code)")

    def attack_target(self, ctx):
        return ctx.peer_eval("x")

    def loss(self, ctx):
        o = self.options
        a, s = ctx.peer("x_adv"), ctx.student("x_adv")
        tau, tau_r = o.temperature, o.peer_temperature
        terms = {}
        if o.gamma_ce:
            terms["peer_ce"] = o.gamma_ce * F.cross_entropy(a, ctx.y)
        if o.gamma_kd:
            target = s.detach() if o.detach_peer_target else s
            terms["peer_kl"] = o.gamma_kd * tau_r ** 2 * klm(target / tau_r, a / tau_r)
        if o.lambda_ce:
            terms["adv_ce"] = o.lambda_ce * F.cross_entropy(s, ctx.y)
        if o.lambda_kd:
            terms["adv_kl"] = o.lambda_kd * tau ** 2 * klm(a.detach() / tau, s / tau)
        if o.lambda_nat:
            terms["nat_kl"] = o.lambda_nat * tau ** 2 * klm(ctx.student("x") / tau, s / tau)
        return terms or {"zero": torch.zeros((), device=ctx.x.device)}
