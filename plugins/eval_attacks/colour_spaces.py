"""sRGB ↔ CIE 1976 L*u*v*, each channel scaled to about [0, 1] (L/100, (u+100)/200, (v+100)/200), on torch:
the colour space of ReColorAdv (Laidlaw & Feizi, 2019; ported from recoloradv's ``CIELUVColorSpace``, D65
white u'ₙ = 0.1978, v'ₙ = 0.4683)."""

from __future__ import annotations

import torch

EPS = 1e-10
UP_WHITE, VP_WHITE = 0.1978, 0.4683


def rgb_to_xyz(rgb: torch.Tensor) -> torch.Tensor:
    small = (rgb < 0.04045).to(rgb.dtype)
    lin = rgb / 12.92 * small + ((rgb + 0.055) / 1.055) ** 2.4 * (1 - small)
    r, g, b = lin.unbind(1)
    return torch.stack([0.4124 * r + 0.3576 * g + 0.1805 * b, 0.2126 * r + 0.7152 * g + 0.0722 * b,
                        0.0193 * r + 0.1192 * g + 0.9504 * b], 1)


def xyz_to_rgb(xyz: torch.Tensor) -> torch.Tensor:
    x, y, z = xyz.unbind(1)
    lin = torch.stack([3.2406 * x - 1.5372 * y - 0.4986 * z, -0.9689 * x + 1.8758 * y + 0.0415 * z,
                       0.0557 * x - 0.2040 * y + 1.0570 * z], 1)
    small = (lin < 0.0031308).to(lin.dtype)
    return 12.92 * lin * small + (1.055 * lin.clamp(min=EPS) ** (1 / 2.4) - 0.055) * (1 - small)


def rgb_to_luv(rgb: torch.Tensor) -> torch.Tensor:
    x, y, z = rgb_to_xyz(rgb).unbind(1)
    denom = x + 15 * y + 3 * z + EPS
    up, vp = 4 * x / denom, 9 * y / denom
    small = (y < (6 / 29) ** 3).to(y.dtype)
    L = (29 / 3) ** 3 * y * small + (116 * y.clamp(min=EPS) ** (1 / 3) - 16) * (1 - small)
    u, v = 13 * L * (up - UP_WHITE), 13 * L * (vp - VP_WHITE)
    return torch.stack([L / 100, (u + 100) / 200, (v + 100) / 200], 1)


def luv_to_rgb(luv: torch.Tensor) -> torch.Tensor:
    L, u, v = luv[:, 0] * 100, luv[:, 1] * 200 - 100, luv[:, 2] * 200 - 100
    up, vp = u / (13 * L + EPS) + UP_WHITE, v / (13 * L + EPS) + VP_WHITE
    small = (L <= 8).to(L.dtype)
    y = L * (3 / 29) ** 3 * small + ((L + 16) / 116) ** 3 * (1 - small)
    denom = 4 * vp + EPS
    x, z = y * 9 * up / denom, y * (12 - 3 * up - 20 * vp) / denom
    return xyz_to_rgb(torch.stack([x, y, z], 1).clamp(0, 1.1)).clamp(0, 1)
