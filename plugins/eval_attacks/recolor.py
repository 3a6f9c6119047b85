"""ReColor — Laidlaw & Feizi, "Functional adversarial attacks", NeurIPS 2019 (ReColorAdv), as
perceptual-advex's ``ReColorAdvAttack`` (the threat shift of OODRobustBench), written on torch.

x' = to_rgb(f(from_rgb(x))): one colour map f per image, applied to every pixel alike — a pixel's new colour
depends only on its old colour. f is trilinear interpolation of a 16×32×32 grid of colours in CIELUV
(each channel scaled to [0, 1]); each grid point moves at most ε (L∞, default 0.06) from the identity and
stays in the sRGB gamut. Adam (lr 0.001) maximizes the margin minus (0.0036/ε)·smoothness of the grid.
Grey images get a per-intensity map on a 32-point grid instead. Threat name: ``ReColor``, ε its bound.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from igdm_kit.interfaces import EvalAttack, Options


class ReColor(EvalAttack):
    description = "ReColor (Laidlaw & Feizi, 2019): a bounded per-image colour map in CIELUV"
    label = short = "ReColor"
    norms = ("ReColor",)

    class Options(Options):
        iterations: int = Field(100, ge=1, le=100_000, description="Adam steps (OODRobustBench: 100 on CIFAR-10)")
        lr: float = Field(0.001, gt=0, description="Adam's learning rate")
        resolution: tuple[int, int, int] = Field((16, 32, 32), description="grid points per colour channel")
        grey_resolution: int = Field(32, ge=2, description="grid points of a grey image's intensity map")
        smoothness: float = Field(0.0036, ge=0, description="λ·ε: weight of the grid's smoothness")
        space: Literal["cieluv", "rgb"] = Field("cieluv", description="colour space of the map")

    def identity(self, n: int, channels: int, device) -> "torch.Tensor":
        """The identity map's grid: (N, Rx, Ry, Rz, 3) colours, or (N, R, 1) grey levels."""
        import torch

        if channels == 1:
            r = self.options.grey_resolution
            return torch.linspace(0, 1, r, device=device).view(1, r, 1).expand(n, r, 1).clone()
        axes = [torch.linspace(0, 1, r, device=device) for r in self.options.resolution]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)
        return grid.unsqueeze(0).expand(n, *grid.shape).clone()

    def spaces(self):
        from .colour_spaces import luv_to_rgb, rgb_to_luv

        return (rgb_to_luv, luv_to_rgb) if self.options.space == "cieluv" else (lambda t: t, lambda t: t)

    def apply(self, grid, x):
        """x' = to_rgb(f_grid(from_rgb(x))) — the colour map the grid defines, on every pixel of x."""
        import torch.nn.functional as F

        if x.shape[1] == 1:  # linear interpolation of the intensity map
            r = grid.shape[1]
            pos = x.clamp(0, 1) * (r - 1)
            lo = pos.floor().clamp(max=r - 2).long()
            frac = pos - lo
            g = grid[..., 0]
            flat = lo.flatten(1)
            v0, v1 = g.gather(1, flat).view_as(x), g.gather(1, flat + 1).view_as(x)
            return (v0 + frac * (v1 - v0)).clamp(0, 1)
        src, dst = self.spaces()
        c = src(x).clamp(0, 1)  # (N, 3, H, W): channels 0, 1, 2 index grid dims D, H, W
        coords = (c.flip(1) * 2 - 1).permute(0, 2, 3, 1).unsqueeze(1)  # (N, 1, H, W, 3) as (w, h, d)
        out = F.grid_sample(grid.permute(0, 4, 1, 2, 3), coords, mode="bilinear", padding_mode="border",
                            align_corners=True)
        return dst(out.squeeze(2)).clamp(0, 1)

    def project(self, grid, ident, eps: float):
        """Into [0, 1], into the gamut (to_rgb then back), then within ε of the identity (L∞)."""
        grid = grid.clamp(0, 1)
        if grid.shape[-1] == 3 and self.options.space == "cieluv":
            src, dst = self.spaces()
            shape = grid.shape
            flat = grid.reshape(shape[0], -1, 3).permute(0, 2, 1).unsqueeze(-1)  # (N, 3, P, 1)
            grid = src(dst(flat)).squeeze(-1).permute(0, 2, 1).reshape(shape)
        return ident + (grid - ident).clamp(-eps, eps)

    def attack(self, model, x, y, eps: float):
        """(x_adv, grid): the attacked images and each one's colour-map grid."""
        from .functional import optimise

        ident = self.identity(x.shape[0], x.shape[1], x.device)
        o = self.options
        return optimise(model, x, y, ident, lambda g: self.apply(g, x), lambda g: self.project(g, ident, eps),
                        lam=o.smoothness / eps if eps > 0 else 0.0, lr=o.lr, steps=o.iterations)

    def robust(self, model, x, y, ctx):
        return ctx.per_batch(model, x, y, lambda xb, yb: self.attack(model, xb, yb, ctx.threat.eps)[0])
