"""Built-in teacher loaders."""

from igdm_kit.hookspecs import hookimpl


@hookimpl
def register_teacher_loaders(register):
    from .native import NativeCheckpoint

    register("igdm-kit", NativeCheckpoint)
