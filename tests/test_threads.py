"""The CPU thread setting: one rule (--threads, IGDM_KIT_THREADS, [train] threads, OMP_NUM_THREADS, the
physical cores available), honoured by every command and the benchmark, and not part of a recipe's digest."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DIGITS_PGDAT

from igdm_kit._runtime import threads

TINY = DIGITS_PGDAT.replace('name = "digits"', 'name = "digits"\ntrain_limit = 64\ntest_limit = 32')


@pytest.fixture
def torch_threads():
    """Restore torch's thread count (the suite runs with one) after a test that changes it."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_the_order_of_the_thread_settings(monkeypatch):
    monkeypatch.delenv(threads.ENV, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.resolve() == 3  # OMP_NUM_THREADS stands in for the default
    assert threads.resolve(2) == 2  # the recipe's beats OMP_NUM_THREADS
    monkeypatch.setenv(threads.ENV, "5")
    assert threads.resolve(2) == 5  # IGDM_KIT_THREADS (and --threads, which sets it) beats the recipe
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.delenv(threads.ENV)
    assert threads.resolve() == threads.physical_cores_available()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(2 * threads.physical_cores_available()))
    assert threads.resolve() == 1  # torchrun's ranks on this machine share its cores, one at least


def test_a_bad_thread_variable_is_one_line(monkeypatch):
    from igdm_kit.errors import IgdmKitError

    monkeypatch.setenv(threads.ENV, "many")
    with pytest.raises(IgdmKitError, match="IGDM_KIT_THREADS is 'many'"):
        threads.resolve()


@pytest.mark.skipif(shutil.which("lscpu") is None or not hasattr(os, "sched_getaffinity"),
                    reason="needs lscpu and CPU affinity")
def test_physical_cores_match_lscpu():
    """Oracle: lscpu's (core, socket) pairs of the CPUs this process may use (cgroup quota aside)."""
    out = subprocess.run(["lscpu", "-p=CPU,CORE,SOCKET"], capture_output=True, text=True, check=True).stdout
    allowed = os.sched_getaffinity(0)
    cores = {tuple(line.split(",")[1:]) for line in out.splitlines()
             if line and not line.startswith("#") and int(line.split(",")[0]) in allowed}
    quota = threads._cpu_quota()
    assert threads.physical_cores_available() == (min(len(cores), quota) if quota else len(cores))


def test_threads_are_not_part_of_the_digest(write_recipe):
    from igdm_kit._recipe import load

    p = write_recipe(DIGITS_PGDAT)
    assert load(p, ["train.threads=1"]).digest() == load(p, ["train.threads=2"]).digest() == load(p).digest()


def _threads_of_run(cli, tmp_path, recipe, *global_options: str) -> int:
    """The thread count a run records in its manifest (``global_options`` go before ``run``)."""
    out = tmp_path / "run"
    shutil.rmtree(out, ignore_errors=True)
    res = cli(*global_options, "run", recipe, "--output", out)
    assert res.code == 0, res.err
    return json.loads((out / "manifest.json").read_text())["threads"]


@pytest.mark.slow
def test_every_setting_reaches_the_run(cli, write_recipe, tmp_path, monkeypatch, torch_threads):
    monkeypatch.delenv(threads.ENV, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    plain = write_recipe(TINY)
    with_two = write_recipe(TINY.replace("epochs = 1", "epochs = 1\nthreads = 2"), "two.toml")
    assert _threads_of_run(cli, tmp_path, plain) == 1
    assert _threads_of_run(cli, tmp_path, with_two) == 2
    assert _threads_of_run(cli, tmp_path, with_two, "--threads", "1") == 1
    assert threads.ENV not in os.environ  # --threads lasts for one command
    monkeypatch.setenv(threads.ENV, "1")
    assert _threads_of_run(cli, tmp_path, with_two) == 1


def test_eval_honours_threads(cli, tmp_path, monkeypatch, torch_threads):
    import torch

    from igdm_kit._storage.checkpoint import save_model
    from igdm_kit.factories import create_model

    monkeypatch.delenv(threads.ENV, raising=False)
    meta = {"model": "small-cnn", "model_options": {"width": 4}, "num_classes": 10, "in_channels": 1,
            "image_size": 8, "mean": None, "std": None, "dataset": {"name": "digits", "options": {}}}
    path = tmp_path / "m.safetensors"
    save_model(path, create_model("small-cnn", num_classes=10, in_channels=1, image_size=8, width=4), meta)
    torch.set_num_threads(1)
    res = cli("--threads", "2", "eval", "--model", path, "--attacks", "clean", "--limit", "8", "--json")
    assert res.code == 0, res.err
    assert torch.get_num_threads() == 2


def test_the_cli_asks_openmp_to_sleep_while_waiting():
    """Spinning OpenMP threads collapse on a busy machine: the CLI sets OMP_WAIT_POLICY before torch loads."""
    code = ("import os, sys\nfrom igdm_kit._cli import main\ntry:\n    main(['--version'])\nexcept SystemExit:\n"
            "    pass\nprint(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.split()[-2:] == ["PASSIVE", "False"], out.stdout + out.stderr
    env["OMP_WAIT_POLICY"] = "ACTIVE"  # a user's own choice stays
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.split()[-2] == "ACTIVE"


def test_the_benchmark_prints_and_records_its_threads(tmp_path, monkeypatch, capsys, torch_threads):
    import importlib.util

    monkeypatch.delenv(threads.ENV, raising=False)
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "step_speed.py"
    spec = importlib.util.spec_from_file_location("step_speed", path)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)
    spec.loader.exec_module(bench)
    out = tmp_path / "speed.json"
    assert bench.main(["--quick", "--methods", "pgd-at", "--repeats", "1", "--warmup", "0", "--threads", "1",
                       "--out", str(out)]) == 0
    assert json.loads(out.read_text())["meta"]["threads"] == 1
    err = capsys.readouterr().err
    assert "torch CPU threads: 1" in err


def test_the_busy_warning_compares_load_with_cpus():
    load, cpus = threads.machine_load()
    warning = threads.busy_warning(1)
    assert (warning is None) == (load + 1 <= cpus + 0.5)
    assert threads.busy_warning(10_000) is not None  # more threads than any machine here has free


@pytest.mark.parametrize("source", ["--threads", "IGDM_KIT_THREADS", "OMP_NUM_THREADS"])
def test_a_thread_count_past_the_recipe_range_is_refused_from_every_source(source, cli, write_recipe, tmp_path,
                                                                           monkeypatch):
    """#27's red team: ``--threads 10000`` was taken (the recipe key stops at 4096) and a 64-image epoch took
    110 s, SIGTERM 173 s to act. Every source has the recipe's range, and says so in one line."""
    monkeypatch.delenv(threads.ENV, raising=False)
    p = write_recipe(TINY)
    args = ("run", p, "--output", tmp_path / "run")
    if source == "--threads":
        res = cli("--threads", "10000", *args)
    else:
        monkeypatch.setenv(source, "10000")
        res = cli(*args)
    assert res.code != 0 and "Traceback" not in res.err
    assert source in res.err and "4096" in res.err, res.err  # the source named, with the limit
    assert not (tmp_path / "run").exists()  # refused before the folder is touched
