"""Built-in inner attacks (the inner maximization of adversarial training), on torchattacks."""

from igdm_kit.hookspecs import hookimpl


@hookimpl
def register_attacks(register):
    from .adaad import AdaAD
    from .pgd import PGD
    from .rslad import RSLAD
    from .saad import SAAD
    from .trades import TRADES

    register("pgd", PGD)
    register("trades", TRADES)
    register("rslad", RSLAD)
    register("adaad", AdaAD)
    register("saad", SAAD)
