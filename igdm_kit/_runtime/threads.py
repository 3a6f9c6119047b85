"""How many CPU threads torch uses, set in one place for every command and the benchmark.

The count, first found wins:

1. ``igdm-kit --threads N`` (the CLI writes it to ``IGDM_KIT_THREADS``, so it reaches every command);
2. the environment variable ``IGDM_KIT_THREADS``;
3. the recipe's ``[train] threads``;
4. ``OMP_NUM_THREADS`` when set;
5. the default: the physical cores this process may use (its CPU affinity, the cgroup's CPU quota, one
   thread per core with SMT), divided among the ranks of a ``torchrun`` on this machine.

On a busy machine the count alone is not what hurts: OpenMP threads that *spin* while they wait for a
descheduled sibling make every parallel region wait a time slice (measured: a digits epoch 5–7× slower
with 2 spinning threads on 2 busy cores). ``prepare_environment()`` therefore asks OpenMP to sleep instead
(``OMP_WAIT_POLICY=PASSIVE``, unless set) — it must run before torch is first imported, which the CLI
and the benchmark do; a notebook that imported torch already can set the variable before starting.

The count is not part of a recipe's digest (it says how, not what): on CPU, a different thread count may
change the last bits of reductions, so bit-identical results need the same count (runs record it).
Nothing here imports torch at import time.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from igdm_kit.errors import IgdmKitError

ENV = "IGDM_KIT_THREADS"
#: The most threads any source may ask for (the recipe's ``[train] threads`` has the same bound): far past
#: every machine's cores, short of the counts that make an epoch take minutes and a stop request as long.
MAX_THREADS = 4096


def _positive(text: str, where: str) -> int:
    try:
        n = int(text.strip())
    except ValueError:
        n = 0
    if n < 1:
        raise IgdmKitError(f"{where} is {text!r}, not a positive whole number",
                           f"set {where} to the number of CPU threads torch may use, e.g. 1")
    if n > MAX_THREADS:
        raise IgdmKitError(f"{where} is {n}, more than the {MAX_THREADS} threads allowed",
                           f"set {where} to the number of CPU threads torch may use (1 to {MAX_THREADS}; "
                           f"this machine has {os.cpu_count()} CPUs)")
    return n


def prepare_environment() -> None:
    """Before torch is imported: OpenMP threads sleep while they wait (they spin by default)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _cpu_quota() -> int | None:
    """Whole CPUs of the cgroup v2 quota (``cpu.max``), None when unlimited or unknown."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))


def physical_cores_available() -> int:
    """Physical cores among the CPUs this process may run on, capped by the cgroup's quota."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        list(range(os.cpu_count() or 1))
    cores = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add((topo / "physical_package_id").read_text().strip() + ":" +
                      (topo / "core_id").read_text().strip())
        except OSError:  # no sysfs topology (macOS, containers): count logical CPUs
            cores.add(str(cpu))
    n = max(1, len(cores))
    quota = _cpu_quota()
    return min(n, quota) if quota else n


def default_threads() -> int:
    """``OMP_NUM_THREADS`` when set, else the physical cores available, shared by torchrun's local ranks."""
    omp = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if omp.isdigit() and int(omp) > 0:  # torch itself ignores (with a warning) a value it cannot read
        return _positive(omp, "OMP_NUM_THREADS")
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, physical_cores_available() // max(1, ranks))


def resolve(recipe_threads: int | None = None) -> int:
    """The thread count to use: ``--threads``/``IGDM_KIT_THREADS``, the recipe's, else the default."""
    env = os.environ.get(ENV, "").strip()
    if env:
        return _positive(env, ENV)
    return recipe_threads if recipe_threads else default_threads()


def configure(recipe_threads: int | None = None) -> int:
    """Set torch's intra-op thread count (see the module docstring for the order); returns it."""
    import torch

    n = resolve(recipe_threads)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def machine_load() -> tuple[float, int]:
    """(1-minute load average, logical CPUs available): what the benchmark warns about."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return load, cpus


def busy_warning(threads: int) -> str | None:
    """A warning when other work already occupies the cores ``threads`` would need (timings then drift)."""
    load, cpus = machine_load()
    if load + threads <= cpus + 0.5:
        return None
    return (f"the machine is busy (load {load:.1f} on {cpus} CPUs, {threads} thread"
            f"{'s' if threads != 1 else ''} wanted): timings are slower and noisier than on an idle machine")
