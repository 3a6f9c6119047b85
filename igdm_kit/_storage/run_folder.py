"""The run folder: what a run writes, and what to do with a folder that already holds one.

::

    manifest.json            igdm-kit's marker (``format``), resolved recipe, digest, seeds, versions, CPU
                             threads, teacher
    recipe.toml              the resolved recipe
    metrics.jsonl            one JSON object per epoch
    last.safetensors         the latest model (a self-describing checkpoint)
    best.safetensors         with [train.validate]: the epoch best on the validation split (best_ema: of the average)
    ema.safetensors          with [train.ema]: the average of the student's weights when training ended
    swa.safetensors          with [train.swa]: the equal average of its epochs' weights, BatchNorm recomputed
    log.jsonl                every tracker record (tensorboard/, wandb/, mlruns/ with those trackers)
    trackers.json            the trackers' run ids, what they hold and the folders they created
    train_state.safetensors  optimizer, scheduler, RNG and epoch, for --resume
    checkpoints/epoch_NNN.safetensors   with train.save_every_epoch
    autoattack.state         while the final AutoAttack runs (it resumes from it; removed when finished)
    eval_flags.safetensors   per-image robust flags of every attack and the worst case (igdm-kit compare)
    model.safetensors        the headline model: the first of [eval] checkpoints (results.json's top level)
    results.json             the final evaluation; its presence marks the run finished
    .igdm-kit.lock           while a process works in the folder: its pid and host

A folder is an igdm-kit run only when its ``manifest.json`` carries igdm-kit's ``format`` key: any other
folder (a project that merely has a ``manifest.json``) is never used, and ``--overwrite`` deletes only the
files named above and the folders its trackers created (``trackers.json``), never anything else in the folder.

``RunFolder.decide`` is the one policy for an existing folder: ``new``, ``resume``, ``reuse`` (a finished run
of the same recipe, when the caller allows it), ``finished`` (``--resume`` of a finished run) or a one-line
error. It is called with the folder's ``RunLock`` held: one process at a time works in a run folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from igdm_kit._recipe import Recipe, first_difference, to_toml
from igdm_kit._recipe import load as load_recipe
from igdm_kit._storage.io import (
    TEMP_SUFFIX,
    atomic_write_json,
    atomic_write_jsonl,
    atomic_write_text,
    is_temp_of,
    is_writer_temp,
    read_jsonl,
)
from igdm_kit._storage.tracker_record import TRACKERS, delete_created
from igdm_kit.errors import IgdmKitError, storage_error

Mode = Literal["new", "resume", "reuse", "finished"]

MANIFEST, RECIPE_FILE, METRICS = "manifest.json", "recipe.toml", "metrics.jsonl"
LAST, STATE, FINAL, RESULTS = "last.safetensors", "train_state.safetensors", "model.safetensors", "results.json"
AA_STATE, CHECKPOINTS, LOCK = "autoattack.state", "checkpoints", ".igdm-kit.lock"
FLAGS, TRACKER_LOG = "eval_flags.safetensors", "log.jsonl"
BEST, EMA, BEST_EMA, SWA = "best.safetensors", "ema.safetensors", "best_ema.safetensors", "swa.safetensors"
#: The manifest's marker: what makes a folder an igdm-kit run folder.
RUN_FORMAT = "igdm-kit/run/1"
#: Every file igdm-kit writes at the top of a run folder (the lock aside; each resumable attack of the final
#: evaluation also keeps a state ``autoattack.state.<attack>``, each judged checkpoint eval_flags.<name>.*).
OWN_FILES = (MANIFEST, RECIPE_FILE, METRICS, LAST, STATE, FINAL, RESULTS, AA_STATE, FLAGS, TRACKER_LOG, BEST,
             EMA, BEST_EMA, TRACKERS)
_EPOCH_FILE = re.compile(r"^epoch_\d{3,}\.safetensors$")


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _is_own(name: str) -> bool:
    """A file igdm-kit writes at the top of a run folder (or the temporary of one), by name."""
    return (name in OWN_FILES or name == LOCK or name.startswith(f"{AA_STATE}.") or is_writer_temp(name)
            or any(is_temp_of(name, f) for f in OWN_FILES))


@dataclass(frozen=True)
class Again:
    """The commands that go on with a folder's run: ``resume`` continues it, ``overwrite`` trains it again."""

    resume: str
    overwrite: str


