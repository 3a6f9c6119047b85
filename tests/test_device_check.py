"""benchmarks/device_check.py: its CPU dry run (the same code path as on a GPU, tiny sizes) end to end, a
failing and an overrunning section recorded without stopping the check, bad arguments, and its helpers.

Oracles: this process's own torch (versions), the registry (how many tests the selection holds), the
README's pass counts of one training step at K = 10 (IGDM_AdaAD 12/11, IGDM_ARD 12/1, IGDM_RSLAD 13/2;
reference_passes IGDM_AdaAD 14/14), the recipe loader (the overrides the check passes are valid recipe
keys), arithmetic on the reported times, and what the lent machine's $OUT can return (≤ 8 plain files).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from igdm_kit import _recipe as R
from igdm_kit._plugins.manager import registry

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "device_check.py"
SECTIONS = ["env", "tests", "bench", "train", "ddp"]
PASSES = {("adaad+igdm", "default"): (12, 11), ("adaad+igdm", "reference"): (14, 14),
          ("ard+igdm", "default"): (12, 1), ("rslad+igdm", "default"): (13, 2)}


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


dc = _load("device_check", SCRIPT)


def run_script(*args, timeout=400):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                         env=env, timeout=timeout, cwd=ROOT)
    return res, time.monotonic() - t0


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dry") / "out"
    res, wall = run_script(out, "--dry-run")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out, json.loads((out / "device_check.json").read_text()), res, wall


def test_dry_run_writes_what_a_lent_machine_can_send_back(dry_run):
    out, report, res, wall = dry_run
    files = sorted(p.name for p in out.iterdir())
    assert files == ["device_check.json", "logs.txt", "summary.txt"]  # ≤ 8 plain files, no folders
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", f) for f in files)
    assert report["dry_run"] is True and list(report["sections"]) == SECTIONS
    assert report["elapsed_s"] <= report["budget_s"] and wall < report["budget_s"] + 30
    assert res.stdout == (out / "summary.txt").read_text()  # the summary is also the command's output
    summary = res.stdout.splitlines()
    for name in SECTIONS:
        assert any(line.startswith(f"{name} ") for line in summary), name
    assert "dry run" in summary[0]


def test_dry_run_env_and_tests(dry_run):
    _, report, _, _ = dry_run
    env, tests = report["sections"]["env"], report["sections"]["tests"]
    assert env["status"] == "ok" and env["torch"] == torch.__version__
    assert env["cuda_available"] == torch.cuda.is_available() and env["missing_packages"] == []
    assert tests["status"] == "ok" and tests["device"] == "cpu"
    n = 2 * len(registry("attack").names())  # test_stays_in_eps_ball_and_unit_box: 2 radii × every attack
    assert tests["counts"]["passed"] == n and tests["counts"]["failed"] == tests["counts"]["error"] == 0


def test_dry_run_bench_rows(dry_run):
    _, report, _, _ = dry_run
    bench = report["sections"]["bench"]
    assert bench["status"] == "ok"
    rows = {(r["method"], r["variant"]): r for r in bench["rows"]}
    variants = ["default", "reference", "bf16", "channels_last", "gpu_data"]
    assert set(rows) == {(m, v) for m in ["adaad+igdm", "ard+igdm", "rslad+igdm"] for v in variants}
    for (method, variant), r in rows.items():
        assert r["ms_per_step"] > 0 and r["peak_mem_bytes"] is None  # no CUDA memory on a CPU
        assert r["images_per_s"] == pytest.approx(r["batch_size"] * 1000 / r["ms_per_step"], rel=1e-9)
        assert r["projected_epoch_s"] == pytest.approx(math.ceil(50_000 / r["batch_size"]) * r["ms_per_step"]
                                                       / 1000, rel=1e-9)
        assert r["reference_passes"] == (variant == "reference")
        if variant == "default":
            assert r["baseline"] == "reference" and r["speedup"] > 0
        if (method, variant) in PASSES:
            assert (r["student_forwards"], r["teacher_forwards"]) == PASSES[method, variant]
    compiled = [e for e in bench["runs"] if e["group"] != "eager"]
    assert len(compiled) == 6 and all(e["status"] == "skipped" and "CPU" in e["reason"] for e in compiled)


def test_dry_run_training_run_through_the_recipe_path(dry_run):
    _, report, _, _ = dry_run
    train, rows = report["sections"]["train"], report["sections"]["bench"]["rows"]
    assert train["status"] == "ok"
    best = min((r for r in rows if r["method"] == "adaad+igdm" and r["variant"] != "reference"),
               key=lambda r: r["ms_per_step"])
    assert train["variant"] == best["variant"]
    steps, epochs, batch = train["steps_per_epoch"], train["epochs"], train["batch_size"]
    assert f"data.train_size={steps * batch}" in train["overrides"]
    for key, value in best["accel"].items():
        assert any(o.startswith(f"train.{key}=") and str(value).lower() in o for o in train["overrides"])
    assert len(train["epoch_seconds"]) == epochs == 2
    assert train["s_per_step"] == pytest.approx(train["epoch_seconds"][1] / steps, rel=1e-9)
    assert train["cifar_epoch_s"] == pytest.approx(train["s_per_step"] * math.ceil(50_000 / batch), rel=1e-9)
    assert train["bench_projected_epoch_s"] == pytest.approx(best["projected_epoch_s"])


def test_dry_run_skips_the_two_process_run_with_a_line(dry_run):
    out, report, _, _ = dry_run
    ddp = report["sections"]["ddp"]
    assert ddp["status"] == "skipped" and "2 GPUs" in ddp["reason"]
    assert any(line.startswith("ddp ") and "2 GPUs" in line
               for line in (out / "summary.txt").read_text().splitlines())


def test_a_failing_and_an_overrunning_section_are_recorded_and_the_check_goes_on(tmp_path):
    marker = f"zz_marker_{uuid.uuid4().hex}"  # names the inner pytest's processes
    out = tmp_path / "out"
    res, _ = run_script(out, "--dry-run", "--sections", "tests,bench,ddp", "--window", "env=1",
                        "--window", "tests=4",
                        "--pytest-args", f"tests/test_resume.py -k 'sigkill or {marker}'",
                        "--methods", "nosuch+igdm", timeout=200)
    assert res.returncode == 1, res.stderr[-2000:]
    assert "tests, bench did not pass" in res.stderr
    report = json.loads((out / "device_check.json").read_text())
    tests, bench = report["sections"]["tests"], report["sections"]["bench"]
    assert tests["status"] == "timeout" and tests["window_s"] == pytest.approx(5, abs=0.5)  # env's 1 s passed on
    assert tests["seconds"] < tests["window_s"] + 11  # SIGTERM, then SIGKILL 5 s later
    assert not _alive(marker), "the overrunning section's processes outlived its time box"
    assert bench["status"] == "failed" and "nosuch" in bench["error"]
    assert [e["status"] for e in bench["runs"] if e["group"] == "eager"] == ["failed"]
    assert report["sections"]["ddp"]["status"] == "skipped"
    assert {report["sections"][s]["status"] for s in ("env", "train")} == {"skipped"}


@pytest.mark.slow
def test_two_process_section_with_gloo_on_the_cpu(tmp_path):
    """--ddp-cpu: the two-process section's own code (torchrun, the run folder's checks) with gloo."""
    out = tmp_path / "out"
    res, _ = run_script(out, "--dry-run", "--sections", "ddp", "--ddp-cpu", timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    ddp = json.loads((out / "device_check.json").read_text())["sections"]["ddp"]
    assert ddp["status"] == "ok" and ddp["backend"] == "gloo" and ddp["processes"] == ddp["world_size"] == 2
    assert ddp["device"] == "cpu" and len(ddp["epoch_seconds"]) == 1


def _alive(marker: str) -> list[Path]:
    """Processes of the inner ``python -m pytest ... -k '... marker'`` (not the check's own)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_text(errors="replace")
            if marker in text and "\x00pytest\x00" in text:
                found.append(cmdline)
        except OSError:
            pass
    return found


def test_sigterm_ends_the_running_command_and_keeps_what_was_measured(tmp_path):
    marker = f"zz_marker_{uuid.uuid4().hex}"
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(out), "--dry-run", "--sections", "tests,ddp",
                             "--pytest-args", f"tests/test_resume.py -k 'sigkill or {marker}'"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    t0 = time.monotonic()
    while not _alive(marker) and time.monotonic() - t0 < 60:
        time.sleep(0.1)
    assert _alive(marker), "the tests section did not start pytest"
    time.sleep(1.0)
    proc.send_signal(15)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1, stderr[-2000:]
    report = json.loads((out / "device_check.json").read_text())
    assert report["sections"]["tests"]["status"] == "failed"
    assert "interrupted by SIGTERM" in report["sections"]["tests"]["error"]
    assert report["sections"]["ddp"]["status"] == "skipped" and "SIGTERM" in report["sections"]["ddp"]["reason"]
    assert not _alive(marker) and "tests" in stdout


@pytest.mark.parametrize(("argv", "needle"), [
    (["--dry-run"], "no output folder"),
    (["OUT", "--sections", "env,nope"], "nope"),
    (["OUT", "--window", "bench=-1"], "--window 'bench=-1'"),
    (["OUT", "--window", "gpu=10"], "--window 'gpu=10'"),
    (["OUT", "--budget", "0"], "--budget 0"),
])
def test_bad_arguments_are_one_line_errors_with_a_hint(argv, needle, capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("OUT", raising=False)
    argv = [str(tmp_path / "o") if a == "OUT" else a for a in argv]
    assert dc.main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0].startswith("error: ") and needle in err[0] and err[1].startswith("hint: ")
    assert not (tmp_path / "o").exists()


def test_out_defaults_to_the_environment_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("OUT", str(tmp_path / "from_env"))
    assert dc.resolve_out(dc.parse_args([])) == tmp_path / "from_env"


# -- helpers ---------------------------------------------------------------------------------------------------

def test_parse_pytest_counts_outcomes_also_of_a_killed_run():
    output = "\n".join([
        "tests/test_a.py::test_x[cpu-1] PASSED                     [ 25%]",
        "tests/test_a.py::test_y FAILED                            [ 50%]",
        "tests/test_b.py::test_z SKIPPED (needs a GPU)             [ 75%]",
        "tests/test_b.py::test_w ERROR                             [100%]",
        "FAILED tests/test_a.py::test_y - AssertionError",  # the -ra summary repeats it: not counted again
    ])
    parsed = dc.parse_pytest(output)
    assert parsed["counts"] == {"passed": 1, "failed": 1, "error": 1, "skipped": 1, "xfail": 0, "xpass": 0}
    assert parsed["failing"] == ["tests/test_a.py::test_y", "tests/test_b.py::test_w"]


def test_steps_per_epoch_fits_the_time_box():
    plan = dc.cuda_plan()  # 3 epochs, 20..100 steps, 30 s of overhead
    assert dc.steps_per_epoch(plan, None, 500) == 20  # nothing measured: the fewest
    assert dc.steps_per_epoch(plan, 100.0, 75) == 100  # (75 − 30) / (3 · 1.5 · 0.1 s) = 100
    assert dc.steps_per_epoch(plan, 200.0, 75) == 50
    assert dc.steps_per_epoch(plan, 5000.0, 75) == 20 and dc.steps_per_epoch(plan, 1.0, 600) == 100


def test_train_speed_leaves_out_the_first_epoch():
    speed = dc.train_speed([{"seconds": 90.0}, {"seconds": 10.0}, {"seconds": 12.0}], steps=100, batch=128)
    assert speed["s_per_step"] == pytest.approx(0.11)  # median(10, 12) / 100
    assert speed["cifar_epoch_s"] == pytest.approx(0.11 * 391) and speed["meets_target"] is True
    assert dc.train_speed([{"seconds": 5.0}], steps=10, batch=8)["s_per_step"] == pytest.approx(0.5)


def test_fastest_excludes_reference_passes():
    rows = [{"method": "adaad+igdm", "variant": "reference", "reference_passes": True, "ms_per_step": 1.0},
            {"method": "adaad+igdm", "variant": "bf16", "reference_passes": False, "ms_per_step": 3.0},
            {"method": "adaad+igdm", "variant": "compile", "reference_passes": False, "ms_per_step": 2.0},
            {"method": "ard+igdm", "variant": "bf16", "reference_passes": False, "ms_per_step": 0.5}]
    assert dc.fastest(rows)["variant"] == "compile"
    assert dc.fastest(rows[:1]) is None


def test_the_recipe_and_the_overrides_the_check_passes_are_valid(tmp_path):
    accel = {"amp": "bf16", "channels_last": True, "compile": True, "cudnn_benchmark": False, "gpu_data": True}
    sets = [f"teacher.checkpoint={json.dumps(str(tmp_path / 't.pt'))}", "data.train_size=1280",
            *dc.cuda_plan().train_sets, *dc.accel_sets(accel)]
    train = R.load(dc.RECIPE, sets).resolved()["train"]
    assert {k: train[k] for k in accel} == accel
    r = R.load(dc.RECIPE, [*sets, *dc.dry_plan().train_sets])
    assert r.model.student.model == "small-cnn" and r.resolved()["data"]["image_size"] == 16
    plain = R.load(dc.RECIPE).resolved()
    assert (plain["data"]["name"], plain["student"]["model"], plain["teacher"]["model"]) == \
        ("synthetic", "resnet18", "wrn-28-10")
    assert (plain["method"]["name"], plain["module"]["name"]) == ("adaad", "igdm")
    assert plain["train"]["batch_size"] == 128 and plain["attack"]["steps"] == 10


def test_the_cuda_plan_fits_in_eight_minutes():
    plan = dc.cuda_plan()
    assert sum(plan.windows.values()) == pytest.approx(plan.budget_s) and plan.budget_s < 8 * 60 - 15
    groups = {(r.method, r.group): r.variants.split(",") for r in plan.bench_runs}
    everything = {v for vs in groups.values() for v in vs}
    # the list: fp32 eager, bf16, fp16, channels_last, compile, gpu_data, all combined; vs reference
    assert {"default", "reference", "bf16", "fp16", "channels_last", "compile", "gpu_data",
            "fast+gpu_data"} <= everything
    assert {m for m, _ in groups} == {"adaad+igdm", "ard+igdm", "rslad+igdm"}


def test_make_teacher_writes_a_calibrated_state_dict(tmp_path):
    from igdm_kit.factories import create_model

    path = tmp_path / "t.pt"
    dc.make_teacher(path, {"model": "small-cnn", "options": {"width": 4}, "classes": 10, "image_size": 8})
    state = torch.load(path, weights_only=True)
    fresh = create_model("small-cnn", num_classes=10, in_channels=3, image_size=8, width=4).state_dict()
    assert list(state) == list(fresh)
    means = [v for k, v in state.items() if k.endswith("running_mean")]
    assert means and all(float(m.abs().max()) > 0 for m in means)  # statistics of the calibration images


# -- step_speed's peak memory -----------------------------------------------------------------------------------

def test_resident_bytes_counts_each_storage_once():
    step_speed = _load("step_speed_for_device_check", ROOT / "benchmarks" / "step_speed.py")
    student = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.BatchNorm1d(3))
    teacher = torch.nn.Linear(5, 2)
    opt = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)
    student(torch.rand(4, 5)).sum().backward()
    opt.step()
    x, y = torch.rand(7, 5), torch.arange(7)
    r = SimpleNamespace(student=student, teacher=teacher, opt=opt, x=x, y=y, device=torch.device("cpu"),
                        peaks=[])
    params = (5 * 3 + 3) + (3 + 3)  # Linear(5, 3) and the BatchNorm's affine
    expected = 4 * (params + 3 + 3) + 8  # + running mean/var (float32), num_batches_tracked (int64)
    expected += 4 * (5 * 2 + 2)  # the teacher
    expected += 2 * 4 * params  # gradients and momentum buffers
    expected += 4 * 35 + 8 * 7  # the data
    assert step_speed.resident_bytes(r) == expected
    same = SimpleNamespace(**{**vars(r), "teacher": student})  # one model twice: counted once
    assert step_speed.resident_bytes(same) == expected - 4 * 12
    assert step_speed.memory_fields(r)["peak_mem_bytes"] is None
    r.peaks = [100, 300, 200]
    assert step_speed.memory_fields(r) == {"peak_mem_bytes": expected + 300, "step_mem_bytes": 300,
                                           "resident_mem_bytes": expected}
