"""Stop requests: SIGINT/SIGTERM during a run (or an evaluation) ask it to stop at the next safe point.

The handlers are installed for the whole run — building, every epoch, saving and the final evaluation — so
no phase drops a request or dies without a word. Each phase checks the flag where its state is saved (after
a step, at an epoch's end, after an evaluation batch) and raises ``Interrupted``: the message says where it
stopped, the hint is the command that resumes, the exit code is 128 + the signal. A second Ctrl-C stops at
once (``StopNow``, one line and exit 130 from the CLI, never click's "Aborted!").

A process that waits on others (the ``--jobs`` parent of a sweep) uses ``stop_requests`` instead: the signal
is raised as a ``StopRequest`` where it waits, and passed on to the jobs as it is.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from igdm_kit.errors import Interrupted
from igdm_kit.interfaces.launch import StopRequest

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopNow(BaseException):
    """A second Ctrl-C: stop at once, without reaching the next safe point (what was saved before stays).

    Not an ``Exception``, so no ``except Exception`` on the way swallows it, and not a ``KeyboardInterrupt``,
    which click would turn into "Aborted!": the CLI prints one line and exits 130."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    def error(self) -> Interrupted:
        """The one-line error the CLI prints for it."""
        return Interrupted(f"{signal.Signals(self.signum).name} again: stopped at once, without saving what "
                           "the step in progress did",
                           "what was saved before is kept: run the same command with --resume to continue "
                           "from it", 128 + self.signum)


@contextmanager
def stop_requests() -> Iterator[None]:
    """SIGINT and SIGTERM raise ``StopRequest`` (which carries the signal) while entered, in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum, frame) -> None:
        raise StopRequest(signum)

    old = {sig: signal.signal(sig, handle) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


class StopFlag:
    """Installs SIGINT/SIGTERM handlers while entered (main thread only; re-entrant: nested runs, such as
    a teacher trained for a student, share the outermost handlers).

    The first signal asks the run to stop at the next check; a second SIGINT stops at once (``StopNow``).
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}
        self._depth = 0

    def __enter__(self) -> StopFlag:
        if self._depth == 0:
            self.signum = None  # a flag entered again afresh (a command run twice in one process)
            if threading.current_thread() is threading.main_thread():
                for sig in SIGNALS:
                    self._old[sig] = signal.signal(sig, self._handle)
        self._depth += 1
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise StopNow(signum)
        self.signum = signum

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth == 0:
            for sig, old in self._old.items():
                signal.signal(sig, old)
            self._old.clear()

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def agree(self, dist, device) -> bool:
        """Whether a stop was requested on any rank of ``dist`` (a collective: every rank calls it at the same
        point); a request another rank received is taken as SIGTERM here."""
        if dist.any(self.signum is not None, device):
            self.signum = self.signum or signal.SIGTERM
        return self.signum is not None

    def check(self, what: str, hint: str) -> None:
        """Raise ``Interrupted`` ("SIGTERM: ``what``", ``hint``) if a stop was requested."""
        if self.signum is not None:
            raise stopped(self.signum, what, hint)


def stopped(signum: int, what: str, hint: str) -> Interrupted:
    """The error a stop request ends a run or an evaluation with: 128 + signal, the hint says how to go on."""
    return Interrupted(f"{signal.Signals(signum).name}: {what}", hint, 128 + signum)


def checking(callback: Callable[..., None] | None, check: Callable[[], None]) -> Callable[..., None]:
    """A progress callback that first runs ``check`` (a stop check), then ``callback`` when there is one."""
    def call(*args: Any) -> None:
        check()
        if callback is not None:
            callback(*args)

    return call
