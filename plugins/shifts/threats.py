"""Threat shifts: evaluation attacks under threat models the model was not trained for, on its own test set.

* ``threat`` — one: ``{ name = "threat", norm = "L2", eps = 0.5, attack = "autoattack" }``;
* ``threats`` — OODRobustBench's threat shifts for L∞ models (Li et al., ICML 2024): L∞ at 1.5× the model's
  ε (12/255 for 8/255), L2 at 0.5, L1 at 12 (RobustBench's radius; OODRobustBench has no L1 row), ReColor
  at 0.06 (Laidlaw & Feizi, 2019) and StAdv at 0.05 (Xiao et al., 2018), 100 iterations each as
  OODRobustBench on CIFAR-10; PPGD and LPA at 0.5 (Laidlaw et al., 2021) when ``lpips_weights`` names
  the LPIPS backbone's weights file.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from igdm_kit.interfaces import Fraction, Options, Shift, ThreatVariant
from igdm_kit.interfaces import Threat as ThreatModel

Kind = Literal["linf", "l2", "l1", "recolor", "stadv", "ppgd", "lpa"]


def _text(eps: float) -> str:
    k = eps * 255
    return f"{round(k)}/255" if eps < 1 and abs(k - round(k)) < 1e-6 else f"{eps:g}"


def _key(attack: Any) -> str:
    if isinstance(attack, str):
        return attack
    rest = ",".join(f"{k}={v}" for k, v in sorted(attack.items()) if k != "name")
    return f"{attack['name']}({rest})" if rest else attack["name"]


def variant(norm: str, eps: float, attack: Any) -> ThreatVariant:
    key = f"{norm}-{_text(eps)}-{_key(attack)}"
    return ThreatVariant(key=key, label=f"{norm} ε={_text(eps)} ({_key(attack)})", attack=attack,
                         threat=ThreatModel(norm, eps))


class Threat(Shift):
    description = "one threat shift: an evaluation attack under another norm or radius"

    class Options(Options):
        norm: str = Field(..., description="Linf, L2, L1, or a non-Lp threat of an attack (ReColor, StAdv)")
        eps: Fraction = Field(..., ge=0, description="its radius / bound")
        attack: str | dict[str, Any] = Field("autoattack", description="the evaluation attack (a name or "
                                             "a table)")

    def threats(self, ctx):
        o = self.options
        return [variant(o.norm, o.eps, o.attack)]


class Threats(Shift):
    description = "OODRobustBench's threat shifts: larger L∞, L2, L1, ReColor, StAdv (PPGD, LPA with LPIPS)"

    class Options(Options):
        include: list[Kind] | None = Field(None, description="which (default: linf, l2, l1, recolor, stadv; "
                                                             "with lpips_weights also ppgd, lpa)")
        attack: str | dict[str, Any] = Field("autoattack", description="the attack of the Lp threats")
        l1_attack: str | dict[str, Any] | None = Field(None, description="the attack of the L1 threat "
                                                       "(default: attack; PGD has no L1 version)")
        linf_eps: Fraction | None = Field(None, gt=0, description="default: 1.5× the model's L∞ ε")
        l2_eps: Fraction = Field(0.5, gt=0)
        l1_eps: Fraction = Field(12.0, gt=0)
        recolor_eps: Fraction = Field(0.06, gt=0, description="bound of the colour map (CIELUV, per channel)")
        stadv_eps: Fraction = Field(0.05, gt=0, description="bound of the flow field (grid units, [-1, 1])")
        perceptual_eps: Fraction = Field(0.5, gt=0, description="LPIPS bound of PPGD and LPA")
        iterations: int = Field(100, ge=1, description="iterations of ReColor and StAdv")
        perceptual_iterations: int = Field(40, ge=1, description="iterations of PPGD and LPA")
        lpips_weights: str | None = Field(None, description="LPIPS backbone weights (AlexNet state dict)")

        @model_validator(mode="after")
        def _perceptual(self):
            if self.include and {"ppgd", "lpa"} & set(self.include) and self.lpips_weights is None:
                raise ValueError("ppgd and lpa need the LPIPS backbone: set lpips_weights = \"alexnet.pth\"")
            return self

    def kinds(self) -> list[str]:
        o = self.options
        if o.include is not None:
            return list(dict.fromkeys(o.include))
        return ["linf", "l2", "l1", "recolor", "stadv"] + (["ppgd", "lpa"] if o.lpips_weights else [])

    def threats(self, ctx):
        o = self.options
        linf = o.linf_eps if o.linf_eps is not None else 1.5 * (ctx.threat.eps if ctx.threat.norm == "Linf"
                                                               else 8 / 255)
        perceptual = {"lpips_weights": o.lpips_weights, "iterations": o.perceptual_iterations}
        table = {
            "linf": ("Linf", linf, o.attack), "l2": ("L2", o.l2_eps, o.attack), "l1": ("L1", o.l1_eps, o.l1_attack or o.attack),
            "recolor": ("ReColor", o.recolor_eps, {"name": "recolor", "iterations": o.iterations}),
            "stadv": ("StAdv", o.stadv_eps, {"name": "stadv", "iterations": o.iterations}),
            "ppgd": ("LPIPS", o.perceptual_eps, {"name": "ppgd", **perceptual}),
            "lpa": ("LPIPS", o.perceptual_eps, {"name": "lpa", **perceptual}),
        }
        return [variant(*table[k]) for k in self.kinds()]
