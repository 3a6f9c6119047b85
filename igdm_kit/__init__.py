"""igdm-kit: small robust classifiers by adversarial distillation, with IGDM.

The public API imports lazily so that ``import igdm_kit`` (and ``igdm-kit --help``) does not load torch.
"""

from __future__ import annotations

from typing import Any

_FACTORIES = ("create_model", "list_models", "create_dataset", "create_method", "create_module", "create_attack",
              "create_eval_attack", "create_shift", "create_teacher", "create_optimizer", "create_schedule",
              "create_tracker", "create_launcher")
__all__ = [*_FACTORIES, "load_model", "hookimpl", "__version__"]

from .hookspecs import hookimpl

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _FACTORIES:
        from . import components

        return getattr(components, name)
    if name == "load_model":
        from .checkpoint import load_model

        return load_model
    raise AttributeError(f"module 'igdm_kit' has no attribute {name!r}")
