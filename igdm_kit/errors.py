"""The toolkit's error types.

Every error a user can cause (a bad recipe, checkpoint, data folder or plugin) is an ``IgdmKitError``: it
carries a one-line ``message`` naming the offending thing and a ``hint`` saying how to fix it. The CLI maps
these to ``message + hint`` and exit code 1 in exactly one place (``igdm_kit._cli.main``); anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
import errno
import os
import re
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


class StorageError(IgdmKitError, OSError):
    """The operating system refused a read or write (disk full, permission, read-only file system...).

    Also an ``OSError`` (with its ``errno`` and ``filename``), so code that handles OS failures still does.
    """

    def __init__(self, message: str, hint: str | None = None, *, code: int | None = None,
                 filename: str | None = None) -> None:
        IgdmKitError.__init__(self, message, hint)
        self.errno, self.filename = code, filename
        self.strerror = os.strerror(code) if code else message

    def __str__(self) -> str:
        return IgdmKitError.__str__(self)


_STORAGE_HINTS = {
    errno.ENOSPC: "free space on that disk or write elsewhere (--output); an interrupted run continues with "
                  "--resume",
    errno.EDQUOT: "the disk quota is used up: free space or write elsewhere (--output)",
    errno.EACCES: "check the permissions of that path, or write elsewhere (--output)",
    errno.EPERM: "check the permissions of that path, or write elsewhere (--output)",
    errno.EROFS: "that file system is read-only: write elsewhere (--output)",
    errno.ENOENT: "that path does not exist and cannot be created there: choose another path",
    errno.ENOTDIR: "a part of that path is a file, not a folder: choose another path",
    errno.EISDIR: "that path is a folder, not a file",
    errno.ELOOP: "that path is a loop of symbolic links",
    errno.ENAMETOOLONG: "choose a shorter path",
}


def os_error_code(exc: BaseException) -> int | None:
    """The errno of an OS failure, also when a library reports it only in its message
    (safetensors: ``I/O error: No space left on device (os error 28)``)."""
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    found = re.search(r"os error (\d+)", str(exc))
    return int(found.group(1)) if found else None


def storage_error(exc: BaseException, path: str | os.PathLike | None = None,
                  doing: str = "write") -> StorageError:
    """One line for an OS failure: what could not be done to which file, and how to fix it."""
    if isinstance(exc, StorageError):
        return exc
    code = os_error_code(exc)
    name = str(path) if path is not None else getattr(exc, "filename", None)
    why = os.strerror(code) if code else (getattr(exc, "strerror", None) or str(exc))
    where = f" {str(name)!r}" if name is not None else ""
    hint = _STORAGE_HINTS.get(code, "check the path and the disk") if code else "check the path and the disk"
    return StorageError(f"cannot {doing}{where}: {why}", hint, code=code,
                        filename=str(name) if name is not None else None)
