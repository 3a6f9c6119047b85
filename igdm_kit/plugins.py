"""The plugin manager: built-ins from ``DEFAULT_PLUGINS`` plus third-party entry points (group ``igdm_kit``).

``IGDM_KIT_LOAD_PLUGINS`` is an allow-list of comma-separated entry-point names: when set, only those
third-party plugins load (an empty value loads none); built-ins always load. A plugin that fails to import,
or whose registration hook raises, is reported by name (``load_errors()``) and the others still load.
"""

from __future__ import annotations

import importlib
import os
import sys
from importlib.metadata import entry_points

import pluggy

from . import hookspecs
from .errors import IgdmKitError, PluginError
from .registry import KINDS, Registry

DEFAULT_PLUGINS: tuple[str, ...] = (
    "igdm_kit_plugins.attacks",
    "igdm_kit_plugins.eval_attacks",
    "igdm_kit_plugins.methods",
    "igdm_kit_plugins.modules",
    "igdm_kit_plugins.models",
    "igdm_kit_plugins.datasets",
    "igdm_kit_plugins.teachers",
    "igdm_kit_plugins.shifts",
)

_HOOK_OF_KIND = {
    "method": "register_methods",
    "module": "register_modules",
    "attack": "register_attacks",
    "eval_attack": "register_eval_attacks",
    "model": "register_models",
    "dataset": "register_datasets",
    "teacher_loader": "register_teacher_loaders",
    "shift": "register_shifts",
}

_pm: pluggy.PluginManager | None = None
_registries: dict[str, Registry] = {}
_errors: list[PluginError] = []


def _report(error: PluginError) -> None:
    _errors.append(error)
    print(f"igdm-kit: warning: {error}", file=sys.stderr)


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, loading plugins on first use."""
    global _pm
    if _pm is not None:
        return _pm
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for module_name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
    allow = os.environ.get("IGDM_KIT_LOAD_PLUGINS")
    allowed = None if allow is None else {n.strip() for n in allow.split(",") if n.strip()}
    available = list(entry_points(group=hookspecs.PROJECT))
    for name in sorted((allowed or set()) - {ep.name for ep in available}):
        _report(PluginError(f"IGDM_KIT_LOAD_PLUGINS names {name!r}, which is not installed",
                            "installed: " + (", ".join(sorted(ep.name for ep in available)) or "none")))
    for ep in available:
        if allowed is not None and ep.name not in allowed:
            continue
        if pm.has_plugin(ep.name):
            continue
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
        except Exception as exc:  # noqa: BLE001 - one broken plugin must not take the others down
            _report(PluginError(f"plugin {ep.name!r} failed to load: {type(exc).__name__}: {exc}",
                                f"fix or uninstall the package providing {ep.value!r}"))
    _pm = pm
    return pm


def registry(kind: str) -> Registry:
    """The registry of one component kind, built on first use by calling every plugin's hook."""
    if kind in _registries:
        return _registries[kind]
    if kind not in KINDS:
        raise ValueError(f"unknown component kind {kind!r}; kinds: {', '.join(KINDS)}")
    pm = get_plugin_manager()
    reg = Registry(kind)
    caller = getattr(pm.hook, _HOOK_OF_KIND[kind])
    # Call each implementation separately so that a component knows which plugin registered it, and a
    # plugin whose hook raises is reported by name while the others still register.
    for impl in reversed(caller.get_hookimpls()):
        plugin = impl.plugin_name

        def register(name: str, component: object, _plugin: str = plugin) -> None:
            reg.add(name, component, _plugin)

        try:
            impl.function(register=register)
        except PluginError:
            raise  # duplicate names or a malformed component: the user must fix the install
        except IgdmKitError:
            raise
        except Exception as exc:  # noqa: BLE001
            _report(PluginError(f"plugin {plugin!r} failed while registering {kind}s: "
                                f"{type(exc).__name__}: {exc}", "fix or uninstall that plugin"))
    _registries[kind] = reg
    return reg


def load_errors() -> list[PluginError]:
    """Errors of plugins that failed to load or register (each also printed as a warning)."""
    return list(_errors)


def reset() -> None:
    """Forget the plugin manager and registries (tests; after installing a plugin in-process)."""
    global _pm
    _pm = None
    _registries.clear()
    _errors.clear()


def all_entries() -> list:
    """Every registered component of every kind."""
    return [e for kind in KINDS for e in registry(kind)]
