"""Built-in teacher loaders."""

from igdm_kit.hookspecs import hookimpl


@hookimpl
def register_teacher_loaders(register):
    from .native import NativeCheckpoint
    from .robustbench import RobustBenchLoader
    from .state_dict import StateDictLoader

    register("igdm-kit", NativeCheckpoint)
    register("state-dict", StateDictLoader)
    register("robustbench", RobustBenchLoader)
