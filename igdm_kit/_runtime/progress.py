"""Progress as plain lines, for a stderr that is not a terminal (a log file, ``nohup``, a batch scheduler).

``LineProgress`` has the part of Rich's ``Progress`` the commands use (``add_task``, ``update``,
``console``): it prints a line when a task finishes and at most every ``interval`` seconds while one runs,
each with the elapsed time and, while it runs, an ETA. ``clock`` formats durations for every log line.
"""

from __future__ import annotations

import time
from typing import Any


def clock(seconds: float) -> str:
    """12.3 s, 4:05, 1:02:03."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class LineProgress:
    """The subset of Rich's ``Progress`` the commands use (``add_task``, ``update``, ``console``), as lines.

    Tasks run one after another. A task's clock starts at the previous event, since evaluation reports
    after each batch (an attack's first report already includes its first batch), or at a first report of
    nothing done (``update(task, completed=0)``, as the training bar sends when training starts).
    """

    def __init__(self, console: Any, interval: float = 60.0) -> None:
        #: a Rich ``Console`` (its ``print``), so log lines in between go to the same stream
        self.console, self.interval = console, interval
        self._tasks: dict[int, dict[str, Any]] = {}
        self._last = time.perf_counter()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def add_task(self, description: str, total: float | None = None, **_: Any) -> int:
        """A task whose clock started at the previous event (or at its first report of nothing done)."""
        task = len(self._tasks)
        self._tasks[task] = {"description": description, "total": total, "completed": 0.0,
                             "start": self._last, "printed": self._last, "done": False}
        return task

    def update(self, task: int, *, advance: float | None = None, completed: float | None = None,
               total: float | None = None, **_: Any) -> None:
        t, now = self._tasks[task], time.perf_counter()
        self._last = now
        if total is not None:
            t["total"] = total
        if completed == 0 and not t["completed"]:  # "starting now": the clock starts here, no line
            t["start"] = t["printed"] = now
            return
        t["completed"] = completed if completed is not None else t["completed"] + (advance or 0)
        elapsed = now - t["start"]
        if t["total"] and t["completed"] >= t["total"] and not t["done"]:
            t["done"] = True
            self._line(f"{t['description']}: done in {clock(elapsed)}")
        elif not t["done"] and now - t["printed"] >= self.interval and t["completed"]:
            t["printed"] = now
            left = elapsed / t["completed"] * (t["total"] - t["completed"]) if t["total"] else None
            self._line(f"{t['description']}: {t['completed']:g}/{t['total'] or '?'} · {clock(elapsed)} "
                       f"elapsed" + (f" · ETA {clock(left)}" if left is not None else ""))

    def _line(self, text: str) -> None:
        self.console.print(text, highlight=False, markup=False, soft_wrap=True)
