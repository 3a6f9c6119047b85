"""Rich consoles: results on stdout, progress and diagnostics on stderr."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

# Piped or redirected results keep whole table cells (Rich would assume 80 columns and cut paths).
out_console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, soft_wrap=True)  # diagnostics stay one line each in logs


def print_json(command: str, results: Any) -> None:
    """The machine-readable envelope every ``--json`` prints on stdout."""
    from ..io import json_safe

    text = json.dumps(json_safe({"command": command, "results": results}), indent=2, default=str, allow_nan=False)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def make_progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), console=err_console, transient=True)
