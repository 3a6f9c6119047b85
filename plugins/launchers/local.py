"""``local``: the sweep's jobs as processes on this machine, ``jobs`` at a time, each after the jobs it needs.

Each job's output is appended to its log file (a resumed job's log keeps what the interrupted one wrote).
Torch threads are shared out: without ``OMP_NUM_THREADS`` set, each job gets ``threads`` (default: the cores
divided by ``jobs``). A stop request (Ctrl-C, SIGTERM) is passed on to every running job as the same signal —
each saves its state and stops — and the launcher says so and waits for them before it stops; a second
request is passed on too (a second Ctrl-C stops a job at once).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

from pydantic import Field

from igdm_kit.interfaces import Launcher, Options, StopRequest

#: the status of a job that never ran because a job it needed failed
NOT_RUN = 1


class LocalOptions(Options):
    jobs: int = Field(1, ge=1, description="jobs at once (--jobs)")
    threads: int | None = Field(None, ge=1, description="threads per job; default: the cores / jobs")


class Local(Launcher):
    description = "processes on this machine, --jobs N at a time"
    Options = LocalOptions

    def launch(self, jobs, ctx):
        o = self.options
        env = dict(os.environ)
        if "OMP_NUM_THREADS" not in env:
            env["OMP_NUM_THREADS"] = str(o.threads or max(1, (os.cpu_count() or 1) // o.jobs))
        pending, running, status = list(jobs), {}, {}
        try:
            while pending or running:
                self._start_ready(pending, running, status, env, ctx)
                for name, (proc, fh) in list(running.items()):
                    if proc.poll() is not None:
                        fh.close()
                        status[name] = proc.returncode
                        del running[name]
                        ctx.log(f"{name}: {'done' if proc.returncode == 0 else f'failed (exit {proc.returncode})'}")
                time.sleep(0.1)
        except KeyboardInterrupt as exc:
            _stop_all(running, exc, ctx)
            raise
        return status

    def _start_ready(self, pending, running, status, env, ctx) -> None:
        for job in list(pending):
            if len(running) >= self.options.jobs:
                return
            needed = [status.get(a, "pending") for a in job.after]
            if any(s not in (0, "pending") for s in needed):
                pending.remove(job)
                status[job.name] = NOT_RUN
                ctx.log(f"{job.name}: not run (a job it needs failed)")
            elif all(s == 0 for s in needed):
                pending.remove(job)
                fh = open(job.log, "a", encoding="utf-8")  # noqa: SIM115 - closed when the job ends
                fh.write(f"==> {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(job.command)}\n")
                fh.flush()
                proc = None
                try:
                    # a session of its own: a signal reaches the launcher alone, which passes it on once
                    proc = subprocess.Popen(list(job.command), cwd=ctx.workdir, env=env, stdout=fh,
                                            stderr=subprocess.STDOUT, start_new_session=True)
                    running[job.name] = (proc, fh)
                except KeyboardInterrupt:  # between the start and the bookkeeping: the job is stopped too
                    if proc is not None:
                        running[job.name] = (proc, fh)
                    raise
                ctx.log(f"{job.name}: started (log {job.log})")


def _signum(exc: KeyboardInterrupt) -> int:
    return exc.signum if isinstance(exc, StopRequest) else signal.SIGINT


def _stop_all(running: dict, exc: KeyboardInterrupt, ctx) -> None:
    """Pass the stop request on to every running job, say so, and wait for each to save and exit."""
    waiting = dict(running)
    while waiting:
        sig = _signum(exc)
        for proc, _ in waiting.values():
            if proc.poll() is None:
                proc.send_signal(sig)
        ctx.log(f"sent {signal.Signals(sig).name} to {len(waiting)} running job{'s' if len(waiting) != 1 else ''} "
                f"({', '.join(waiting)}); waiting for them to save their state and stop")
        try:
            for name, (proc, fh) in list(waiting.items()):
                proc.wait()
                fh.close()
                del waiting[name]
        except KeyboardInterrupt as again:  # a second request: passed on as well
            exc = again
