"""The generic registry and the plugin manager: duplicates, close matches, failing plugins, allow-list."""

from __future__ import annotations

import sys
import types

import pytest

from igdm_kit._plugins import manager as plugins
from igdm_kit._plugins.registry import Registry
from igdm_kit.errors import PluginError, UnknownComponentError
from igdm_kit.hookspecs import hookimpl
from igdm_kit.interfaces import Method, NoOptions


class Dummy(Method):
    Options = NoOptions


def test_duplicate_name_names_both_plugins():
    reg = Registry("method")
    reg.add("ard", Dummy, "plugin-a")
    with pytest.raises(PluginError) as exc:
        reg.add("ard", Dummy, "plugin-b")
    assert "plugin-a" in str(exc.value) and "plugin-b" in str(exc.value)


def test_unknown_name_lists_close_matches():
    reg = Registry("method")
    for name in ("rslad", "adaad", "adaiad", "pgd-at"):
        reg.add(name, Dummy, "p")
    with pytest.raises(UnknownComponentError) as exc:
        reg.get("rsladd")
    assert exc.value.close_matches[0] == "rslad"
    assert "did you mean 'rslad'" in str(exc.value)
    with pytest.raises(UnknownComponentError) as exc:
        reg.get("zzzzzz")
    assert "known: adaad, adaiad, pgd-at, rslad" in str(exc.value)


def test_component_without_options_is_refused():
    with pytest.raises(PluginError, match="Options"):
        Registry("model").add("bad", object, "p")
    with pytest.raises(PluginError, match="names are"):
        Registry("model").add("Bad Name", Dummy, "p")


def test_a_component_that_does_not_derive_from_its_contract_is_refused_in_one_line():
    """A class contract's defaults (e.g. ``TeacherLoader.protocol``) are part of it: the host reads them as
    attributes, never by probing; a typing.Protocol contract (``ModelFactory``) is structural."""
    class Loader:
        Options = NoOptions

    with pytest.raises(PluginError) as exc:
        Registry("teacher_loader").add("mine", Loader, "their-plugin")
    assert exc.value.message == ("plugin 'their-plugin' registered teacher_loader 'mine', which is not an "
                                 "igdm_kit.interfaces.TeacherLoader")
    assert "derive the class from igdm_kit.interfaces.TeacherLoader" in exc.value.hint
    Registry("model").add("mine", Loader, "their-plugin")  # ModelFactory is a Protocol


def test_builtins_arrive_through_the_hooks():
    reg = plugins.registry("method")
    assert reg.entry("pgd-at").plugin == "igdm_kit_plugins.methods"
    loaded = {name for name, _ in plugins.get_plugin_manager().list_name_plugin()}
    assert set(plugins.DEFAULT_PLUGINS) <= loaded


@pytest.fixture
def fresh_plugins(monkeypatch):
    """A plugin manager with extra fake plugins registered, restored afterwards."""
    plugins.reset()
    yield
    plugins.reset()


def _install_fake(monkeypatch, name: str, module: types.ModuleType) -> None:
    from importlib.metadata import EntryPoint

    monkeypatch.setitem(sys.modules, module.__name__, module)
    real = plugins.entry_points

    def fake_entry_points(group):
        eps = list(real(group=group))
        return eps + [EntryPoint(name=name, value=module.__name__, group=group)]

    monkeypatch.setattr(plugins, "entry_points", fake_entry_points)


def test_failing_plugin_is_reported_by_name_and_others_load(monkeypatch, fresh_plugins, capsys):
    broken = types.ModuleType("broken_plugin_mod")

    def boom(register):
        raise RuntimeError("kaboom")

    broken.register_methods = hookimpl(boom)
    _install_fake(monkeypatch, "broken", broken)
    names = plugins.registry("method").names()
    assert "pgd-at" in names
    errors = plugins.load_errors()
    assert len(errors) == 1 and "'broken'" in str(errors[0]) and "kaboom" in str(errors[0])
    assert "broken" in capsys.readouterr().err


def test_plugin_failing_at_import_is_reported(monkeypatch, fresh_plugins):
    from importlib.metadata import EntryPoint

    real = plugins.entry_points
    monkeypatch.setattr(plugins, "entry_points", lambda group: list(real(group=group)) + [
        EntryPoint(name="missing", value="no_such_module_xyz", group=group)])
    assert "pgd-at" in plugins.registry("method")
    assert any("'missing'" in str(e) and "failed to load" in str(e) for e in plugins.load_errors())


def test_duplicate_from_a_plugin_names_both(monkeypatch, fresh_plugins):
    dup = types.ModuleType("dup_plugin_mod")

    class Clash(Method):
        pass

    dup.register_methods = hookimpl(lambda register: register("pgd-at", Clash))
    _install_fake(monkeypatch, "dup", dup)
    with pytest.raises(PluginError) as exc:
        plugins.registry("method")
    assert "igdm_kit_plugins.methods" in str(exc.value) and "'dup'" in str(exc.value)


def test_allow_list_limits_third_party_plugins(monkeypatch, fresh_plugins):
    extra = types.ModuleType("extra_plugin_mod")

    class Extra(Method):
        pass

    extra.register_methods = hookimpl(lambda register: register("extra-method", Extra))
    _install_fake(monkeypatch, "extra", extra)
    monkeypatch.setenv("IGDM_KIT_LOAD_PLUGINS", "")
    assert "extra-method" not in plugins.registry("method")
    assert "pgd-at" in plugins.registry("method")  # built-ins always load
    plugins.reset()
    monkeypatch.setenv("IGDM_KIT_LOAD_PLUGINS", "extra")
    assert "extra-method" in plugins.registry("method")


def test_allow_list_naming_a_missing_plugin_warns(monkeypatch, fresh_plugins, capsys):
    monkeypatch.setenv("IGDM_KIT_LOAD_PLUGINS", "nosuch")
    plugins.get_plugin_manager()
    assert any("'nosuch'" in str(e) and "not installed" in str(e) for e in plugins.load_errors())
