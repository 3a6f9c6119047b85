"""igdm-kit: small robust classifiers by adversarial distillation, with IGDM.

The public surface is this package's top level, nothing deeper than one module down:

* ``igdm_kit`` — the factories (``create_model``, ``create_method``, ...; one per component kind),
  ``load_model``, ``hookimpl``;
* ``igdm_kit.interfaces`` — the contracts a plugin implements, one module per kind;
* ``igdm_kit.hookspecs`` — the hooks, ``igdm_kit.errors`` — the errors a plugin raises;
* ``igdm_kit.nn``, ``igdm_kit.losses``, ``igdm_kit.attacks`` — building blocks for models, methods and
  evaluation attacks;
* ``igdm_kit.factories`` — the factories themselves, ``igdm_kit.kinds`` — the component kinds.

Every package whose name starts with an underscore (``_recipe``, ``_training``, ``_cli``, ...) is the host's
machinery and may change in any release. The public API imports lazily so that ``import igdm_kit`` (and
``igdm-kit --help``) does not load torch.
"""

from __future__ import annotations

from typing import Any

from igdm_kit import _compat
from igdm_kit.hookspecs import hookimpl

_FACTORIES = ("create_model", "list_models", "create_dataset", "create_method", "create_module", "create_attack",
              "create_eval_attack", "create_shift", "create_teacher", "create_optimizer", "create_schedule",
              "create_tracker", "create_launcher", "create_callback")
__all__ = [*_FACTORIES, "load_model", "hookimpl", "__version__"]

__version__ = "0.1.0"

_compat.install()  # the 0.1 import paths (igdm_kit.engine, igdm_kit.evaluation, ...), deprecated


def __getattr__(name: str) -> Any:
    if name in _FACTORIES:
        from igdm_kit import factories

        return getattr(factories, name)
    if name == "load_model":
        from igdm_kit._storage.checkpoint import load_model

        return load_model
    raise AttributeError(f"module 'igdm_kit' has no attribute {name!r}")
