"""igdm-kit on a GPU, checked and timed in one command (issue 16).

    bash benchmarks/device_check.sh OUT_DIR               # a CUDA machine: under 8 minutes
    python benchmarks/device_check.py OUT_DIR --dry-run   # the same code path on a CPU, tiny sizes, < 1 min

Sections, each in its own time box (its own processes, killed when the box ends); a section that fails or
runs out of time is recorded and the next one runs, and time a section leaves unused passes on to the next:

env    GPU names and memory, driver, CUDA, cuDNN, NCCL, torch, Python, packages igdm-kit needs but lacks.
tests  the accelerator, attack and method contract and resume tests on the GPU (``pytest --device cuda``).
bench  ``benchmarks/step_speed.py`` for IGDM_AdaAD, IGDM_ARD and IGDM_RSLAD at CIFAR-100 shapes (ResNet-18 ←
       WRN-28-10, batch 128, K = 10): fp32 eager (the default path) against ``reference_passes``, bf16, fp16,
       channels_last, gpu_data — one process per method — then compile and all combined, each in a process
       of its own beside the default path (compiling can outlast its box and must not take the rest with
       it): ms/step, images/s, peak GPU memory and the projected seconds per 50,000-image epoch.
train  ``igdm-kit run benchmarks/device_check.toml``: IGDM_AdaAD on synthetic CIFAR-100-shaped data through
       the normal recipe path with the option set the bench found fastest, a few hundred steps; the
       engine's measured seconds per step, extrapolated to a CIFAR epoch, against the 60 s target.
ddp    a two-process ``torchrun`` (nccl) training run when the machine has two GPUs; else skipped, with a line.

Everything goes into OUT (default ``$OUT``): ``device_check.json`` (all measurements), ``summary.txt``
(the short version) and ``logs.txt`` (each step's command and output tail), rewritten after every section —
three files, which is what a lent machine's ``$OUT`` can send back. Exit status 0 when every section passed
or was skipped, 1 when one failed or timed out, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "benchmarks" / "device_check.toml"
STEP_SPEED = ROOT / "benchmarks" / "step_speed.py"
SECTIONS = ("env", "tests", "bench", "train", "ddp")
METHODS = ("adaad+igdm", "ard+igdm", "rslad+igdm")
CIFAR_TRAIN = 50_000
TARGET_EPOCH_S = 60.0  # issue 16: IGDM_AdaAD, ResNet-18 ← WRN-28-10, batch 128, one CIFAR-100 epoch
# the quick contract tests first, the accelerator tests (with the slow inductor compilation) last
GPU_TESTS = ["tests/test_attacks.py", "tests/test_methods.py", "tests/test_resume.py", "tests/test_aa_state.py",
             "tests/test_accel.py"]
EAGER = "default,reference,bf16,fp16,channels_last,gpu_data"
GROUPS = ("eager", "combined", "compile")
NEEDED = ("torch", "torchvision", "torchattacks", "pyautoattack", "pydantic", "typer", "rich", "safetensors",
          "pluggy", "sklearn", "pytest")


# -- what to run: the CUDA plan and the CPU dry run's -------------------------------------------------------

@dataclass(frozen=True)
class BenchRun:
    method: str
    group: str  # one of GROUPS
    variants: str
    share: float  # of the bench section's time box
    skip: str | None = None  # why this run is not made (the dry run's compile runs)


@dataclass(frozen=True)
class Plan:
    dry_run: bool
    device: str
    budget_s: float
    windows: dict[str, float]  # each section's time box, scaled so that they sum to budget_s
    tests: list[str]  # what pytest runs on the device
    bench_args: list[str]  # step_speed arguments of every bench run
    bench_runs: list[BenchRun]
    teacher: dict[str, Any]  # --make-teacher spec of the training run
    train_sets: list[str]  # --set overrides of the training run (besides the teacher, size and options)
    train_batch: int
    train_epochs: int
    train_steps: tuple[int, int]  # fewest and most steps per epoch
    train_overhead_s: float  # start-up, data, teacher, compilation: what the steps' time box leaves out
    ddp_sets: list[str]


def cuda_plan(budget_s: float = 460.0) -> Plan:
    # In order of importance: every method eager, then IGDM_AdaAD (the 60 s target) with all options combined
    # and compiled alone, then the others' compiled runs, which reuse the compiled kernels on disk (the same
    # networks at the same shapes), so they need less time.
    adaad, ard, rslad = METHODS
    runs = [BenchRun(adaad, "eager", EAGER, 0.13), BenchRun(ard, "eager", EAGER, 0.07),
            BenchRun(rslad, "eager", EAGER, 0.07),
            BenchRun(adaad, "combined", "default,fast+gpu_data", 0.33),
            BenchRun(adaad, "compile", "default,compile", 0.14),
            BenchRun(ard, "combined", "default,fast+gpu_data", 0.065),
            BenchRun(rslad, "combined", "default,fast+gpu_data", 0.065),
            BenchRun(ard, "compile", "default,compile", 0.065),
            BenchRun(rslad, "compile", "default,compile", 0.065)]
    return Plan(
        dry_run=False, device="cuda", budget_s=budget_s,
        windows=_scaled({"env": 15, "tests": 100, "bench": 255, "train": 75, "ddp": 15}, budget_s),
        tests=GPU_TESTS, bench_args=["--warmup", "2", "--repeats", "5"], bench_runs=runs,
        teacher={"model": "wrn-28-10", "options": {}, "classes": 100, "image_size": 32},
        train_sets=[], train_batch=128, train_epochs=3, train_steps=(20, 100), train_overhead_s=30.0,
        ddp_sets=["student.model=small-cnn", "student.width=16", "data.train_size=2048", "train.batch_size=64",
                  "train.epochs=1", "data.test_size=256", "attack.steps=3"])


def dry_plan(budget_s: float = 240.0) -> Plan:
    variants = "default,reference,bf16,channels_last,gpu_data"  # fp16 and compile need CUDA here
    why = "not on a CPU: inductor compiles C++ for minutes (on CUDA: {})"
    runs = [BenchRun(m, "eager", variants, 0.3) for m in METHODS]
    for m in METHODS:
        runs += [BenchRun(m, "compile", "default,compile", 0.05, why.format("default,compile")),
                 BenchRun(m, "combined", "default,fast+gpu_data", 0.05, why.format("default,fast+gpu_data"))]
    # step_speed --quick's sizes (batch 8, 16×16, small-cnn width 8, 10 classes), so the two compare
    small = ["student.model=small-cnn", "student.width=8", "teacher.model=small-cnn",
             "teacher.model_options={width=8}", "data.num_classes=10", "data.image_size=16", "data.test_size=32",
             "train.device=cpu"]
    return Plan(
        dry_run=True, device="cpu", budget_s=budget_s,
        windows=_scaled({"env": 15, "tests": 35, "bench": 50, "train": 25, "ddp": 25}, budget_s),
        tests=["tests/test_attacks.py", "-k", "stays_in_eps_ball"],
        bench_args=["--quick", "--device", "cpu", "--threads", "1"], bench_runs=runs,
        teacher={"model": "small-cnn", "options": {"width": 8}, "classes": 10, "image_size": 16},
        train_sets=small, train_batch=8, train_epochs=2, train_steps=(2, 4), train_overhead_s=8.0,
        ddp_sets=small + ["data.train_size=64", "train.batch_size=16", "train.epochs=1", "attack.steps=2"])


def _scaled(windows: dict[str, float], budget_s: float) -> dict[str, float]:
    total = sum(windows.values())
    return {k: v * budget_s / total for k, v in windows.items()}


# -- running commands in time boxes --------------------------------------------------------------------------

class Stop(Exception):
    """SIGTERM/SIGINT reached the check: the current command was killed, what was measured is written."""


@dataclass
class Ran:
    rc: int | None  # None: killed at the end of its time box
    seconds: float
    output: str

    @property
    def timed_out(self) -> bool:
        return self.rc is None


class Context:
    """The folders, the clock and the log of one check."""

    def __init__(self, plan: Plan, out: Path, work: Path) -> None:
        self.plan, self.out, self.work = plan, out, work
        self.logs: list[str] = []
        self.deadline = time.monotonic()
        self.env: dict[str, Any] = {}
        self.bench_rows: list[dict[str, Any]] = []
        self._proc: subprocess.Popen | None = None

    def left(self, deadline: float | None = None) -> float:
        return (self.deadline if deadline is None else deadline) - time.monotonic()

    def run(self, label: str, cmd: list[str], *, deadline: float | None = None, tail: int = 60) -> Ran:
        """Run ``cmd`` in its own process group until it ends or ``deadline`` (default: the section's)."""
        timeout = max(1.0, self.left(deadline))
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.plan.dry_run:
            full_env.setdefault("OMP_NUM_THREADS", "1")
        log = self.work / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', label)}.log"
        t0 = time.monotonic()
        with open(log, "w") as fh:
            self._proc = subprocess.Popen([str(c) for c in cmd], stdout=fh, stderr=subprocess.STDOUT,
                                          cwd=ROOT, env=full_env, process_group=0)
            try:
                rc: int | None = self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                rc = None
            except BaseException:  # Stop (SIGTERM/SIGINT): the command does not outlive the check
                self.kill()
                raise
            finally:
                self._proc = None
        seconds = time.monotonic() - t0
        output = log.read_text(errors="replace")
        status = f"killed after {seconds:.0f} s (its time box)" if rc is None else f"exit {rc}, {seconds:.1f} s"
        lines = output.splitlines()
        self.logs.append(f"=== {label}: {status}\n$ {' '.join(map(str, cmd))}\n"
                         + ("[...]\n" if len(lines) > tail else "") + "\n".join(lines[-tail:]) + "\n")
        return Ran(rc, seconds, output)

    def kill(self) -> None:
        """End the running command's process group (its children too): SIGTERM, 5 s to exit, SIGKILL."""
        proc = self._proc
        if proc is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                pass


def python() -> str:
    return sys.executable or "python3"


def fail(message: str) -> dict[str, Any]:
    return {"status": "failed", "error": message}


def last_error(output: str) -> str:
    """The line that says what went wrong: the last 'error:'/exception line of a command's output."""
    lines = [ln.strip().strip("=").strip() for ln in output.splitlines() if ln.strip().strip("=").strip()]
    for ln in reversed(lines):
        if re.match(r"^(error|Error|[A-Za-z_.]*(Error|Exception))\b|^E\s", ln) or ": error" in ln:
            return ln[:300]
    return lines[-1][:300] if lines else "(no output)"


# -- env ---------------------------------------------------------------------------------------------------

def collect_env() -> dict[str, Any]:
    """Runs in a child process (``--collect-env``): what this machine and its Python offer."""
    import importlib.util
    import platform

    import torch

    cuda = torch.cuda.is_available()
    env: dict[str, Any] = {
        "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "cpu_count": os.cpu_count(), "cuda_available": cuda, "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "gpus": [], "gpu_count": torch.cuda.device_count() if cuda else 0,
        "missing_packages": [m for m in NEEDED if importlib.util.find_spec(m) is None],
        "driver": _nvidia_smi("driver_version"), "git_commit": _git_commit(),
    }
    if cuda:
        env["bf16_supported"] = torch.cuda.is_bf16_supported()
        try:
            version = torch.cuda.nccl.version()
            env["nccl"] = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
        except Exception as exc:  # noqa: BLE001 - reported, not fatal
            env["nccl"] = f"unavailable ({type(exc).__name__})"
        for i in range(env["gpu_count"]):
            p = torch.cuda.get_device_properties(i)
            env["gpus"].append({"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                                "capability": f"{p.major}.{p.minor}", "sms": p.multi_processor_count})
    try:
        import igdm_kit

        env["igdm_kit"] = getattr(igdm_kit, "__version__", "installed")
    except Exception as exc:  # noqa: BLE001 - a missing dependency is what this section reports
        env["igdm_kit"] = f"not importable: {type(exc).__name__}: {exc}"
    return env


def _nvidia_smi(field: str) -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = [ln.strip() for ln in out.stdout.splitlines() if ln.strip()]
    return lines[0] if out.returncode == 0 and lines else None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=ROOT)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def section_env(ctx: Context) -> dict[str, Any]:
    ran = ctx.run("env", [python(), __file__, "--collect-env"])
    if ran.timed_out:
        return {"status": "timeout", "error": "collecting the environment outlasted its time box"}
    lines = [ln for ln in ran.output.splitlines() if ln.startswith("{")]
    if ran.rc != 0 or not lines:
        return fail(last_error(ran.output))
    ctx.env = json.loads(lines[-1])
    result: dict[str, Any] = {"status": "ok", **ctx.env}
    if ctx.env["missing_packages"]:
        result["note"] = "missing: " + ", ".join(ctx.env["missing_packages"]) + " (pip install -e .)"
    if not ctx.plan.dry_run and not ctx.env["cuda_available"]:
        result.update(status="failed", error="this torch sees no CUDA GPU: nothing to check on it",
                      hint="run with --dry-run on a CPU")
    return result


# -- tests -------------------------------------------------------------------------------------------------

OUTCOME = re.compile(r"^(?P<id>\S+::\S+)\s+(?P<outcome>PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")


def parse_pytest(output: str) -> dict[str, Any]:
    """Counts and failing ids from ``pytest -v`` output (also from a run killed half-way)."""
    counts = {k: 0 for k in ("passed", "failed", "error", "skipped", "xfail", "xpass")}
    failing: list[str] = []
    for line in output.splitlines():
        m = OUTCOME.match(line)
        if m:
            counts[m["outcome"].lower()] += 1
            if m["outcome"] in ("FAILED", "ERROR"):
                failing.append(m["id"])
    return {"counts": counts, "failing": failing[:40]}


def section_tests(ctx: Context) -> dict[str, Any]:
    cmd = [python(), "-m", "pytest", *ctx.plan.tests, "--device", ctx.plan.device, "-v", "-p", "no:cacheprovider"]
    ran = ctx.run("tests", cmd, tail=150)
    result: dict[str, Any] = {"device": ctx.plan.device, "selection": ctx.plan.tests, "exit_code": ran.rc,
                              **parse_pytest(ran.output)}
    c = result["counts"]
    result["line"] = (f"{c['passed']} passed, {c['failed']} failed, {c['error']} errors, {c['skipped']} skipped "
                      f"on {ctx.plan.device}")
    if ran.timed_out:
        return {**result, "status": "timeout", "error": f"pytest outlasted its {ran.seconds:.0f} s time box "
                                                         f"(counts so far)"}
    if ran.rc == 0:
        return {**result, "status": "ok"}
    if ran.rc == 1:
        return {**result, "status": "failed", "error": f"{c['failed'] + c['error']} test(s) failed on "
                                                         f"{ctx.plan.device}: " + ", ".join(result["failing"][:5])}
    return {**result, "status": "failed", "error": f"pytest exit {ran.rc}: {last_error(ran.output)}"}


# -- bench -------------------------------------------------------------------------------------------------

def bench_rows(data: dict[str, Any], group: str) -> list[dict[str, Any]]:
    """step_speed's rows, reduced to what the check reports, with the projected epoch on any device."""
    batch = data["meta"]["args"]["batch_size"]
    out = []
    for r in data["rows"]:
        s, t = r["passes"].get("student", {}), r["passes"].get("teacher", {})
        out.append({
            "method": r["method"], "variant": r["variant"], "group": group, "accel": r["accel"],
            "reference_passes": r["reference_passes"], "batch_size": batch, "ms_per_step": r["ms_per_step"],
            "images_per_s": r["images_per_s"], "peak_mem_bytes": r.get("peak_mem_bytes"),
            "projected_epoch_s": math.ceil(CIFAR_TRAIN / batch) * r["ms_per_step"] / 1000,
            "speedup": r.get("speedup"), "baseline": r.get("baseline") if "speedup" in r else None,
            "student_forwards": s.get("forwards"), "teacher_forwards": t.get("forwards"),
        })
    return out


def section_bench(ctx: Context) -> dict[str, Any]:
    plan = ctx.plan
    runs = plan.bench_runs
    start, window = time.monotonic(), max(ctx.left(), 0.0)
    total = sum(r.share for r in runs) or 1.0
    done, raw, rows = [], {}, []
    share = 0.0
    for run in runs:
        share += run.share
        deadline = start + window * share / total
        entry: dict[str, Any] = {"method": run.method, "group": run.group, "variants": run.variants}
        if run.skip or ctx.left(deadline) < 2:
            done.append({**entry, "status": "skipped", "reason": run.skip or "no time left in the bench's box"})
            continue
        key = f"{run.method}/{run.group}"
        path = ctx.work / f"bench_{run.method}_{run.group}.json".replace("+", "_")
        path.unlink(missing_ok=True)
        cmd = [python(), STEP_SPEED, "--methods", run.method, "--variants", run.variants, *plan.bench_args,
               "--out", path]
        ran = ctx.run(f"bench {key}", cmd, deadline=deadline, tail=30)
        entry.update(seconds=round(ran.seconds, 1))
        if ran.timed_out:
            entry.update(status="timeout", error=f"killed after {ran.seconds:.0f} s, the end of its share")
        elif ran.rc != 0 or not path.exists():
            entry.update(status="failed", error=last_error(ran.output))
        else:
            raw[key] = json.loads(path.read_text())
            rows += bench_rows(raw[key], run.group)
            entry.update(status="ok")
        done.append(entry)
    ctx.bench_rows = rows
    made = [e["status"] for e in done if e["status"] != "skipped"]
    status = "ok" if all(s == "ok" for s in made) else "partial" if "ok" in made else "failed"
    result: dict[str, Any] = {"status": status, "runs": done, "rows": rows, "raw": raw}
    if status != "ok":
        bad = [e for e in done if e["status"] not in ("ok", "skipped")]
        result["error"] = "; ".join(f"{e['method']}/{e['group']}: {e['status']}: {e.get('error', '')}"
                                    for e in bad)[:600]
    return result


# -- train -------------------------------------------------------------------------------------------------

def fastest(rows: list[dict[str, Any]], method: str = "adaad+igdm") -> dict[str, Any] | None:
    """The measured variant of ``method`` with the fewest ms per step (reference_passes excluded)."""
    candidates = [r for r in rows if r["method"] == method and not r["reference_passes"]]
    return min(candidates, key=lambda r: r["ms_per_step"]) if candidates else None


def accel_sets(accel: dict[str, Any]) -> list[str]:
    """``--set`` overrides for the accelerator keys of ``[train]``."""
    return [f'train.amp="{v}"' if k == "amp" else f"train.{k}={'true' if v else 'false'}"
            for k, v in accel.items()]


def steps_per_epoch(plan: Plan, ms: float | None, left_s: float) -> int:
    """As many steps as the time box allows (1.5× the bench's step time for the engine's own work)."""
    lo, hi = plan.train_steps
    if ms is None:
        return lo
    affordable = (left_s - plan.train_overhead_s) / (plan.train_epochs * 1.5 * ms / 1000)
    return int(max(lo, min(hi, affordable)))


def make_teacher_cmd(ctx: Context, path: Path, spec: dict[str, Any], label: str) -> Ran:
    return ctx.run(label, [python(), __file__, "--make-teacher", path, "--teacher-spec", json.dumps(spec)],
                   tail=20)


def section_train(ctx: Context) -> dict[str, Any]:
    plan = ctx.plan
    best = fastest(ctx.bench_rows)
    default_accel = ({} if plan.dry_run else
                     {"amp": "bf16", "channels_last": True, "compile": True, "cudnn_benchmark": True,
                      "gpu_data": True})
    accel = best["accel"] if best else default_accel
    result: dict[str, Any] = {"device": plan.device, "variant": best["variant"] if best else "(none measured)",
                              "accel": {k: v for k, v in accel.items() if v not in (False, "off")}}
    teacher = ctx.work / "teacher.pt"
    ran = make_teacher_cmd(ctx, teacher, plan.teacher, "train teacher")
    if ran.rc != 0:
        return {**result, **fail(f"writing the teacher: {last_error(ran.output)}")}
    steps = steps_per_epoch(plan, best["ms_per_step"] if best else None, ctx.left())
    out = ctx.work / "train"
    sets = [f"teacher.checkpoint={json.dumps(str(teacher))}", f"data.train_size={steps * plan.train_batch}",
            f"train.batch_size={plan.train_batch}", f"train.epochs={plan.train_epochs}", *plan.train_sets,
            *accel_sets(accel)]
    cmd = [python(), "-m", "igdm_kit", "run", RECIPE, "--output", out, "--overwrite"]
    for s in sets:
        cmd += ["--set", s]
    ran = ctx.run("train run", cmd, tail=40)
    metrics = _read_jsonl(out / "metrics.jsonl")
    result.update(steps_per_epoch=steps, epochs=plan.train_epochs, batch_size=plan.train_batch,
                  overrides=sets, **train_speed(metrics, steps, plan.train_batch))
    if best is not None and result.get("cifar_epoch_s"):
        result["bench_projected_epoch_s"] = best["projected_epoch_s"]
        result["engine_over_bench"] = result["cifar_epoch_s"] / best["projected_epoch_s"]
    if ran.timed_out:
        return {**result, "status": "timeout",
                "error": f"killed after {ran.seconds:.0f} s with {len(metrics)} of {plan.train_epochs} epochs"}
    if ran.rc != 0:
        return {**result, **fail(last_error(ran.output))}
    if len(metrics) != plan.train_epochs or not (out / "results.json").exists():
        return {**result, **fail(f"the run ended with {len(metrics)} epochs and no results.json")}
    return {**result, "status": "ok"}


def train_speed(metrics: list[dict[str, Any]], steps: int, batch: int) -> dict[str, Any]:
    """Seconds per step from the engine's epoch times (the first epoch, which compiles and autotunes, is
    left out when there are more), and the epoch of 50,000 images they extrapolate to."""
    seconds = [float(m["seconds"]) for m in metrics]
    if not seconds:
        return {"epoch_seconds": []}
    timed = seconds[1:] if len(seconds) > 1 else seconds
    per_step = statistics.median(timed) / steps
    cifar = per_step * math.ceil(CIFAR_TRAIN / batch)
    return {"epoch_seconds": seconds, "s_per_step": per_step, "cifar_epoch_s": cifar,
            "meets_target": cifar < TARGET_EPOCH_S}


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


# -- ddp ---------------------------------------------------------------------------------------------------

def section_ddp(ctx: Context, on_cpu: bool = False) -> dict[str, Any]:
    plan = ctx.plan
    if plan.dry_run and not on_cpu:
        return {"status": "skipped", "reason": "dry run: the two-process run needs 2 GPUs (--ddp-cpu runs it "
                                               "with gloo on the CPU)"}
    gpus = ctx.env.get("gpu_count")
    if not plan.dry_run and (gpus or 0) < 2:
        n = "unknown number of" if gpus is None else str(gpus)
        return {"status": "skipped", "reason": f"{n} GPU(s): the two-process torchrun with nccl needs 2"}
    teacher = ctx.work / "ddp_teacher.pt"
    spec = {**plan.teacher, "model": "small-cnn", "options": {"width": 8}}
    ran = make_teacher_cmd(ctx, teacher, spec, "ddp teacher")
    if ran.rc != 0:
        return fail(f"writing the teacher: {last_error(ran.output)}")
    out = ctx.work / "ddp"
    cmd = [python(), "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "igdm_kit",
           "run", RECIPE, "--output", out, "--overwrite"]
    for s in [f"teacher.checkpoint={json.dumps(str(teacher))}", "teacher.model=small-cnn",
              "teacher.model_options={width=8}", *plan.ddp_sets]:
        cmd += ["--set", s]
    ran = ctx.run("ddp torchrun", cmd, tail=40)
    backend = "gloo" if plan.dry_run else "nccl"
    result: dict[str, Any] = {"backend": backend, "processes": 2,
                              "epoch_seconds": [m["seconds"] for m in _read_jsonl(out / "metrics.jsonl")]}
    if ran.timed_out:
        return {**result, "status": "timeout", "error": f"torchrun killed after {ran.seconds:.0f} s"}
    if ran.rc != 0:
        return {**result, **fail(f"torchrun exit {ran.rc}: {last_error(ran.output)}")}
    manifest = json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").exists() else {}
    result.update(world_size=manifest.get("world_size"), device=manifest.get("device"))
    if manifest.get("world_size") != 2 or not (out / "results.json").exists():
        return {**result, **fail(f"the run folder says world_size {manifest.get('world_size')}, expected 2")}
    return {**result, "status": "ok"}


# -- the teacher the training runs distil from ----------------------------------------------------------------

def make_teacher(path: Path, spec: dict[str, Any]) -> None:
    """A random teacher whose BatchNorm statistics come from random images (so its eval-mode activations
    stay in range, as a trained network's do), saved as a plain state dict for the ``state-dict`` loader."""
    import torch

    from igdm_kit.factories import create_model

    torch.manual_seed(0)
    size = spec["image_size"]
    model = create_model(spec["model"], num_classes=spec["classes"], in_channels=3, image_size=size,
                         **spec.get("options", {}))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average: the statistics of the calibration batches
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(64, 3, size, size, generator=g).to(device))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, path)


