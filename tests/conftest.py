"""Shared fixtures: run the CLI in-process and capture stdout/stderr and the exit code."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"

# Two cores are shared by everything: keep torch from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", metavar="DEVICE",
                     help="where the accelerator, attack, method and resume tests run: cpu (default), cuda, "
                          "cuda:N (benchmarks/device_check.py runs them on the GPU)")


def pytest_configure(config):
    name = config.getoption("--device", "cpu")
    if name == "cpu":
        return
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise pytest.UsageError(f"--device {name!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if device.type != "cuda":
        raise pytest.UsageError(f"--device {name!r}: only cpu and cuda are supported; use cpu or cuda:N")
    if not torch.cuda.is_available():
        raise pytest.UsageError(f"--device {name!r}: this torch sees no CUDA GPU; run without --device")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise pytest.UsageError(f"--device {name!r}: only {torch.cuda.device_count()} GPU(s) here; "
                                f"use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    # The tests compare against float32 references with CPU tolerances: TF32 convolutions and matmuls
    # (cuDNN's default on Ampere and later) would round to 10 mantissa bits.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


@pytest.fixture(scope="session")
def device(request):
    """The torch device of ``--device`` (cpu unless asked): tests that take it put their models and
    tensors there, so the same assertions check the CUDA paths on a GPU."""
    import torch

    return torch.device(request.config.getoption("--device"))


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def _importable(name: str) -> bool:
    try:
        __import__(name)
    except Exception:  # noqa: BLE001 - absent or broken: tests of what needs it skip
        return False
    return True


_EXTRA_HINT = re.compile(r"pip install 'igdm-kit\[([\w-]+)\]'")


def load_recipe(path, overrides=None):
    """``_recipe.load``, or a skip when the recipe needs an optional extra this Python lacks: its one-line
    error then names the extra's install line (e.g. a timm student without the timm extra)."""
    from igdm_kit import _recipe
    from igdm_kit.errors import RecipeError

    try:
        return _recipe.load(path, overrides)
    except RecipeError as exc:
        extra = _EXTRA_HINT.search(str(exc))
        if extra is None:
            raise
        pytest.skip(f"{path} needs the {extra.group(1)} extra: {exc.message}")


def loadable_recipes(paths):
    """(path, recipe) for each recipe that loads here; those needing an absent extra are left out, as
    ``load_recipe`` skips them."""
    out = []
    for path in paths:
        try:
            out.append((path, load_recipe(path)))
        except pytest.skip.Exception:
            continue
    return out


def model_params() -> list:
    """Every registered model as a test parameter; ``timm`` skips with its install line without the extra."""
    from igdm_kit.factories import list_models

    return [pytest.param(n, marks=pytest.mark.skipif(not _importable("timm"), reason="pip install 'igdm-kit[timm]'"))
            if n == "timm" else n for n in list_models()]


@pytest.fixture
def cli(capsys):
    """``cli("recipe", "check", path)`` runs ``igdm-kit`` in-process."""
    from igdm_kit._cli import main

    def call(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return call


def run_cli_subprocess(*args: str, env: dict | None = None, cwd: str | None = None, timeout: float = 600):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "igdm_kit", *map(str, args)], capture_output=True,
                          text=True, env=full_env, cwd=cwd, timeout=timeout)


@pytest.fixture
def write_recipe(tmp_path):
    """``write_recipe(text, name="r.toml")`` writes a recipe file and returns its path."""

    def write(text: str, name: str = "r.toml") -> Path:
        p = tmp_path / name
        p.write_text(text, encoding="utf-8")
        return p

    return write


DIGITS_PGDAT = """
name = "t"
[data]
name = "digits"
[student]
model = "small-cnn"
width = 8
[method]
name = "pgd-at"
[attack]
eps = 0.1
step_size = 0.05
steps = 2
[train]
epochs = 1
batch_size = 64
milestones = []
[eval]
attacks = ["clean"]
"""

#: DIGITS_PGDAT at its smallest (256 training images, width 4): a few tenths of a second per epoch.
TINY = DIGITS_PGDAT.replace('name = "digits"', 'name = "digits"\ntrain_limit = 256', 1).replace("width = 8",
                                                                                               "width = 4")
