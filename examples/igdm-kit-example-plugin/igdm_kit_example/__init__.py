"""Example igdm-kit plugin: registers the MART method through the ``igdm_kit`` entry point."""

from igdm_kit import hookimpl


@hookimpl
def register_methods(register):
    from .mart import MART

    register("mart", MART)