# -- the check --------------------------------------------------------------------------------------------

def run_section(ctx: Context, name: str, options: argparse.Namespace) -> dict[str, Any]:
    t0, window = time.monotonic(), ctx.left()
    try:
        if name == "env":
            result = section_env(ctx)
        elif name == "tests":
            result = section_tests(ctx)
        elif name == "bench":
            result = section_bench(ctx)
        elif name == "train":
            result = section_train(ctx)
        else:
            result = section_ddp(ctx, on_cpu=options.ddp_cpu)
    except Stop:
        raise
    except Exception as exc:  # noqa: BLE001 - a broken section is recorded, the next one runs
        import traceback

        ctx.logs.append(f"=== {name}: {type(exc).__name__}\n{traceback.format_exc()}")
        result = fail(f"{type(exc).__name__}: {exc}")
    return {**result, "seconds": round(time.monotonic() - t0, 1), "window_s": round(window, 1)}


def run_check(plan: Plan, out: Path, work: Path, options: argparse.Namespace) -> dict[str, Any]:
    ctx = Context(plan, out, work)
    report: dict[str, Any] = {
        "tool": "benchmarks/device_check.py", "schema": 1, "dry_run": plan.dry_run, "device": plan.device,
        "started_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "budget_s": plan.budget_s,
        "windows_s": {k: round(v, 1) for k, v in plan.windows.items()}, "sections": {}}
    t0 = time.monotonic()
    end, abort = t0, None
    for name in SECTIONS:
        end += plan.windows[name]
        ctx.deadline = end
        if name not in options.sections:
            result: dict[str, Any] = {"status": "skipped", "reason": "not selected (--sections)"}
        elif abort is not None:
            result = {"status": "skipped", "reason": abort}
        elif ctx.left() < 1:
            result = {"status": "skipped", "reason": "no time left in the budget"}
        else:
            _progress(f"{name}: running (time box {ctx.left():.0f} s)")
            try:
                result = run_section(ctx, name, options)
            except Stop as exc:
                result, abort = {"status": "failed", "error": str(exc)}, str(exc)
            _progress(f"{name}: {result['status']} ({result.get('seconds', 0):.0f} s)"
                      + (f" — {result['error']}" if result.get("error") else ""))
        if name == "env" and result["status"] == "failed" and not plan.dry_run and abort is None:
            abort = f"env failed: {result['error']}"
        report["sections"][name] = result
        report["elapsed_s"] = round(time.monotonic() - t0, 1)
        write_outputs(ctx, report)
    return report


