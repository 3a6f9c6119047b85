"""Stop requests: SIGINT/SIGTERM during a run ask the trainer to stop after the current step."""

from __future__ import annotations

import signal
import threading
from typing import Any


class StopFlag:
    """Installs SIGINT/SIGTERM handlers for the duration of training (main thread only).

    The first signal asks the loop to stop after the current step; a second SIGINT interrupts at once.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
