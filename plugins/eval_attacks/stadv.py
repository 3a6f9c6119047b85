"""StAdv — Xiao et al., "Spatially transformed adversarial examples", ICLR 2018, as perceptual-advex's
``StAdvAttack`` (the threat shift of OODRobustBench), written on torch.

x' = bilinear sample of x at the pixel grid displaced by a flow field f (one 2-vector per pixel, in
``grid_sample``'s coordinates where [-1, 1] spans the image; border pixels repeat): only pixel positions
move, no colour is made up. ‖f‖∞ ≤ ε (default 0.05, i.e. 0.8 pixel on 32-pixel images). Adam (lr 0.01)
maximizes the margin minus (0.0025/ε)·L_flow (Xiao et al., Eq. 4). Threat name: ``StAdv``, ε its bound.
"""

from __future__ import annotations

from pydantic import Field

from igdm_kit.interfaces import EvalAttack, Options


class StAdv(EvalAttack):
    description = "StAdv (Xiao et al., 2018): a bounded, smooth flow field moving pixels"
    label = short = "StAdv"
    norms = ("StAdv",)

    class Options(Options):
        iterations: int = Field(100, ge=1, le=100_000, description="Adam steps (OODRobustBench: 100 on CIFAR-10)")
        lr: float = Field(0.01, gt=0, description="Adam's learning rate")
        smoothness: float = Field(0.0025, ge=0, description="λ·ε: weight of the flow's smoothness L_flow")

    @staticmethod
    def warp(x, flow):
        """x sampled at the identity grid + flow (N, H, W, 2), bilinear, border padding."""
        import torch
        import torch.nn.functional as F

        theta = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=x.dtype, device=x.device)
        base = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
        return F.grid_sample(x, base + flow, mode="bilinear", padding_mode="border", align_corners=False)

    def attack(self, model, x, y, eps: float):
        """(x_adv, flow): the attacked images and each one's flow field."""
        import torch

        from .functional import optimise

        o = self.options
        zero = torch.zeros(x.shape[0], x.shape[2], x.shape[3], 2, dtype=x.dtype, device=x.device)
        return optimise(model, x, y, zero, lambda f: self.warp(x, f), lambda f: f.clamp(-eps, eps),
                        lam=o.smoothness / eps if eps > 0 else 0.0, lr=o.lr, steps=o.iterations)

    def robust(self, model, x, y, ctx):
        return ctx.per_batch(model, x, y, lambda xb, yb: self.attack(model, xb, yb, ctx.threat.eps)[0])
