"""Experiment-tracker contracts: ``Tracker`` and the ``TrackerRun`` it is opened with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from igdm_kit.interfaces.options import NoOptions, Options

if TYPE_CHECKING:  # pragma: no cover - typing only
    pass


# -- experiment trackers ------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrackerRun:
    """What a tracker is started with."""

    #: the run folder (trackers keep their local files under it)
    folder: str
    #: the recipe's name (the run's display name)
    name: str
    #: the run's manifest (resolved recipe, digest, seeds, versions), logged as the run's config
    config: dict[str, Any]
    #: the id this tracker returned when the same run started before (a resumed run), else None
    run_id: str | None = None
    #: the step up to which the tracker's run surely holds every record it was handed (0 for a new run):
    #: each record after it is handed (again), so drop what the run holds after it where the library can
    step: int = 0


class Tracker:
    """An experiment tracker, registered by ``register_loggers`` and named in ``[log] trackers``.

    Called on the main process only, in this order: ``start`` once per process (a resumed run is started
    again with the id ``start`` returned before), ``log`` for each per-step record (``epoch`` None) and
    per-epoch record (``epoch`` set; ``step`` is then the epoch's last step), ``summary`` with the final
    results, ``artifact`` for a checkpoint file when ``[log] artifacts`` is on, and ``finish`` at the end
    (``ok`` False when the run stopped early or failed). Offline by default where the library allows.
    ``requires`` names the Python modules it needs and ``install`` the command that installs them.

    Each record reaches the tracker's run once, across kills: records are handed over only once the training
    state that covers them is saved, and the host keeps them there until they are handed. A resumed run —
    also one killed after ``results.json`` — starts the tracker with ``run.step``, the step its run surely
    holds everything up to, and hands it every record after that step again, then the final results. So a
    tracker that can drops what its run holds after ``run.step`` (TensorBoard's ``purge_step``, a file
    trimmed); one that cannot keeps the first value of a metric at a step (MLflow asks its store what the run
    holds). ``created`` names the folders and files the tracker made in the run folder: ``--overwrite``
    deletes them with the run.
    """

    Options: ClassVar[type[Options]] = NoOptions
    description: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()
    #: on in every run, whatever ``[log] trackers`` says (``[log.NAME]`` may still set its options)
    always_on: ClassVar[bool] = False
    install: ClassVar[str] = ""

    def __init__(self, options: Options) -> None:
        self.options = options

    def start(self, run: TrackerRun) -> str | None:
        """Open a new run and log ``run.config`` (or reopen ``run.run_id``, whose run has the config already);
        return the id to resume with."""
        raise NotImplementedError

    def created(self) -> list[str]:
        """The paths this tracker created in the run folder when it started (its folder, its file): deleted by
        ``--overwrite`` with the run. Paths outside the run folder are never deleted."""
        return []

    def log(self, metrics: dict[str, float], *, step: int, epoch: int | None) -> None:
        raise NotImplementedError

    def summary(self, results: dict[str, Any]) -> None:
        """The final evaluation (``results.json``), flattened to ``{"test/last/pgd20": 41.2, ...}``."""

    def artifact(self, path: str, name: str) -> None:
        """A checkpoint file to keep with the run (trackers without an artifact store ignore it)."""

    def finish(self, ok: bool) -> None:
        """Close the run; ``ok`` is False when it stopped early or failed."""
