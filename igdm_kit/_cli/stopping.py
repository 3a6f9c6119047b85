"""Stop requests in the commands that compute without a run folder (``eval``, ``analyze``): SIGINT/SIGTERM
end the command after the current batch with one line and 128 + the signal, whatever phase it is in.

``stoppable`` installs the handlers for the command's whole life (loading included: a request made then is
honoured at the first batch); ``checked`` makes a progress callback that raises ``Interrupted`` first when a
stop was requested. One flag for the process, re-entered by what the command calls (``run_eval``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from igdm_kit._runtime.signals import StopFlag, checking

#: the command's stop flag (handlers installed while a ``stoppable`` command runs)
FLAG = StopFlag()
STOPPED = "nothing was written: run the same command again"


def stoppable(command: Callable[..., Any]) -> Callable[..., Any]:
    """The command, run with SIGINT/SIGTERM handlers installed (Typer reads the wrapped signature)."""
    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        with FLAG:
            return command(*args, **kwargs)

    return run


def checked(callback: Callable[..., None] | None, what: str, hint: str = STOPPED) -> Callable[..., None]:
    """A progress callback (``callback`` may be None) that first raises ``Interrupted(what, hint)`` when a
    stop was requested."""
    return checking(callback, lambda: FLAG.check(what, hint))
