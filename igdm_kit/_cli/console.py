"""Rich consoles: results on stdout, progress and diagnostics on stderr.

Progress on stderr is a Rich bar on a terminal and plain lines elsewhere (a log file, ``nohup``, a batch
scheduler): ``igdm_kit._runtime.progress.LineProgress``, a line per finished task (one evaluation attack) and at most
one a minute (``IGDM_KIT_PROGRESS_INTERVAL`` seconds) while a task runs, with the elapsed time and an ETA.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console

from igdm_kit._runtime.progress import LineProgress

# Piped or redirected results keep whole table cells (Rich would assume 80 columns and cut paths).
out_console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, soft_wrap=True)  # diagnostics stay one line each in logs

#: seconds between two lines of a running task when stderr is not a terminal
LINE_INTERVAL_ENV = "IGDM_KIT_PROGRESS_INTERVAL"


def print_json(command: str, results: Any) -> None:
    """The machine-readable envelope every ``--json`` prints on stdout."""
    from igdm_kit._storage.io import json_safe

    text = json.dumps(json_safe({"command": command, "results": results}), indent=2, default=str, allow_nan=False)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def make_progress():
    """Rich bars on a terminal; ``LineProgress`` when stderr is a file or a pipe."""
    if not err_console.is_terminal:
        return LineProgress(err_console, float(os.environ.get(LINE_INTERVAL_ENV, "60") or 60))
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    # descriptions hold recipe names and paths: text, never markup (name = "[/]" must not end a run)
    return Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), console=err_console, transient=True)


@contextmanager
def progress_callback(enabled: bool = True) -> Iterator[Callable[[str, int, int], None] | None]:
    """A ``progress(task, done, total)`` callback drawing Rich bars on stderr (None when disabled)."""
    if not enabled:
        yield None
        return
    with make_progress() as bars:
        tasks: dict[str, Any] = {}

        def update(task: str, done: int, total: int) -> None:
            if task not in tasks:
                tasks[task] = bars.add_task(task, total=total)
            bars.update(tasks[task], completed=done, total=total)

        yield update
