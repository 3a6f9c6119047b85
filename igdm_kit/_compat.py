"""The import paths of igdm-kit 0.1's flat layout, kept for one release with a ``DeprecationWarning``.

``import igdm_kit.engine`` or ``from igdm_kit.evaluation import MarginPGD`` still work: each old module name
is served by the module that now holds its contents (one module, or a view over the few a module was split
into). New code imports the public surface (``igdm_kit``, ``igdm_kit.interfaces``, ``igdm_kit.attacks``, ...).
Installed by ``igdm_kit/__init__.py``; nothing else imports it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings

REMOVED_IN = "0.3"

#: old module (under ``igdm_kit.``) → the module(s) that now hold what it held, searched in this order
MOVED: dict[str, tuple[str, ...]] = {
    "components": ("factories",),
    "registry": ("_plugins.registry",), "plugins": ("_plugins.manager",), "describe": ("_plugins.describe",),
    "accel": ("_runtime.accel",), "distributed": ("_runtime.distributed",), "threads": ("_runtime.threads",),
    "progress": ("_runtime.progress",),
    "io": ("_storage.io",), "checkpoint": ("_storage.checkpoint",), "train_state": ("_storage.train_state",),
    "recipe": ("_recipe",), **{f"recipe.{m}": (f"_recipe.{m}",)
                               for m in ("commands", "errors", "load", "schema", "toml", "validate")},
    "eval_attacks": ("_recipe.specs", "_cli.specs"),
    "shifts": ("_evaluation.shifts", "_recipe.specs", "_cli.specs"),
    "analysis": ("_evaluation.analysis",), "stats": ("_evaluation.stats",), "compare": ("_evaluation.compare",),
    "sources": ("_evaluation.sources",), "plotting": ("_evaluation.plotting",),
    "step": ("_training.step",), "training_step": ("_training.loss",), "data": ("_training.batches",),
    "passes": ("_training.passes",), "engine": ("_training.engine",),
    "training": ("_training",), "training.signals": ("_runtime.signals",),
    "training.folder": ("_storage.run_folder",), "training.subscribers": ("_training.callbacks",),
    **{f"training.{m}": (f"_training.{m}",)
       for m in ("ema", "events", "final_eval", "optim", "parts", "tracking", "trainer", "validation")},
    "sweep": ("_sweep.sweep",), "launch": ("_sweep.launch",),
    "cli": ("_cli",), **{f"cli.{m}": (f"_cli.{m}",) for m in
                         ("analyze", "compare", "console", "eval", "ood", "options", "plugins", "recipe", "run",
                          "sweep")},
}


class _View(types.ModuleType):
    """An old module that was split: its names are looked up in the new modules in turn."""

    def __init__(self, name: str, targets: list[types.ModuleType]) -> None:
        super().__init__(name)
        self.__targets = targets

    def __getattr__(self, attr: str):
        for t in self.__targets:
            if hasattr(t, attr):
                return getattr(t, attr)
        raise AttributeError(f"module {self.__name__!r} has no attribute {attr!r}")


class _OldPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        old = fullname.removeprefix("igdm_kit.")
        if fullname.startswith("igdm_kit.") and old in MOVED:
            return importlib.machinery.ModuleSpec(fullname, self, is_package="." not in old and any(
                k.startswith(old + ".") for k in MOVED))
        return None

    def create_module(self, spec):
        old = spec.name.removeprefix("igdm_kit.")
        new = [importlib.import_module(f"igdm_kit.{m}") for m in MOVED[old]]
        warnings.warn(f"{spec.name} is deprecated and will be removed in igdm-kit {REMOVED_IN}: import "
                      f"{' / '.join('igdm_kit.' + m for m in MOVED[old])} instead (or the public igdm_kit API)",
                      DeprecationWarning, stacklevel=2)
        return new[0] if len(new) == 1 else _View(spec.name, new)

    def exec_module(self, module):
        pass


def install() -> None:
    if not any(isinstance(f, _OldPaths) for f in sys.meta_path):
        sys.meta_path.append(_OldPaths())
