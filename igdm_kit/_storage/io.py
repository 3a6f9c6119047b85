"""Atomic file writes: a temporary file in the same folder, fsync, then ``os.replace``.

A crash (or a full disk) during a write leaves the previous file intact; readers never see half a file.
A failure of the operating system (disk full, permission, read-only) is a one-line ``StorageError``
naming the file. JSON is written strictly: a non-finite float becomes ``null``, never ``NaN``/``Infinity``
(which are not JSON).
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from igdm_kit.errors import os_error_code, storage_error

#: How igdm-kit names the temporary file of an atomic write of ``NAME`` (``.NAME.<random>.tmp``).
TEMP_PREFIX, TEMP_SUFFIX = ".", ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` to produce the file, then move it over ``path`` in one step."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise storage_error(exc, path) from None
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; results are meant to be shared
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError) or (isinstance(exc, Exception) and os_error_code(exc)):
            raise storage_error(exc, path) from None  # safetensors reports I/O errors in its message
        raise
    return path


#: safetensors (0.5+) writes through a temporary of its own in the target's folder (Rust's ``tempfile``:
#: ``.tmp`` + 6 characters) before renaming it to our temporary; a kill can leave that one behind too.
_WRITER_TEMP = re.compile(r"^\.tmp[A-Za-z0-9]{6}$")


def is_writer_temp(name: str) -> bool:
    """Whether ``name`` is the temporary a library writer (safetensors) left beside the file it wrote."""
    return bool(_WRITER_TEMP.match(name))


def is_temp_of(name: str, target: str) -> bool:
    """Whether ``name`` is the temporary file of an atomic write of ``target`` (left by a kill)."""
    return name.startswith(f"{TEMP_PREFIX}{target}.") and name.endswith(TEMP_SUFFIX)


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None, so that it is valid JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """Strict JSON text of ``obj`` (non-finite floats as null)."""
    return json.dumps(json_safe(obj), allow_nan=False, **kwargs)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    return atomic_write(path, write)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: list[Any]) -> Path:
    """All rows, one JSON object a line, written atomically (a full disk leaves the previous file)."""
    return atomic_write_text(path, "".join(dumps(r, sort_keys=True) + "\n" for r in rows))


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8", errors="replace") as fh:  # a broken line is skipped, not fatal
        for line in fh:
            try:
                row = json.loads(line)
            except (ValueError, RecursionError):
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows
