"""Built-in gradient modules (IGDM and the variants the paper compares it with)."""

from igdm_kit.hookspecs import hookimpl


@hookimpl
def register_modules(register):
    pass
