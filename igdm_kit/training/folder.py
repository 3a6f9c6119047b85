"""The run folder: what a run writes, and what to do with a folder that already holds one.

::

    manifest.json            resolved recipe, digest, seeds, versions, teacher digest
    recipe.toml              the resolved recipe
    metrics.jsonl            one JSON object per epoch
    last.safetensors         the latest model (a self-describing checkpoint)
    best.safetensors         with [train.validate]: the epoch best on the validation split (best_ema: of the average)
    ema.safetensors          with [train.ema]: the average of the student's weights when training ended
    log.jsonl                every tracker record (tensorboard/, wandb/, mlruns/ with those trackers)
    train_state.safetensors  optimizer, scheduler, RNG and epoch, for --resume
    checkpoints/epoch_NNN.safetensors   with train.save_every_epoch
    autoattack.state         while the final AutoAttack runs (it resumes from it)
    eval_flags.safetensors   per-image robust flags of every attack and the worst case (igdm-kit compare)
    model.safetensors        the final model
    results.json             the final evaluation; its presence marks the run finished

``RunFolder.decide`` is the one policy for an existing folder: ``new``, ``resume``, ``reuse`` (a finished run
of the same recipe, when the caller allows it) or a one-line error.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any, Literal

from ..errors import IgdmKitError
from ..io import atomic_write_json, atomic_write_text, read_jsonl
from ..recipe import Recipe, first_difference, to_toml

Mode = Literal["new", "resume", "reuse"]

MANIFEST, RECIPE_FILE, METRICS = "manifest.json", "recipe.toml", "metrics.jsonl"
LAST, STATE, FINAL, RESULTS = "last.safetensors", "train_state.safetensors", "model.safetensors", "results.json"
AA_STATE, CHECKPOINTS, FLAGS = "autoattack.state", "checkpoints", "eval_flags.safetensors"
BEST, EMA, BEST_EMA = "best.safetensors", "ema.safetensors", "best_ema.safetensors"


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


class RunFolder:
    """One run's folder and the names of the files in it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def epoch_checkpoint(self, epoch: int) -> Path:
        return self.path / CHECKPOINTS / f"epoch_{epoch:03d}.safetensors"

    # -- what is there ------------------------------------------------------------------------------------
    def _manifest(self) -> dict[str, Any]:
        try:
            data = json.loads((self / MANIFEST).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def is_finished(self) -> bool:
        return (self / RESULTS).is_file()

    def has_state(self) -> bool:
        return (self / STATE).is_file()

    def metrics(self) -> list[dict[str, Any]]:
        return read_jsonl(self / METRICS) if (self / METRICS).exists() else []

    def results(self) -> dict[str, Any]:
        return json.loads((self / RESULTS).read_text())

    # -- the policy ---------------------------------------------------------------------------------------
    def decide(self, r: Recipe, *, resume: bool, overwrite: bool, reuse_finished: bool) -> Mode:
        """What to do with this folder for recipe ``r``; raises ``IgdmKitError`` when it must not be used."""
        out = self.path
        if out.exists() and not out.is_dir():
            raise IgdmKitError(f"output {str(out)!r} is a file, not a folder", "choose a folder with --output")
        if not out.exists() or not any(out.iterdir()):
            return "new"
        if not any((self / f).exists() for f in (MANIFEST, STATE, METRICS, RESULTS)):
            raise IgdmKitError(f"output folder {str(out)!r} is not empty and holds no igdm-kit run",
                               "choose an empty or new folder with --output (it is never deleted)")
        if overwrite:
            shutil.rmtree(out)
            return "new"
        same = self._manifest().get("recipe_digest") == r.digest()
        finished = self.is_finished()
        if same and (finished or resume) and not self._same_teacher(r):
            raise IgdmKitError(f"the teacher file changed since the run in {str(out)!r} was made",
                               "pass --overwrite to train again with the new teacher")
        if finished:
            if reuse_finished and same:
                return "reuse"
            raise IgdmKitError(f"run folder {str(out)!r} already holds a finished run",
                               "pass --overwrite to replace it, or --output to write elsewhere")
        if not resume:
            raise IgdmKitError(f"run folder {str(out)!r} holds an unfinished run",
                               "pass --resume to continue it, or --overwrite to start again")
        if not same and (self / MANIFEST).is_file():
            key = first_difference(self._manifest().get("recipe", {}), r.resolved())
            raise IgdmKitError(f"run folder {str(out)!r} holds a run of a different recipe"
                               + (f" ({key} differs)" if key else ""),
                               "resume with the same recipe and the same --set options, or pass --overwrite")
        return "resume" if self.has_state() else "new"

    def _same_teacher(self, r: Recipe) -> bool:
        """A finished or resumed run is only reused with the teacher file it was made with (a teacher trained
        by a nested recipe is covered by the recipe digest instead)."""
        t = r.model.teacher
        if t is None or t.checkpoint is None or not Path(t.checkpoint).is_file():
            return True
        recorded = self._manifest().get("teacher_sha256")
        return recorded is None or recorded == sha256_file(t.checkpoint)

    # -- writing ------------------------------------------------------------------------------------------
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
        """A new run: drop what an unfinished earlier run left, write the resolved recipe and the manifest
        (``extra``: more of it, e.g. the validation split)."""
        import torch

        from ..checkpoint import toolkit_version

        for stale in (METRICS, FLAGS, BEST, BEST_EMA, EMA, *(p.name for p in self.path.glob(AA_STATE + "*")),
                      *(p.name for p in self.path.glob("eval_flags.*.safetensors"))):
            (self / stale).unlink(missing_ok=True)
        atomic_write_text(self / RECIPE_FILE, to_toml(r.resolved()))
        atomic_write_json(self / MANIFEST, {
            "recipe": r.resolved(), "recipe_digest": r.digest(), "seed": r.model.train.seed,
            "world_size": world_size, "toolkit_version": toolkit_version(), "torch_version": torch.__version__,
            "cuda_version": torch.version.cuda, "python_version": platform.python_version(),
            "device": device, "git_commit": _git_commit(), "teacher_sha256": teacher_digest,
            "recipe_file": str(r.path) if r.path else None, **(extra or {}),
        })

    def trim_metrics(self, last_epoch: int) -> list[dict[str, Any]]:
        """Drop metrics rows of epochs after the saved state (a crash between the two writes); the rows kept."""
        kept = [m for m in self.metrics() if m["epoch"] <= last_epoch]
        if (self / METRICS).exists():
            atomic_write_text(self / METRICS, "".join(json.dumps(m, sort_keys=True) + "\n" for m in kept))
        return kept

    def finish(self, results: dict[str, Any]) -> None:
        atomic_write_json(self / RESULTS, results)