def _progress(message: str) -> None:
    print(f"[device-check] {message}", file=sys.stderr, flush=True)


def write_outputs(ctx: Context, report: dict[str, Any]) -> None:
    ctx.out.mkdir(parents=True, exist_ok=True)
    _atomic(ctx.out / "device_check.json", json.dumps(report, indent=1, default=str) + "\n")
    _atomic(ctx.out / "summary.txt", "\n".join(summary_lines(report)) + "\n")
    _atomic(ctx.out / "logs.txt", "\n".join(ctx.logs))


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def failed(report: dict[str, Any]) -> list[str]:
    return [n for n, s in report["sections"].items() if s["status"] not in ("ok", "skipped")]


# -- summary.txt ------------------------------------------------------------------------------------------

def summary_lines(report: dict[str, Any]) -> list[str]:
    sections = report["sections"]
    title = "igdm-kit device check"
    if report["dry_run"]:
        title += " (CPU dry run: tiny sizes, not a measurement)"
    lines = [f"{title} — {report['started_utc']}", hardware_line(sections.get("env", {})),
             f"{report.get('elapsed_s', 0):.0f} s of a {report['budget_s']:.0f} s budget", ""]
    for name in SECTIONS:
        r = sections.get(name)
        if r is None:
            continue
        lines.append(f"{name:<6} {r['status']:<8} {r.get('seconds', 0):>5.0f} s  {section_line(name, r)}".rstrip())
        if name == "bench" and r.get("rows"):
            lines += bench_table(r["rows"])
    return lines


