"""Built-in evaluation attacks (Section 4.1 of the paper, and the threat models users of RobustBench and
AutoAttack ask for): clean, FGSM, PGD (CE or margin, restarts), the paper's PGD-20 and CW-∞ presets, and
the official AutoAttack — each at L∞ and L2 (AutoAttack also L1); and the non-Lp threat shifts ReColor
and StAdv, and the perceptual PPGD and LPA given an LPIPS backbone (OODRobustBench's)."""

from igdm_kit.hookspecs import hookimpl


@hookimpl
def register_eval_attacks(register):
    from .autoattack import AutoAttackEval
    from .clean import Clean
    from .perceptual import LPA, PPGD
    from .recolor import ReColor
    from .stadv import StAdv
    from .whitebox import CW, FGSM, PGD, PGD20

    register("clean", Clean)
    register("fgsm", FGSM)
    register("pgd", PGD)
    register("pgd20", PGD20)
    register("cw", CW)
    register("autoattack", AutoAttackEval)
    register("recolor", ReColor)
    register("stadv", StAdv)
    register("ppgd", PPGD)
    register("lpa", LPA)
