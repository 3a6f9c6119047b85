"""``log.jsonl``: every record the trackers get, one JSON object a line (always on).

``{"step": 230, "epoch": null, "metrics": {...}}`` per logged step, ``"epoch": 10`` for an epoch's row,
``{"config": {...}}`` when a run starts and ``{"summary": {...}}`` at the end. A resumed run first drops the
lines of steps after the saved state.
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
        kept = []
        if run.run_id is not None and self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if rec.get("step", 0) <= run.step:
                    kept.append(line + "\n")
        atomic_write_text(self.path, "".join(kept))
        self._write({"config": run.config, "step": run.step})
        return run.run_id or "jsonl"

    def _write(self, record) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
            if "summary" in record or record.get("epoch") is not None:
                fh.flush()
                os.fsync(fh.fileno())

    def log(self, metrics, *, step, epoch):
        self._write({"step": step, "epoch": epoch, "metrics": metrics})

    def summary(self, results):
        self._write({"summary": results})
