"""The package's shape, checked: the import rule (import-linter's contracts in pyproject.toml), no import
circle, a top level that is only the public surface, one record per component kind, a wheel that holds every
package, and the 0.1 import paths still working with a DeprecationWarning.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "igdm_kit"
#: the public surface: what ARCHITECTURE.md and igdm_kit/__init__.py name; every other module is private
PUBLIC = {"__init__", "__main__", "errors", "hookspecs", "interfaces", "nn", "losses", "attacks", "factories",
          "files", "evaluation"}


def _lint(cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    code = "from importlinter.cli import lint_imports; raise SystemExit(lint_imports(no_cache=True))"
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, env=env,
                          timeout=300)


def test_the_import_rule_holds():
    res = _lint(ROOT)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "the host's layers KEPT" in res.stdout and "plugins use the public surface only KEPT" in res.stdout


def _copy_host(tmp_path: Path) -> Path:
    dst = tmp_path / "igdm_kit"
    shutil.copytree(PKG, dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def test_a_lower_layer_importing_a_higher_one_breaks_the_rule(tmp_path):
    """A deliberate violation: storage (low) importing the CLI (top) is reported by name and fails."""
    host = _copy_host(tmp_path)
    io = host / "_storage" / "io.py"
    io.write_text(io.read_text() + "\n\ndef _violation():\n    from igdm_kit._cli import main  # noqa\n")
    evil = tmp_path / "evil_plugin"
    evil.mkdir()
    (evil / "__init__.py").write_text("from igdm_kit._training.engine import run  # reaches past the contracts\n")
    config = (ROOT / "pyproject.toml").read_text()
    config = config.replace('root_packages = ["igdm_kit", "igdm_kit_plugins", "igdm_kit_example"]',
                            'root_packages = ["igdm_kit", "evil_plugin"]')
    config = config.replace('source_modules = ["igdm_kit_plugins", "igdm_kit_example"]',
                            'source_modules = ["evil_plugin"]')
    (tmp_path / "pyproject.toml").write_text(config)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    res = _lint(tmp_path, env)
    assert res.returncode == 1, res.stdout[-3000:]
    assert "the host's layers BROKEN" in res.stdout
    assert "igdm_kit._storage.io -> igdm_kit._cli" in res.stdout
    assert "plugins use the public surface only BROKEN" in res.stdout
    assert "evil_plugin -> igdm_kit._training.engine" in res.stdout


def test_no_import_circle():
    """No module imports (at run time) a module that imports it back, directly or through others."""
    import grimp

    graph = grimp.build_graph("igdm_kit", cache_dir=None, exclude_type_checking_imports=True)
    circles = sorted({tuple(sorted((a, b))) for a in graph.modules for b in graph.find_modules_directly_imported_by(a)
                      if b != a and graph.find_shortest_chain(importer=b, imported=a)})
    assert circles == []


def test_the_top_level_is_the_public_surface():
    top = {p.stem for p in PKG.glob("*.py")} | {p.name for p in PKG.iterdir() if (p / "__init__.py").exists()}
    private = {n for n in top if n.startswith("_") and not n.startswith("__")}
    assert top - private == PUBLIC
    doc = (ROOT / "ARCHITECTURE.md").read_text()
    for name in PUBLIC - {"__init__", "__main__"} | private:
        assert f"{name}" in doc, f"ARCHITECTURE.md does not say what igdm_kit.{name} is"


def test_every_kind_is_one_record_and_everything_derives_from_it():
    from igdm_kit import hookspecs, interfaces
    from igdm_kit._cli.plugins import register  # noqa: F401 - its --kind help is built from the records
    from igdm_kit._plugins import kinds
    from igdm_kit._plugins import manager as plugins

    hooks = {n for n in vars(hookspecs) if n.startswith("register_") and n != "register_commands"}
    assert {k.hook for k in kinds.KINDS} == hooks
    for k in kinds.KINDS:
        assert isinstance(getattr(interfaces, k.contract), type), k.contract
        assert k.name in plugins.KINDS
        plugins.registry(k.name)  # each registry builds from its hook
    assert plugins.DEFAULT_PLUGINS  # found, not listed
    assert {m.name for m in os.scandir(ROOT / "plugins") if m.is_dir() and (Path(m.path) / "__init__.py").exists()} \
        == {p.split(".")[1] for p in plugins.DEFAULT_PLUGINS if p.startswith("igdm_kit_plugins.")}


def test_plugins_show_names_every_kind(cli):
    from igdm_kit._plugins.kinds import NAMES

    res = cli("plugins", "show", "--help")
    flat = " ".join(res.out.split())
    for name in NAMES:
        assert name in flat
    res = cli("plugins", "show", "nope", "--kind", "nonsense")
    assert res.code == 1 and all(n in res.err for n in NAMES)


@pytest.mark.slow
def test_the_wheel_holds_every_package(tmp_path):
    """Packages are found, not listed: every folder with an __init__.py is in the wheel."""
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    (wheel,) = tmp_path.glob("igdm_kit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"igdm_kit/{p.relative_to(PKG).as_posix()}" for p in PKG.rglob("__init__.py")}
    expected |= {f"igdm_kit_plugins/{p.relative_to(ROOT / 'plugins').as_posix()}"
                 for p in (ROOT / "plugins").rglob("__init__.py")}
    assert expected <= names, sorted(expected - names)
    assert "igdm_kit/_training/builtin_callbacks.py" in names


def test_the_old_import_paths_work_with_a_deprecation_warning():
    code = textwrap.dedent("""
        import warnings
        warnings.simplefilter("always")
        with warnings.catch_warnings(record=True) as seen:
            from igdm_kit.evaluation import MarginPGD, evaluate  # evaluate is public, MarginPGD moved
            from igdm_kit.engine import run
            import igdm_kit.training.folder as folder
            from igdm_kit.plugins import registry
            from igdm_kit.step import Step
        import igdm_kit.attacks, igdm_kit._evaluation.runner, igdm_kit._training.engine, igdm_kit._storage.run_folder
        assert MarginPGD is igdm_kit.attacks.MarginPGD and evaluate is igdm_kit._evaluation.runner.evaluate
        assert run is igdm_kit._training.engine.run and folder is igdm_kit._storage.run_folder
        assert registry("method").entry("ard")
        msgs = [str(w.message) for w in seen if w.category is DeprecationWarning]
        assert any("igdm_kit.evaluation.MarginPGD is deprecated" in m for m in msgs), msgs
        assert not any("evaluation.evaluate " in m for m in msgs), msgs
        assert any("igdm_kit.engine is deprecated" in m for m in msgs), msgs
        print("ok")
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]
