"""The plugin manager: built-ins from ``DEFAULT_PLUGINS`` plus third-party entry points (group ``igdm_kit``).

``IGDM_KIT_LOAD_PLUGINS`` is an allow-list of comma-separated entry-point names: when set, only those
third-party plugins load (an empty value loads none); built-ins always load. A plugin that fails to import,
or whose registration hook raises — ``SystemExit`` and ``KeyboardInterrupt`` included — is reported by name
(``load_errors()``) and the others still load; so is a hook implementation whose name is no igdm-kit hook.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from importlib.metadata import entry_points
from typing import Any

import pluggy

from igdm_kit import hookspecs
from igdm_kit._plugins.kinds import BY_NAME
from igdm_kit._plugins.registry import KINDS, Registry
from igdm_kit.errors import IgdmKitError, PluginError

#: the host's own plugins (pytest's "default plugins"): the built-in training callbacks
HOST_PLUGINS: tuple[str, ...] = ("igdm_kit._training.builtin_callbacks",)


def _builtin_plugins() -> tuple[str, ...]:
    """Every sub-package of ``igdm_kit_plugins`` (the built-ins in ``plugins/``), found rather than listed."""
    import pkgutil

    builtins = importlib.import_module("igdm_kit_plugins")  # by name: the host imports no plugin's code
    return tuple(f"igdm_kit_plugins.{m.name}" for m in pkgutil.iter_modules(builtins.__path__) if m.ispkg)


#: the built-in plugins, loaded through the same hooks as a third party's
DEFAULT_PLUGINS: tuple[str, ...] = (*_builtin_plugins(), *HOST_PLUGINS)

_pm: pluggy.PluginManager | None = None
_registries: dict[str, Registry] = {}
_errors: list[PluginError] = []


#: What a plugin may raise that must not take the host down (a plugin calling ``sys.exit`` at import).
PLUGIN_FAILURES = (Exception, SystemExit, KeyboardInterrupt)


def _report(error: PluginError) -> None:
    _errors.append(error)
    print(f"igdm-kit: warning: {error}", file=sys.stderr)


def _why(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"it called sys.exit({exc.code!r})"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _check_hooks(pm: pluggy.PluginManager, name: str, plugin: object) -> None:
    """Report hook implementations whose name is no igdm-kit hook (a misspelling is otherwise ignored)."""
    known = [n for n in dir(hookspecs) if n.startswith("register_")]
    for caller in pm.get_hookcallers(plugin) or []:
        if caller.spec is None:
            close = difflib.get_close_matches(caller.name, known, n=1)
            _report(PluginError(f"plugin {name!r} implements {caller.name!r}, which is not an igdm-kit hook",
                                f"did you mean {close[0]!r}?" if close else "hooks: " + ", ".join(known)))


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
        except PLUGIN_FAILURES as exc:  # one broken plugin must not take the others (or --help) down
            _report(PluginError(f"plugin {ep.name!r} failed to load: {_why(exc)}",
                                f"fix or uninstall the package providing {ep.value!r}"))
            continue
        _check_hooks(pm, ep.name, plugin)
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
    caller = getattr(pm.hook, BY_NAME[kind].hook)
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
        except PLUGIN_FAILURES as exc:
            _report(PluginError(f"plugin {plugin!r} failed while registering {kind}s: {_why(exc)}",
                                "fix or uninstall that plugin"))
    _registries[kind] = reg
    return reg


def register_commands(app: Any) -> None:
    """Every plugin's ``register_commands(app)``, one at a time: a plugin that fails is reported by name and
    the other commands (``--help``, ``--version``) still work."""
    for impl in reversed(get_plugin_manager().hook.register_commands.get_hookimpls()):
        try:
            impl.function(app=app)
        except PLUGIN_FAILURES as exc:
            _report(PluginError(f"plugin {impl.plugin_name!r} failed while registering commands: {_why(exc)}",
                                "fix or uninstall that plugin; the other commands work"))


def load_errors() -> list[PluginError]:
    """Errors of plugins that failed to load or register (each also printed as a warning)."""
    return list(_errors)


def reset() -> None:
    """Forget the plugin manager and registries (tests; after installing a plugin in-process)."""
    global _pm
    _pm = None
    _registries.clear()
    _errors.clear()


def always_on(kind: str) -> list[str]:
    """The components of ``kind`` whose contract says they are on in every run (``always_on``)."""
    return [e.name for e in registry(kind) if e.component.always_on]


def all_entries() -> list:
    """Every registered component of every kind."""
    return [e for kind in KINDS for e in registry(kind)]
