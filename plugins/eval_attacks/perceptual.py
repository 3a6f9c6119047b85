"""Perceptual attacks in the LPIPS ball d(x, x') ≤ ε (Laidlaw, Singla & Feizi, "Perceptual adversarial
robustness", ICLR 2021; OODRobustBench's threat shifts at ε = 0.5, 40 iterations), on the LPIPS distance of
``lpips.py`` — available when ``lpips_weights`` names the backbone's weights file.

* ``lpa`` — Lagrangian Perceptual Attack: minimize −margin(x') + λ·max(0, d − ε) with steps of LPIPS
  length s (decaying 0.1^(t/T)) along the normalized gradient, the step's pixel length from a finite
  difference of d (h = 0.1); λ ×10 after each of 5 rounds for images still over ε (perceptual-advex's
  ``LagrangePerceptualAttack``).
* ``ppgd`` — Perceptual PGD: steps of LPIPS length 2ε/T along the normalized margin gradient (the same
  finite-difference step length, h = 10⁻³, instead of perceptual-advex's conjugate-gradient step), each
  projected back into the ball.

Both end with a bisection projection onto the segment [x, x'] (the largest fraction still within ε, so the
result is inside the ball; perceptual-advex projects by Newton's method), clamped to [0, 1].
Threat name: ``LPIPS``, ε the bound.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from igdm_kit.interfaces import EvalAttack, Options


class PerceptualOptions(Options):
    lpips_weights: str | None = Field(None, description="LPIPS backbone: alexnet_cifar.pt or torchvision AlexNet")
    iterations: int = Field(40, ge=1, le=100_000, description="steps (per round for LPA)")
    bisection_steps: int = Field(10, ge=1, description="steps of the final projection's bisection")

    @model_validator(mode="after")
    def _weights(self):
        if self.lpips_weights is None:
            raise ValueError("needs the LPIPS backbone: set lpips_weights = \"alexnet_cifar.pt\" (a weights file)")
        return self


def project(lp, x, adv, eps: float, steps: int):
    """x + λ·(adv − x) with the largest λ ∈ [0, 1] found by bisection whose LPIPS distance is ≤ ε."""
    import torch

    with torch.no_grad():
        fx = lp.embed(x)
        inside = (lp.embed(adv) - fx).norm(dim=1) <= eps
        lo, hi = inside.to(x.dtype), torch.ones(x.shape[0], device=x.device, dtype=x.dtype)
        for _ in range(steps):  # invariant: λ = lo is within ε (λ = 0 is x itself)
            mid = (lo + hi) / 2
            ok = (lp.embed(x + mid.view(-1, 1, 1, 1) * (adv - x)) - fx).norm(dim=1) <= eps
            lo = torch.where(ok & ~inside, mid, lo)
            hi = torch.where(~ok & ~inside, mid, hi)
        return (x + lo.view(-1, 1, 1, 1) * (adv - x)).clamp(0, 1)


def step(lp, adv, grad, length, h: float):
    """adv + the normalized gradient scaled to LPIPS length ``length`` (finite difference of d along it)."""
    import torch

    g = grad / (grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-8)
    with torch.no_grad():
        rate = (lp.embed(adv) - lp.embed(adv + h * g)).norm(dim=1) / h
    return (adv + g * (length / (rate + 1e-8)).view(-1, 1, 1, 1)).clamp(0, 1).detach()


class _Perceptual(EvalAttack):
    norms = ("LPIPS",)
    Options = PerceptualOptions

    def robust(self, model, x, y, ctx):
        from .lpips import load_lpips

        lp = load_lpips(self.options.lpips_weights, ctx.device)
        return ctx.per_batch(model, x, y, lambda xb, yb: self.attack(model, lp, xb, yb, ctx.threat.eps))


class PPGD(_Perceptual):
    description = "Perceptual PGD (Laidlaw et al., 2021) in the LPIPS ball; needs lpips_weights"
    label = short = "PPGD"

    def attack(self, model, lp, x, y, eps: float):
        import torch

        from .functional import margin

        o = self.options
        adv = (x + 0.01 * torch.randn_like(x)).clamp(0, 1)
        for _ in range(o.iterations):
            adv.requires_grad_(True)
            (grad,) = torch.autograd.grad(margin(model(adv), y).clamp(min=-1).sum(), adv)
            adv = project(lp, x, step(lp, adv.detach(), grad, 2 * eps / o.iterations, 1e-3), eps, o.bisection_steps)
        return adv


class LPA(_Perceptual):
    description = "Lagrangian Perceptual Attack (Laidlaw et al., 2021) in the LPIPS ball; needs lpips_weights"
    label = short = "LPA"

    class Options(PerceptualOptions):
        rounds: int = Field(5, ge=1, description="rounds of λ ← 10·λ for images still over ε")

    def attack(self, model, lp, x, y, eps: float):
        import torch
        import torch.nn.functional as F

        from .functional import margin

        o = self.options
        fx = lp.embed(x).detach()
        adv = (x + 0.01 * torch.randn_like(x)).clamp(0, 1)
        lam = torch.full((x.shape[0],), 0.01, device=x.device)
        for _ in range(o.rounds):
            for t in range(o.iterations):
                adv.requires_grad_(True)
                dist = (lp.embed(adv) - fx).norm(dim=1)
                loss = -margin(model(adv), y).clamp(min=-1) + lam * F.relu(dist - eps)
                (grad,) = torch.autograd.grad(loss.sum(), adv)
                adv = step(lp, adv.detach(), -grad, eps * 0.1 ** (t / o.iterations), 0.1)
            with torch.no_grad():
                lam[(lp.embed(adv) - fx).norm(dim=1) >= eps] *= 10
        return project(lp, x, adv, eps, o.bisection_steps)