def hardware_line(env: dict[str, Any]) -> str:
    if not env.get("torch"):
        return "hardware: unknown (env did not run)"
    sw = f"torch {env['torch']}, Python {env['python']}"
    if not env.get("gpus"):
        return f"CPU ({env.get('cpu_count')} cores), no CUDA GPU; {sw}"
    names = sorted({f"{g['name']} ({g['memory_gib']} GiB)" for g in env["gpus"]})
    return (f"{len(env['gpus'])}× {', '.join(names)}; driver {env.get('driver')}, CUDA {env.get('cuda_runtime')}, "
            f"cuDNN {env.get('cudnn')}, NCCL {env.get('nccl')}; {sw}")


def section_line(name: str, r: dict[str, Any]) -> str:
    error = f" — {r['error']}" if r.get("error") else ""
    if r["status"] == "skipped":
        return r.get("reason", "")
    if name == "env":
        return (r.get("note") or "") + error
    if name == "tests":
        return r.get("line", "") + error
    if name == "bench":
        ref = [f"{row['method']} {row['speedup']:.2f}×" for row in r.get("rows", [])
               if row["variant"] == "default" and row["group"] == "eager" and row.get("speedup")]
        counts: dict[str, int] = {}
        for e in r.get("runs", []):
            counts[e["status"]] = counts.get(e["status"], 0) + 1
        runs = ", ".join(f"{n} {status}" for status, n in counts.items())
        return f"runs: {runs}; default path vs reference_passes: " + (", ".join(ref) or "n/a") + error
    if name == "train":
        return train_line(r) + error
    return (f"{r.get('processes', 2)} processes ({r.get('backend')}), world_size {r.get('world_size')}, "
            f"epoch seconds {r.get('epoch_seconds')}" + error)


