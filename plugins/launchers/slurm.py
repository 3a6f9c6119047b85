"""``slurm``: each job of the sweep as a SLURM job through submitit (``pip install 'igdm-kit[slurm]'``).

Every job is submitted at once; a variant depends on its teacher's job (``--dependency=afterok:ID``), so the
teacher is trained once, before the students that need it. submitit keeps the submission scripts, pickled
jobs and logs in the sweep's jobs folder (it must be on a file system the nodes share). With ``wait`` (the
default) the launcher waits for the jobs and the table is collected when they end; without it, run the same
sweep command again once they have ended to collect it. A stop request while waiting stops the wait, not the
jobs (they belong to the scheduler; ``scancel`` stops them), and says so.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from pydantic import Field

from igdm_kit.interfaces import Launcher, Options


def run_job(command: list[str], cwd: str) -> int:
    """What a SLURM job runs: the command, its output in the job's log; a failure raises (submitit marks it)."""
    rc = subprocess.run(command, cwd=cwd, check=False).returncode
    if rc != 0:
        raise RuntimeError(f"{' '.join(command[:4])} ... exited with {rc}")
    return rc


class SlurmOptions(Options):
    partition: str | None = Field(None, description="the SLURM partition")
    time: int = Field(24 * 60, ge=1, description="time limit per job, in minutes")
    gpus_per_node: int = Field(1, ge=0, description="GPUs per job")
    cpus_per_task: int = Field(8, ge=1, description="CPU cores per job")
    mem_gb: int | None = Field(None, ge=1, description="memory per job, GB")
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    setup: list[str] = Field(default_factory=list, description="shell lines run before the job (module load, ...)")
    additional: dict[str, str] = Field(default_factory=dict, description="more #SBATCH options by name")
    wait: bool = Field(True, description="wait for the jobs and collect the table when they end")


class Slurm(Launcher):
    description = "one SLURM job per variant through submitit (pip install 'igdm-kit[slurm]')"
    Options = SlurmOptions

    def executor(self, folder: str):
        from igdm_kit.errors import IgdmKitError

        try:
            import submitit
        except ImportError:
            raise IgdmKitError("--launcher slurm needs submitit", "pip install 'igdm-kit[slurm]'") from None
        try:
            return submitit.SlurmExecutor(folder=str(Path(folder) / "%j"))
        except RuntimeError as exc:
            raise IgdmKitError(f"--launcher slurm: {exc}", "run the sweep on a SLURM login node, or use "
                               "--launcher local") from None

    def parameters(self, job, after: list[str]) -> dict:
        o = self.options
        params = {"job_name": job.name, "time": o.time, "gpus_per_node": o.gpus_per_node,
                  "cpus_per_task": o.cpus_per_task, "setup": list(o.setup),
                  "additional_parameters": dict(o.additional)}
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(o, key) is not None:
                params[key] = getattr(o, key)
        if o.mem_gb is not None:
            params["mem"] = f"{o.mem_gb}GB"
        if after:
            params["dependency"] = "afterok:" + ":".join(after)
        return params

    def launch(self, jobs, ctx):
        executor = self.executor(ctx.jobs_dir)
        submitted = {}
        for job in jobs:  # a job comes after the jobs it needs
            executor.update_parameters(**self.parameters(job, [submitted[a].job_id for a in job.after
                                                                if a in submitted]))
            submitted[job.name] = executor.submit(run_job, list(job.command), ctx.workdir)
            ctx.log(f"{job.name}: SLURM job {submitted[job.name].job_id}")
        if not self.options.wait:
            return {name: None for name in submitted}
        status = {}
        try:
            for name, sj in submitted.items():
                try:
                    sj.result()
                    status[name] = 0
                except Exception as exc:  # noqa: BLE001 - submitit re-raises the job's own failure
                    ctx.log(f"{name}: failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
                    status[name] = 1
        except KeyboardInterrupt:  # the jobs are the scheduler's: stopping this wait does not cancel them
            ctx.log("stopped waiting; the SLURM jobs keep running (scancel stops them): run the same command "
                    "again when they have ended to collect the table")
            raise
        return status
