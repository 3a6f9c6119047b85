"""Built-in datasets."""

from igdm_kit.hookspecs import hookimpl


@hookimpl
def register_datasets(register):
    from .digits import Digits

    register("digits", Digits)
