"""The host's own training callbacks, registered as a plugin through ``register_callbacks`` (a host plugin:
``igdm_kit._plugins.manager.HOST_PLUGINS``). The classes are imported inside the hook, so loading the plugin
for ``igdm-kit --help`` imports no torch. Their order is ``interfaces.Order``.
"""

from __future__ import annotations

from igdm_kit.hookspecs import hookimpl


@hookimpl
def register_callbacks(register) -> None:
    from igdm_kit._training.callbacks import (
        Checkpointer,
        CleanAccuracy,
        FiniteWeights,
        LogLine,
        MetricsLog,
        ProgressBar,
    )
    from igdm_kit._training.cost import Cost
    from igdm_kit._training.ema import EMA
    from igdm_kit._training.method_state import MethodHooks
    from igdm_kit._training.peer import PeerState
    from igdm_kit._training.swa import SWA
    from igdm_kit._training.tracking import Trackers
    from igdm_kit._training.validation import BestCheckpoint, BestEmaCheckpoint, Validation

    for name, cls in (("finite-weights", FiniteWeights), ("method-state", MethodHooks), ("peer", PeerState), ("cost", Cost),
                      ("clean-accuracy", CleanAccuracy),
                      ("ema", EMA), ("swa", SWA), ("validation", Validation), ("progress", ProgressBar), ("metrics-log", MetricsLog),
                      ("checkpoint", Checkpointer), ("best", BestCheckpoint), ("best-ema", BestEmaCheckpoint),
                      ("trackers", Trackers), ("log-line", LogLine)):
        register(name, cls)
