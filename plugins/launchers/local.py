"""``local``: the sweep's jobs as processes on this machine, ``jobs`` at a time, each after the jobs it needs.

Each job's output goes to its log file. Torch threads are shared out: without ``OMP_NUM_THREADS`` set, each
job gets ``threads`` (default: the cores divided by ``jobs``). A stop request (Ctrl-C, SIGTERM) is passed to
every running job once — each saves its state — and the launcher waits for them before it stops.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

from pydantic import Field

from igdm_kit.interfaces import Launcher, Options

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
        main = threading.current_thread() is threading.main_thread()  # signal handlers live there only
        old = signal.signal(signal.SIGTERM, _as_interrupt) if main else None
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
        except KeyboardInterrupt:
            for proc, _ in running.values():
                proc.send_signal(signal.SIGINT)  # once: each job finishes its step and saves
            for proc, fh in running.values():
                proc.wait()
                fh.close()
            raise
        finally:
            if main:
                signal.signal(signal.SIGTERM, old)
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
                fh = open(job.log, "w", encoding="utf-8")  # noqa: SIM115 - closed when the job ends
                # a session of its own: Ctrl-C reaches the launcher alone, which passes it on once
                proc = subprocess.Popen(list(job.command), cwd=ctx.workdir, env=env, stdout=fh,
                                        stderr=subprocess.STDOUT, start_new_session=True)
                running[job.name] = (proc, fh)
                ctx.log(f"{job.name}: started (log {job.log})")


def _as_interrupt(signum, frame):
    raise KeyboardInterrupt
