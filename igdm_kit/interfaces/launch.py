"""Sweep-launcher contracts: ``Launcher`` runs ``Job``s in a ``LaunchContext``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol

from igdm_kit.interfaces.options import NoOptions, Options

if TYPE_CHECKING:  # pragma: no cover - typing only
    pass


# -- sweep launchers ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """One independent job of a sweep: a teacher to prepare or a variant to train and evaluate."""

    #: unique within the sweep (the variant's label, or ``teacher:NAME``)
    name: str
    #: the command line that runs it, from the sweep's working directory
    command: tuple[str, ...]
    #: where its output (stdout and stderr) goes
    log: str
    #: names of jobs that must have succeeded before it starts (its teacher)
    after: tuple[str, ...] = ()


class LaunchContext(Protocol):
    """What a launcher gets besides the jobs (implemented in ``igdm_kit._sweep.launch``)."""

    #: the working directory the commands run in
    workdir: str
    #: a folder of the sweep's own for a scheduler's files (submission scripts, job logs)
    jobs_dir: str

    def log(self, message: str) -> None: ...


class StopRequest(KeyboardInterrupt):
    """A stop request to the process that launches a sweep's jobs, raised in ``launch``: ``signum`` is the
    signal it got (SIGINT for Ctrl-C, SIGTERM from a scheduler or ``kill``), the one to pass on to the jobs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class Launcher:
    """A sweep launcher, registered by ``register_launchers`` and named by ``igdm-kit sweep --launcher``.

    ``launch(jobs, ctx)`` runs every job (a job only after the jobs it names in ``after`` succeeded) and
    returns each job's exit status by name, or None for one it submitted without waiting for it. A stop
    request is a ``KeyboardInterrupt`` — a ``StopRequest`` carrying its signal when it is SIGINT or SIGTERM —
    raised while ``launch`` runs: pass the same signal on to the running jobs (each then saves and stops),
    say what was done through ``ctx.log``, and let it propagate; a job's output goes to its ``log``, appended
    to what an earlier launch of the same job wrote.
    """

    Options: ClassVar[type[Options]] = NoOptions
    description: ClassVar[str] = ""

    def __init__(self, options: Options) -> None:
        self.options = options

    def launch(self, jobs: list[Job], ctx: LaunchContext) -> dict[str, int | None]:
        raise NotImplementedError
