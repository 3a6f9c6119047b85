"""The toolkit's error types.

Every error a user can cause (a bad recipe, checkpoint, data folder or plugin) is an ``IgdmKitError``: it
carries a one-line ``message`` naming the offending thing and a ``hint`` saying how to fix it. The CLI maps
these to ``message + hint`` and exit code 1 in exactly one place (``igdm_kit.cli.main``); anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class IgdmKitError(Exception):
    """A user-facing error: one line saying what is wrong, and a hint saying how to fix it."""

    #: The process exit code the CLI uses for it.
    exit_code: int = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class RecipeError(IgdmKitError):
    """A recipe file is missing, not TOML, or does not validate. ``path`` is the dotted TOML key."""

    def __init__(self, message: str, hint: str | None = None, path: str | None = None) -> None:
        super().__init__(message, hint)
        self.path = path


class PluginError(IgdmKitError):
    """A plugin failed to import or to register, or registered a name another plugin already has."""


class UnknownComponentError(IgdmKitError):
    """A recipe or command names a component (method, model, ...) that no plugin registered."""

    def __init__(self, kind: str, name: str, known: Iterable[str]) -> None:
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        if close:
            hint = "did you mean " + ", ".join(repr(c) for c in close) + "?"
        else:
            hint = "known: " + ", ".join(known) if known else f"no {kind} is registered"
        super().__init__(f"unknown {kind} {name!r}", hint)
        self.kind, self.name, self.close_matches = kind, name, close


class CheckpointError(IgdmKitError):
    """A checkpoint or weights file cannot be read, is unsafe, or does not fit the named architecture."""


class DataError(IgdmKitError):
    """A dataset is missing on disk or has the wrong shape, range or layout."""


class TrainingError(IgdmKitError):
    """Training cannot go on (a non-finite loss, an output folder that cannot be written...)."""


class Interrupted(IgdmKitError):
    """SIGINT/SIGTERM stopped a run after saving its state; the hint is the command that resumes it.

    The exit code is 128 + the signal's number, as a shell reports a process the signal ended.
    """

    def __init__(self, message: str, hint: str, exit_code: int) -> None:
        super().__init__(message, hint)
        self.exit_code = exit_code
