"""``log.jsonl``: every record the trackers get, one JSON object a line (always on).

``{"step": 230, "epoch": null, "metrics": {...}}`` per logged step, ``"epoch": 10`` for an epoch's row,
``{"config": {...}, "step": 0}`` when the run starts and ``{"summary": {...}, "step": ...}`` (the last step)
at the end. A resumed run first drops the lines after the step the file surely holds (``TrackerRun.step``):
the records after it are handed again, so each is in the file once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import Field

from igdm_kit.interfaces import Options, Tracker


class JSONLOptions(Options):
    file: str = Field("log.jsonl", description="the file, relative to the run folder")


class JSONL(Tracker):
    description = "log.jsonl in the run folder: per-step and per-epoch records (always on)"
    Options = JSONLOptions
    always_on = True

    def start(self, run):
        from igdm_kit.files import atomic_write_text

        self.path = Path(run.folder) / self.options.file
        self.step = run.step
        if run.run_id is not None and self.path.exists():  # the same run: keep what it surely holds
            atomic_write_text(self.path, "".join(line + "\n" for line in self._lines() if _step(line) <= run.step))
            return run.run_id
        atomic_write_text(self.path, "")
        self._write({"config": run.config, "step": run.step})
        return "jsonl"

    def created(self):
        return [str(self.path)]

    def _lines(self) -> list[str]:
        return self.path.read_text(encoding="utf-8").splitlines()

    def _write(self, record) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
            if "summary" in record or record.get("epoch") is not None:
                fh.flush()
                os.fsync(fh.fileno())

    def log(self, metrics, *, step, epoch):
        self._write({"step": step, "epoch": epoch, "metrics": metrics})
        self.step = step

    def summary(self, results):
        self._write({"summary": results, "step": self.step})


def _step(line: str) -> float:
    """The step of a line; a torn line (a kill while it was written) sorts after every step."""
    try:
        rec = json.loads(line)
    except json.JSONDecodeError:
        return float("inf")
    step = rec.get("step") if isinstance(rec, dict) else None
    return step if isinstance(step, int) else float("inf")