def train_line(r: dict[str, Any]) -> str:
    opts = ", ".join(f"{k}={v}" if k == "amp" else k for k, v in r.get("accel", {}).items()) or "fp32 eager"
    head = f"IGDM_AdaAD, variant {r.get('variant')} ({opts})"
    if not r.get("s_per_step"):
        return head
    line = (f"{head}: {r['epochs']} epochs × {r['steps_per_epoch']} steps of {r['batch_size']}, "
            f"{1000 * r['s_per_step']:.0f} ms/step → {r['cifar_epoch_s']:.1f} s per 50,000-image epoch")
    if "bench_projected_epoch_s" in r:
        line += f" (bench projected {r['bench_projected_epoch_s']:.1f} s)"
    return line + (f"; target < {TARGET_EPOCH_S:.0f} s: {'met' if r['meets_target'] else 'NOT met'}"
                   if r.get("device", "cuda") == "cuda" and "meets_target" in r else "")


def bench_table(rows: list[dict[str, Any]]) -> list[str]:
    out = [f"  {'method':<11} {'variant':<14} {'ms/step':>8} {'img/s':>7} {'peak MiB':>9} {'epoch s':>8}  speedup"]
    order = {m: i for i, m in enumerate(METHODS)}
    for r in sorted(rows, key=lambda r: (order.get(r["method"], len(order)), GROUPS.index(r["group"]))):
        if r["group"] != "eager" and r["variant"] == "default":
            continue  # the compile runs' own baseline, already reported by the eager run
        peak = f"{r['peak_mem_bytes'] / 2**20:.0f}" if r.get("peak_mem_bytes") else "–"
        speed = f"{r['speedup']:.2f}× vs {r['baseline']}" if r.get("speedup") else ""
        out.append(f"  {r['method']:<11} {r['variant']:<14} {r['ms_per_step']:>8.1f} {r['images_per_s']:>7.0f} "
                   f"{peak:>9} {r['projected_epoch_s']:>8.1f}  {speed}".rstrip())
    return out


