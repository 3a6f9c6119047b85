"""``trackers.json``: what the run's experiment trackers hold, kept by the host so that each record reaches
each tracker once across kills (``igdm_kit._training.tracking``).

``ids``: each tracker's run id (a run killed before its first training state reopens the same tracker runs);
``delivered``: the step up to which every tracker holds every record; ``created``: the paths the trackers
made in the run folder (relative to it), which ``--overwrite`` deletes; ``closed``: the final results were
handed over and the trackers' runs closed. Written atomically after each change.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from igdm_kit._storage.io import atomic_write_json

TRACKERS = "trackers.json"


class TrackerRecord(BaseModel):
    """The content of ``trackers.json``."""

    model_config = ConfigDict(extra="forbid")

    ids: dict[str, str | None] = Field(default_factory=dict)
    delivered: int = Field(0, ge=0)
    created: list[str] = Field(default_factory=list)
    closed: bool = False

    @classmethod
    def read(cls, folder: Path) -> TrackerRecord | None:
        """The folder's record; None when there is none, or it is not the file igdm-kit wrote (edited by
        hand: the trackers then start new runs)."""
        try:
            return cls.model_validate(json.loads((Path(folder) / TRACKERS).read_text(encoding="utf-8")))
        except (OSError, ValueError, RecursionError, ValidationError):
            return None

    def write(self, folder: Path) -> None:
        atomic_write_json(Path(folder) / TRACKERS, self.model_dump())

    def add_created(self, folder: Path, paths: list[str]) -> None:
        """Keep the paths a tracker says it created, those inside ``folder`` only, relative to it."""
        root = Path(folder).resolve()
        for p in paths:
            full = (Path(folder) / p).resolve() if not Path(p).is_absolute() else Path(p).resolve()
            if full != root and full.is_relative_to(root):
                rel = str(full.relative_to(root))
                if rel not in self.created:
                    self.created.append(rel)


def delete_created(folder: Path) -> None:
    """``--overwrite``: delete what the trackers of the folder's run created in it (a path outside the folder,
    or reached through a symbolic link, is left alone)."""
    record = TrackerRecord.read(folder)
    if record is None:
        return
    root = Path(folder).resolve()
    for rel in record.created:
        path = Path(folder) / rel
        if path.is_symlink() or not path.exists() or path.resolve() == root \
                or not path.resolve().is_relative_to(root):
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
