"""Built-in inner attacks (the inner maximization of adversarial training), on torchattacks."""

from igdm_kit.hookspecs import hookimpl


@hookimpl
def register_attacks(register):
    from .pgd import PGD

    register("pgd", PGD)
