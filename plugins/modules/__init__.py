"""Built-in gradient modules (IGDM and the variants the paper compares it with)."""

from igdm_kit.hookspecs import hookimpl


@hookimpl
def register_modules(register):
    from .direct import DirectGradientMatching
    from .igdm import IGDM
    from .trades_like import IGDMTradesLike
    from .trades_reg import TradesReg

    register("igdm", IGDM)
    register("direct", DirectGradientMatching)
    register("igdm-trades-like", IGDMTradesLike)
    register("trades-reg", TradesReg)
