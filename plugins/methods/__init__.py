"""Built-in base methods: adversarial training and adversarial distillation (outer minimization)."""

from igdm_kit.hookspecs import hookimpl


@hookimpl
def register_methods(register):
    from .adaad import AdaAD
    from .absld import ABSLD
    from .adaiad import AdaIAD
    from .akd import AKD
    from .ard import ARD
    from .dgad import DGAD
    from .fair_ard import FairARD
    from .fair_variants import FairIAD, FairRSLAD
    from .iad import IAD
    from .mtard import BMTARD, MTARD
    from .peeraid import PeerAiD
    from .pgd_at import PGDAT
    from .rslad import RSLAD
    from .saad import SAAD
    from .trades import TRADES

    register("pgd-at", PGDAT)
    register("trades", TRADES)
    register("ard", ARD)
    register("iad", IAD)
    register("akd", AKD)
    register("rslad", RSLAD)
    register("adaad", AdaAD)
    register("adaiad", AdaIAD)
    register("dgad", DGAD)
    register("fair-ard", FairARD)
    register("fair-iad", FairIAD)
    register("fair-rslad", FairRSLAD)
    register("saad", SAAD)
    register("mtard", MTARD)
    register("b-mtard", BMTARD)
    register("absld", ABSLD)
    register("peeraid", PeerAiD)
