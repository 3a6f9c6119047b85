"""Built-in model architectures. Every model takes [0,1] images; normalization is a layer inside it."""

from igdm_kit.hookspecs import hookimpl


@hookimpl
def register_models(register):
    from .small_cnn import SmallCNN

    register("small-cnn", SmallCNN)