# -- command line -------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("out", nargs="?", type=Path, help="folder for device_check.json, summary.txt, logs.txt "
                                                     "(default: $OUT)")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, the same code path (< 1 min)")
    p.add_argument("--budget", type=float, help="seconds for the whole check (default 460 on CUDA, 240 dry)")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--window", action="append", default=[], metavar="SECTION=SECONDS",
                   help="a section's own time box instead of its share of the budget (repeatable)")
    p.add_argument("--methods", help=f"comma-separated method+module for the bench (default {','.join(METHODS)})")
    p.add_argument("--pytest-args", help="what the tests section runs instead of its default selection")
    p.add_argument("--ddp-cpu", action="store_true", help="dry run: run the two-process section with gloo")
    p.add_argument("--work", type=Path, help="scratch folder, kept (default: a temporary one, removed)")
    p.add_argument("--collect-env", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--make-teacher", type=Path, metavar="PATH",
                   help="only write a random, BatchNorm-calibrated teacher (WRN-28-10 state dict) to PATH")
    p.add_argument("--teacher-spec", help=argparse.SUPPRESS)
    return p.parse_args(argv)


class UsageError(Exception):
    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


def build_plan(args: argparse.Namespace) -> Plan:
    """The plan the arguments ask for; UsageError (message + hint) for arguments that make none."""
    if args.budget is not None and not args.budget > 0:
        raise UsageError(f"--budget {args.budget:g} is not a positive number of seconds", "e.g. --budget 460")
    plan = dry_plan(args.budget or 240.0) if args.dry_run else cuda_plan(args.budget or 460.0)
    windows = dict(plan.windows)
    for item in args.window:
        name, _, value = item.partition("=")
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if name not in SECTIONS or not seconds > 0:
            raise UsageError(f"--window {item!r} is not SECTION=SECONDS with a section of {','.join(SECTIONS)}",
                             "e.g. --window bench=300")
        windows[name] = seconds
    runs = plan.bench_runs
    if args.methods:
        wanted = [m.strip() for m in args.methods.split(",") if m.strip()]
        runs = sorted((BenchRun(m, r.group, r.variants, r.share, r.skip) for m in wanted
                       for r in plan.bench_runs if r.method == METHODS[0]), key=lambda r: GROUPS.index(r.group))
    tests = shlex.split(args.pytest_args) if args.pytest_args else plan.tests
    return replace(plan, windows=windows, budget_s=sum(windows.values()), bench_runs=runs, tests=tests)


