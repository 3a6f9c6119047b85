"""The README's set-up, in `.ci/run`'s spirit: two commands that work as written, the pins `.ci/run`
installs and `pyproject.toml` allows, and a CPU-only form that only adds PyTorch's CPU wheel index."""

from __future__ import annotations

import re
import shlex
import tomllib

from conftest import ROOT
from packaging.requirements import Requirement

README = (ROOT / "README.md").read_text(encoding="utf-8")
SETUP = README.split("## Set up on a fresh machine", 1)[1].split("\n## ", 1)[0]


def _pins(command: str) -> dict[str, str]:
    return dict(a.split("==") for a in shlex.split(command) if "==" in a)


def test_setup_is_two_commands():
    blocks = re.findall(r"```bash\n(.*?)```", SETUP, re.S)
    assert [b.strip().split()[:2] for b in blocks] == [["pip", "install"], ["python", "-m"]]
    install, tests = (b.strip() for b in blocks)
    assert tests == "python -m pytest"
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert install in ci and tests in ci  # .ci/run runs the README's two commands verbatim
    assert ci.index(install) < ci.index(tests)
    pip_part, run_part = install.split(" && ")
    assert run_part == "igdm-kit run recipes/quickstart.toml"
    from igdm_kit import _recipe as R

    R.load(ROOT / "recipes" / "quickstart.toml")  # the recipe it runs is there and validates


def test_the_pins_are_within_the_projects_bounds():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    bounds = {Requirement(d).name: Requirement(d).specifier for d in deps}
    install = re.findall(r"```bash\n(.*?)```", SETUP, re.S)[0]
    for name, version in _pins(install).items():
        assert version in bounds[name], (name, version, bounds[name])


def test_the_cpu_only_form_only_adds_the_cpu_wheel_index():
    (flag, url), = re.findall(r"`(--(?:extra-)?index-url) (\S+)`", SETUP)
    assert flag == "--extra-index-url"  # keeps PyPI for every other dependency of the one command
    assert url.startswith("https://") and url.rstrip("/").endswith("/whl/cpu")
    assert "+cpu" in SETUP


def _script():
    import importlib.util
    import sys

    path = ROOT / "benchmarks" / "readme_quickstart.py"
    spec = importlib.util.spec_from_file_location("readme_quickstart", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_the_quickstart_block_is_written_by_the_script():
    """README.md holds one generated block; the script's writer replaces exactly that block and its sentence
    is computed from the rows (here an oracle's: 360 images, one image = 100/360 points)."""
    q = _script()
    assert README.count(q.BEGIN) == 1 and README.count(q.END) == 1
    block = " ".join(README.split(q.BEGIN)[1].split(q.END)[0].split())  # the sentence is wrapped at 110 columns
    assert "python benchmarks/readme_quickstart.py" in block
    rows = [{"variant": "alpha=0", "n": 360, "clean": 99.17, "autoattack": 86.39, "gc": 0.719, "gd": 0.134,
             "ci95": {"clean": [97.0, 99.0], "autoattack": [82.0, 90.0]}},
            {"variant": "alpha=6", "n": 360, "clean": 99.44, "autoattack": 85.0, "gc": 0.755, "gd": 0.190,
             "ci95": {"clean": [98.0, 100.0], "autoattack": [81.0, 88.0]}}]
    columns = [["clean", "Clean"], ["autoattack", "AA"]]
    text = q.sentence({"rows": rows, "columns": columns}, 104.0, "2")
    assert "Clean +0.27 (+1)" in text and "AA -1.39 (-5)" in text and "largest change is 5 images" in text
    assert "1 min 44 s" in text and "2 torch threads" in text and "GC 0.719 → 0.755" in text
    assert "±1.0 to ±4.0 points" in text  # half the widest and the narrowest interval
    tests = [{"variant": "alpha=6", "rows": {"clean": {"p_value": 1.0, "significant": False},
                                             "autoattack": {"p_value": 0.031, "significant": True}}}]
    text = q.sentence({"rows": rows, "columns": columns, "versus_first": tests}, 104.0, "1")
    assert "AA -1.39 (-5, p = 0.031)" in text and "only AA changed significantly" in text and "1 torch thread)" in text
    new = q.block("TABLE", text)
    out = q.rewrite(f"before\n{q.BEGIN}\nold\n{q.END}\nafter\n", new)
    assert out.startswith("before\n") and out.endswith("\nafter\n") and "old" not in out and "TABLE" in out
