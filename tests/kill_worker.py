"""The randomized kill test's worker (``tests/test_kill.py``): one warm process forks ``igdm-kit run``
children and SIGKILLs them at random moments, then resumes each with ``--resume``.

Forking from a process that has imported everything (but run no torch op: fork-safe) makes a child cost
its run alone, so many kills fit in the suite. Usage: ``kill_worker.py RECIPE BASE KILLS SEED``: trials go
on until KILLS kills landed inside a run (at most 2·KILLS trials); prints a JSON report. Two uninterrupted
runs come first (``ref``, ``ref2``); each trial's folder is copied as the kill left it (``tNN.killed``)
before it is resumed.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path


def warm() -> None:
    """Import what a run imports, build every registry — no torch op runs in this process."""
    import sklearn.datasets  # noqa: F401 - the digits dataset
    import torch._dynamo  # noqa: F401 - what the first optimizer imports (seconds)

    import igdm_kit._evaluation.runner  # noqa: F401
    import igdm_kit._training.engine  # noqa: F401
    from igdm_kit._plugins import manager as plugins

    for kind in plugins.KINDS:
        plugins.registry(kind)


def child(args: list[str], log: Path) -> int:
    pid = os.fork()
    if pid:
        return pid
    code = 99
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        from igdm_kit._cli import main

        try:
            main(args)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - whatever happens, the child reports it in its log and exits
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def wait(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def main() -> None:
    recipe, base, trials, seed = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    warm()
    codes, durations = [], []
    for name in ("ref", "ref2"):  # two uninterrupted runs: the second, warmer one times the kills
        t0 = time.monotonic()
        codes.append(wait(child(["run", recipe, "--output", str(base / name)], base / f"{name}.log")))
        durations.append(time.monotonic() - t0)
    duration = min(durations)
    report = {"seed": seed, "reference_codes": codes, "duration": duration, "trials": []}
    rng = random.Random(seed)
    kills, i = 0, 0
    while kills < trials and i < 2 * trials:  # until TRIALS kills landed inside a run
        out, log = base / f"t{i:02d}", base / f"t{i:02d}.log"
        delay = rng.uniform(0.0, duration)
        pid = child(["run", recipe, "--output", str(out)], log)
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
        killed = wait(pid) == -signal.SIGKILL
        kills += killed
        if not killed:  # the run was quicker than that: draw the next moments from a shorter span
            duration = delay
        if out.exists():
            shutil.copytree(out, base / f"t{i:02d}.killed", symlinks=True)
        # a kill before the folder existed left nothing to resume (--resume would refuse): start it
        resumed = wait(child(["run", recipe, "--output", str(out), *(["--resume"] if out.exists() else [])], log))
        report["trials"].append({"delay": round(delay, 3), "killed": killed, "resume_code": resumed})
        i += 1
    print(json.dumps(report))


if __name__ == "__main__":
    main()