class RunFolder:
    """One run's folder and the names of the files in it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def epoch_checkpoint(self, epoch: int) -> Path:
        return self.path / CHECKPOINTS / f"epoch_{epoch:03d}.safetensors"

    def lock(self, *, what: str = "run folder", hint: str | None = None) -> RunLock:
        """The folder's exclusive lock (not yet acquired)."""
        return RunLock(self.path, what=what, hint=hint)

    # -- what is there ------------------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        """The run's manifest (empty when it is missing or unreadable)."""
        return self._manifest()

    def _manifest(self) -> dict[str, Any]:
        try:
            data = json.loads((self / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            return {}
        return data if isinstance(data, dict) else {}

    def is_run(self) -> bool:
        """Whether igdm-kit made this folder: its manifest carries igdm-kit's marker."""
        return self._manifest().get("format") == RUN_FORMAT

    def is_finished(self) -> bool:
        return (self / RESULTS).is_file()

    def has_state(self) -> bool:
        return (self / STATE).is_file()

    def metrics(self) -> list[dict[str, Any]]:
        return read_jsonl(self / METRICS) if (self / METRICS).exists() else []

    def results(self) -> dict[str, Any]:
        try:
            data = json.loads((self / RESULTS).read_text(encoding="utf-8"))
        except (ValueError, RecursionError):  # edited by hand: igdm-kit writes it atomically
            data = None
        if not isinstance(data, dict):
            raise IgdmKitError(f"{str(self / RESULTS)!r} is not the JSON object igdm-kit wrote",
                               "pass --overwrite to run again")
        return data

    def _own(self) -> list[Path]:
        """The files igdm-kit wrote here (temporaries of killed writes included, the lock excluded)."""
        if not self.path.is_dir():
            return []
        found = [p for p in self.path.iterdir() if _is_own(p.name) and p.name != LOCK and not p.is_dir()]
        sub = self / CHECKPOINTS
        if sub.is_dir() and not sub.is_symlink():
            found += [p for p in sub.iterdir() if _is_epoch_file(p.name) and not p.is_dir()]
        return found

    def foreign(self) -> list[str]:
        """What the folder holds that igdm-kit did not write."""
        if not self.path.is_dir():
            return []
        own = set(self._own())
        names = [p.name for p in self.path.iterdir()
                 if p not in own and p.name != LOCK and not (p.name == CHECKPOINTS and p.is_dir()
                                                             and not p.is_symlink())]
        sub = self / CHECKPOINTS
        if sub.is_dir() and not sub.is_symlink():
            names += [f"{CHECKPOINTS}/{p.name}" for p in sub.iterdir() if p not in own]
        return sorted(names)

    # -- the policy ---------------------------------------------------------------------------------------
    def decide(self, r: Recipe, *, resume: bool, overwrite: bool, reuse_finished: bool, what: str = "run folder",
               again: Again | None = None) -> Mode:
        """What to do with this folder for recipe ``r``; raises ``IgdmKitError`` when it must not be used.
        Call it with the folder's lock held. ``what`` names the folder in errors; ``again``: the commands that
        go on with its run when the flags of the command at hand do not reach it (a teacher's folder)."""
        out = self.path
        if out.exists() and not out.is_dir():
            raise IgdmKitError(f"output {str(out)!r} is a file, not a folder", "choose a folder with --output")
        if not self.is_run():
            if self.foreign() or any(p.name in OWN_FILES for p in self._own()):
                raise IgdmKitError(f"output folder {str(out)!r} is not empty and holds no igdm-kit run",
                                   "choose an empty or new folder with --output (igdm-kit never deletes a "
                                   "folder it did not make)")
            return "new"  # empty, or only what a process killed before its manifest left
        if overwrite:
            self.delete_run()
            return "new"
        same = self._manifest().get("recipe_digest") == r.digest()
        finished = self.is_finished()
        anew = f"train it again with: {again.overwrite}" if again else None
        if same and (finished or resume) and not self._same_teacher(r):
            raise IgdmKitError(f"the teacher file changed since the run in {str(out)!r} was made",
                               anew or "pass --overwrite to train again with the new teacher")
        if finished:
            if same and resume:
                return "finished"
            if reuse_finished and same:
                return "reuse"
            raise IgdmKitError(f"{what} {str(out)!r} already holds a finished run",
                               anew or "pass --overwrite to replace it, or --output to write elsewhere")
        if not resume:
            raise IgdmKitError(f"{what} {str(out)!r} holds an unfinished run",
                               f"continue it with: {again.resume}; or {anew}" if again else
                               "pass --resume to continue it, or --overwrite to start again")
        if not same:
            key = first_difference(self._manifest().get("recipe", {}), r.resolved())
            raise IgdmKitError(f"{what} {str(out)!r} holds a run of a different recipe"
                               + (f" ({key} differs)" if key else ""),
                               anew or "resume with the same recipe and the same --set options, or pass --overwrite")
        return "resume" if self.has_state() else "new"

    def _same_teacher(self, r: Recipe) -> bool:
        """A finished or resumed run is only reused with the teacher file it was made with (a teacher trained
        by a nested recipe is covered by the recipe digest instead)."""
        t, manifest = r.model.teacher, self._manifest()
        roles = manifest.get("teachers_sha256") or {}
        for role, section in r.model.teachers.items():  # the teachers by role, each its own file
            if role in roles and Path(section.checkpoint).is_file() and roles[role] != sha256_file(section.checkpoint):
                return False
        if t is None or t.checkpoint is None or not Path(t.checkpoint).is_file():
            return True
        recorded = manifest.get("teacher_sha256")
        return recorded is None or recorded == sha256_file(t.checkpoint)

    # -- writing ------------------------------------------------------------------------------------------
    def delete_run(self) -> None:
        """``--overwrite``: delete the files igdm-kit wrote and the folders its trackers created, nothing else
        (foreign files stay)."""
        try:
            delete_created(self.path)
            for p in self._own():
                p.unlink()
            sub = self / CHECKPOINTS
            if sub.is_dir() and not sub.is_symlink() and not any(sub.iterdir()):
                sub.rmdir()
        except OSError as exc:
            raise storage_error(exc, exc.filename or self.path, "delete") from None

    def clean_temporaries(self) -> list[str]:
        """Delete the temporary files of writes a killed process left behind (call with the lock held)."""
        stale = [p for p in self._own() if p.name.endswith(TEMP_SUFFIX) or is_writer_temp(p.name)]
        for p in stale:
            p.unlink(missing_ok=True)
        return [p.name for p in stale]

    def ensure_writable(self) -> None:
        """Fail early if the folder cannot be written — without creating it yet, so that a run stopped by bad
        data or a missing teacher leaves no empty folder behind (the first atomic write creates it)."""
        out = existing = self.path
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        try:
            if not existing.is_dir():
                raise NotADirectoryError(20, "Not a directory")
            if existing == out:
                probe = out / ".write-test"
                probe.write_text("")
                probe.unlink()
            elif not os.access(existing, os.W_OK | os.X_OK):
                raise PermissionError(13, "Permission denied")
        except OSError as exc:
            raise IgdmKitError(f"output folder {str(out)!r} is not writable ({exc.strerror or exc})",
                               "choose another folder with --output") from None

    def start(self, r: Recipe, *, device: str, world_size: int, teacher_digest: str | None,
              extra: dict[str, Any] | None = None) -> None:
        """A new run: drop what an unfinished earlier run left, write the manifest (igdm-kit's marker) and
        the resolved recipe (``extra``: more of the manifest, e.g. the validation split)."""
        import torch

        from igdm_kit._storage.checkpoint import toolkit_version

        for stale in (METRICS, FLAGS, AA_STATE, BEST, BEST_EMA, EMA, *(p.name for p in self.path.glob(AA_STATE + ".*")),
                      *(p.name for p in self.path.glob("eval_flags.*.safetensors"))):
            (self / stale).unlink(missing_ok=True)
        atomic_write_json(self / MANIFEST, {
            "format": RUN_FORMAT, "recipe": r.resolved(), "recipe_digest": r.digest(),
            "seed": r.model.train.seed, "world_size": world_size, "toolkit_version": toolkit_version(),
            "torch_version": torch.__version__, "cuda_version": torch.version.cuda,
            "python_version": platform.python_version(), "device": device,
            "threads": torch.get_num_threads(), "git_commit": _git_commit(),
            "teacher_sha256": teacher_digest, "recipe_file": str(r.path) if r.path else None, **(extra or {}),
        })
        atomic_write_text(self / RECIPE_FILE, to_toml(r.resolved()))

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        """``metrics.jsonl``: every row so far, written atomically (never a torn line)."""
        atomic_write_jsonl(self / METRICS, rows)

    def trim_metrics(self, last_epoch: int) -> list[dict[str, Any]]:
        """Drop metrics rows of epochs after the saved state (a crash between the two writes); the rows kept."""
        kept = [m for m in self.metrics() if m["epoch"] <= last_epoch]
        if (self / METRICS).exists():
            self.write_metrics(kept)
        return kept

    def finish(self, results: dict[str, Any]) -> None:
        """Write ``results.json`` (the run is finished) and drop ``autoattack.state``, which only a
        resumed evaluation reads."""
        atomic_write_json(self / RESULTS, results)
        for state in self.path.glob(AA_STATE + "*"):  # every attack's AutoAttack state
            state.unlink(missing_ok=True)


def check_resumable(r: Recipe, output_dir: str | Path | None = None) -> None:
    """``--resume`` needs something to resume: the run folder, or the folder of a teacher its ``[teacher]
    recipe`` chain trains. Neither there (a typo in ``--output``, another working directory) is one line,
    not a new run started somewhere else."""
    folder = Path(output_dir) if output_dir is not None else r.default_output_dir()
    if folder.exists():
        return
    t = r.model.teacher
    for _ in range(16):  # the engine refuses deeper chains
        if t is None or t.recipe is None:
            break
        sub = load_recipe(t.recipe)
        if sub.default_output_dir().exists():
            return  # a stop during the teacher's training: the whole run resumes from there
        t = sub.model.teacher
    raise IgdmKitError(f"--resume: {folder} does not exist, so there is nothing to resume",
                       "check --output (a relative path is from the working directory) or the recipe's "
                       "output.dir; without --resume a new run starts there")


class RunLock:
    """An exclusive lock on a run folder for the life of a run: ``.igdm-kit.lock`` holds the holder's pid,
    host and start time, and is ``flock``-ed, so the kernel drops it when the holder dies (even by SIGKILL):
    a lock file left behind is stale, and taken over. A second process gets one line naming the holder.

    Acquiring creates the folder; releasing deletes the lock file and the folders acquiring created when
    nothing else was put in them (a run refused before training leaves no empty folder).
    """

    def __init__(self, folder: Path, *, what: str = "run folder", hint: str | None = None) -> None:
        self.folder, self.path = Path(folder), Path(folder) / LOCK
        self.what, self.hint = what, hint or "wait for it to end, or write elsewhere with --output"
        self._fd: int | None = None
        self._created: list[Path] = []
        self._holder: dict[str, Any] | None = None  # a live holder's note, when the lock was busy
        #: what the lock file said when it was taken over (a holder that died), else None
        self.stale: dict[str, Any] | None = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self, wait: Callable[[dict[str, Any]], None] | None = None) -> None:
        """Take the lock. A live holder is an error naming it, unless ``wait`` is given: then ``wait(holder)``
        is called (it sleeps a little, and may raise to give up, e.g. on a stop request) and the lock is
        tried again, until it is free (the folder made again if its holder removed it on leaving)."""
        if self.folder.exists() and not self.folder.is_dir():
            raise IgdmKitError(f"output {str(self.folder)!r} is a file, not a folder",
                               "choose a folder with --output")
        while True:
            self._make_folder()
            try:
                taken = self._take()
                if taken is None:  # the holder's note, when the kernel said it is busy
                    raise self._busy(self._holder)
                self._fd, self.stale = taken
                return
            except BaseException as exc:
                self._tidy()
                if wait is None or not (isinstance(exc, IgdmKitError) and self._holder is not None):
                    raise
            wait(self._holder)

    def _make_folder(self) -> None:
        missing = [p for p in (self.folder, *self.folder.parents) if not p.exists()]
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise storage_error(exc, self.folder, "create the run folder") from None
        self._created = missing  # deepest first

    def _take(self) -> tuple[int, dict[str, Any] | None] | None:
        """The lock file, opened and locked, and what a dead holder's note said; None when a live process
        holds it (its note in ``self._holder``)."""
        self._holder = None
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise storage_error(exc, self.path, "create the lock file") from None
            holder = _read_holder(fd)
            if not _flock(fd, holder):
                self._holder = _wait_for_holder(fd, holder)  # it may be between its lock and its note
                os.close(fd)
                return None
            try:
                same_file = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same_file = False
            if same_file:  # not a file its holder deleted while we opened it
                break
            os.close(fd)
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "since": time.strftime("%Y-%m-%d %H:%M:%S"), "format": RUN_FORMAT}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        return fd, holder or None

    def _busy(self, holder: dict[str, Any]) -> IgdmKitError:
        return IgdmKitError(f"{self.what} {str(self.folder)!r} is in use by another igdm-kit process "
                            f"({describe_holder(holder)})", self.hint)

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None
        self._tidy()

    def _tidy(self) -> None:
        for p in self._created:
            try:
                p.rmdir()  # only when empty
            except OSError:
                break
        self._created = []


def describe_holder(holder: dict[str, Any]) -> str:
    """The process a lock file names, in words."""
    return (f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}"
            if holder.get("pid") else "a process that is starting")


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _wait_for_holder(fd: int, holder: dict[str, Any], seconds: float = 1.0) -> dict[str, Any]:
    """The holder's note, waiting briefly for one that has taken the lock but not yet written it."""
    deadline = time.monotonic() + seconds
    while not holder.get("pid") and time.monotonic() < deadline:
        time.sleep(0.02)
        holder = _read_holder(fd)
    return holder


def _flock(fd: int, holder: dict[str, Any]) -> bool:
    """Take the kernel lock; where the file system has none, judge by the holder's pid on this host."""
    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except (ImportError, OSError):  # no flock here (some network file systems): pid and host decide
        pid = holder.get("pid")
        if not isinstance(pid, int) or holder.get("host") != socket.gethostname() or pid == os.getpid():
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


def _is_epoch_file(name: str) -> bool:
    return bool(_EPOCH_FILE.match(name)) or (name.startswith(".epoch_") and name.endswith(TEMP_SUFFIX)) \
        or is_writer_temp(name)