def resolve_out(args: argparse.Namespace) -> Path:
    out = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    if out is None:
        raise UsageError("no output folder: give it as the argument or set $OUT",
                         "bash benchmarks/device_check.sh results/gpu")
    if out.exists() and not out.is_dir():
        raise UsageError(f"output folder {str(out)!r} is a file", "name a folder (it is created if missing)")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.collect_env:
        print(json.dumps(collect_env()))
        return 0
    try:
        if args.make_teacher is not None:
            spec = json.loads(args.teacher_spec) if args.teacher_spec else cuda_plan().teacher
            make_teacher(args.make_teacher, spec)
            return 0
        sections = [s.strip() for s in args.sections.split(",") if s.strip()]
        unknown = [s for s in sections if s not in SECTIONS]
        if unknown or not sections:
            raise UsageError(f"--sections: unknown section(s) {', '.join(unknown) or '(none given)'}",
                             f"choose from {','.join(SECTIONS)}")
        args.sections = sections
        plan, out = build_plan(args), resolve_out(args)
    except UsageError as exc:
        print(f"error: {exc}\nhint: {exc.hint}", file=sys.stderr)
        return 2
    return check(plan, out, args)


def check(plan: Plan, out: Path, args: argparse.Namespace) -> int:
    work = args.work or Path(tempfile.mkdtemp(prefix="igdm-device-check-"))
    work.mkdir(parents=True, exist_ok=True)

    def stop(signum, frame):
        raise Stop(f"interrupted by {signal.Signals(signum).name}: the command then running was ended")

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        report = run_check(plan, out, work, args)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print((out / "summary.txt").read_text(), end="")
    bad = failed(report)
    if bad:
        print(f"device check: {', '.join(bad)} did not pass (details in {out / 'device_check.json'})",
              file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
