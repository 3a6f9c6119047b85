"""Example igdm-kit plugin: registers the MART method and the MI-FGSM evaluation attack through the
``igdm_kit`` entry point."""

from igdm_kit import hookimpl


@hookimpl
def register_methods(register):
    from .mart import MART

    register("mart", MART)


@hookimpl
def register_eval_attacks(register):
    from .mim import MIM

    register("mim", MIM)
