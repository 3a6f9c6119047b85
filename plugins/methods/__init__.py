"""Built-in base methods: adversarial training and adversarial distillation (outer minimization)."""

from igdm_kit.hookspecs import hookimpl


@hookimpl
def register_methods(register):
    from .pgd_at import PGDAT

    register("pgd-at", PGDAT)
