"""The state file of a resumable AutoAttack evaluation (``igdm_kit.attacks.run_autoattack``): what it holds,
and the checks a file must pass before a single flag of it is used.

It records everything that decides which images were done: a fingerprint of the model, the images, the
labels, ε, norm, version and seed; the attacks in order; and the batch size its batches were formed with
(pyautoattack re-seeds every batch, so the random starts of an image depend on which images share its
batch: the batch size is part of the evaluation, like the seed). Progress is the clean mask, the robust
flags, the attacks done, and for the attack under way the images it started from and how many of its
batches are done.

A file is refused in one line, never trusted, when it is not JSON, is of another format or evaluation, is
malformed (types, lengths, attack names, counters out of range), was edited (its sha256 checksum), or is
inconsistent (an image robust that was never correct, an accuracy that is not its flags' count, an image of
a batch not attacked yet already counted out). The checksum is no secret: it catches edits and corruption,
and the consistency checks bound what a re-sealed edit could claim.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from pathlib import Path
from typing import Any

import torch

from igdm_kit._storage.io import atomic_write_json
from igdm_kit.errors import IgdmKitError

FORMAT = "igdm-kit/autoattack-state/2"
OLDER = ("igdm-kit/autoattack-state/1",)
FRESH = "delete it to start the AutoAttack evaluation afresh"


def fingerprint(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Any, seed: int | None) -> str:
    """sha256 of the model's tensors, the images, the labels, ``threat`` (ε, norm, version) and the seed."""
    h = hashlib.sha256()
    for t in (x, y, *model.state_dict().values()):
        h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    h.update(repr((threat, seed)).encode())
    return h.hexdigest()


def checksum(state: dict[str, Any]) -> str:
    """sha256 of the state's contents (everything but the checksum itself), as canonical JSON."""
    body = {k: v for k, v in state.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def new_state(print_: str, attacks: list[str], batch_size: int, eps: float, seed: int | None) -> dict[str, Any]:
    return {"format": FORMAT, "fingerprint": print_, "attacks": list(attacks), "batch_size": int(batch_size),
            "eps": eps, "seed": seed, "clean": None, "robust": None, "after": {}, "done": [], "current": None,
            "start": None, "chunks_done": 0}


def save(path: Path | None, state: dict[str, Any]) -> None:
    """Seal the state with its checksum and write it atomically (nothing without a path)."""
    if path is not None:
        state["checksum"] = checksum(state)
        atomic_write_json(path, state)


def chunks(start: list[bool], batch_size: int) -> list[torch.Tensor]:
    """The batches of one attack: the images standing when it started, ``batch_size`` at a time, as
    pyautoattack forms them."""
    idx = torch.nonzero(torch.tensor(start, dtype=torch.bool)).flatten()
    return list(idx.split(batch_size)) if idx.numel() else []  # split() of nothing is [empty]


# -- reading ---------------------------------------------------------------------------------------------
def load(path: Path, print_: str, attacks: list[str], n: int) -> dict[str, Any] | None:
    """The state in ``path`` if it is this evaluation's and passes every check; None when there is none."""
    if not path.exists():
        return None
    where = f"AutoAttack state {str(path)!r}"
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # unreadable, not UTF-8 (a binary file), not JSON
        raise IgdmKitError(f"{where} is not readable JSON", FRESH) from None
    if not isinstance(state, dict) or not isinstance(state.get("format"), str) or \
            not state["format"].startswith("igdm-kit/autoattack-state/"):
        raise IgdmKitError(f"{str(path)!r} is not an igdm-kit AutoAttack state file",
                           "pass a different --aa-state path, or delete that file")
    if state["format"] in OLDER:
        raise IgdmKitError(f"{where} was written by an older igdm-kit (its progress counts batches of an "
                           "unrecorded size)", FRESH)
    if state["format"] != FORMAT:
        raise IgdmKitError(f"{where} has format {state['format']!r}; this igdm-kit reads {FORMAT!r}", FRESH)
    if state.get("fingerprint") != print_ or state.get("attacks") != attacks:
        raise IgdmKitError(f"{where} belongs to another model, data, ε, seed or attack set",
                           "use a fresh state file for each evaluation, or delete that one")
    _check_fields(state, where, n)
    if state["checksum"] != checksum(state):
        raise IgdmKitError(f"{where} has changed since igdm-kit wrote it (its checksum does not match)", FRESH)
    _check_consistent(state, where, n)
    return state


def _flags(v: Any, n: int) -> bool:
    return isinstance(v, list) and len(v) == n and all(isinstance(b, bool) for b in v)


def _whole(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_fields(state: dict[str, Any], where: str, n: int) -> None:
    """Types, lengths, attack names and counters in range; one line naming the first wrong key."""
    def bad(key: str, why: str) -> IgdmKitError:
        return IgdmKitError(f"{where} is malformed: {key} {why}", FRESH)

    if not isinstance(state.get("checksum"), str):
        raise bad("checksum", "is missing or not a string")
    if not _whole(state.get("batch_size")) or state["batch_size"] < 1:
        raise bad("batch_size", "is not a whole number ≥ 1")
    for key in ("clean", "robust"):
        if state.get(key) is not None and not _flags(state[key], n):
            raise bad(key, f"is not a list of {n} true/false flags")
    if (state.get("clean") is None) != (state.get("robust") is None):
        raise bad("robust", "and clean are not both set")
    after = state.get("after")
    if not isinstance(after, dict) or any(k not in ("clean", *state["attacks"]) for k in after) or any(
            not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or not 0 <= v <= 100
            for v in after.values()):
        raise bad("after", "is not a table of the attacks' accuracies in [0, 100]")
    done = state.get("done")
    if not isinstance(done, list) or done != state["attacks"][:len(done)]:
        raise bad("done", "is not the first attacks of the run, each once, in order")
    current = state.get("current")
    if current is not None and (len(done) >= len(state["attacks"]) or current != state["attacks"][len(done)]):
        raise bad("current", f"= {current!r} is not the attack after those done")
    if (current is None) != (state.get("start") is None) or (current is not None and not _flags(state["start"], n)):
        raise bad("start", f"is not a list of {n} flags exactly while an attack is under way")
    if state["robust"] is None and (done or current is not None or after):
        raise bad("robust", "is missing while attacks are recorded")
    total = len(chunks(state["start"], state["batch_size"])) if current is not None else 0
    if not _whole(state.get("chunks_done")) or not 0 <= state["chunks_done"] <= total:
        raise bad("chunks_done", f"is not a whole number from 0 to {total}")


def _check_consistent(state: dict[str, Any], where: str, n: int) -> None:
    """The flags and the accuracies must tell one story."""
    if state["robust"] is None:
        return
    clean, robust = (torch.tensor(state[k], dtype=torch.bool) for k in ("clean", "robust"))
    after = state["after"]

    def pct(flags: torch.Tensor) -> float:
        return 100.0 * int(flags.sum()) / n

    def same(a: float | None, b: float) -> bool:
        return a is not None and abs(a - b) < 1e-9

    steps = [after.get(k) for k in ("clean", *state["done"])]
    ok = bool((robust <= clean).all()) and same(steps[0], pct(clean)) and \
        all(a is not None and b is not None and b <= a + 1e-9 for a, b in itertools.pairwise(steps))
    if ok and state["current"] is None:
        ok = same(steps[-1], pct(robust))
    elif ok:
        start = torch.tensor(state["start"], dtype=torch.bool)
        pending = chunks(state["start"], state["batch_size"])[state["chunks_done"]:]
        ok = bool((robust <= start).all()) and same(steps[-1], pct(start)) and \
            all(bool(robust[c].all()) for c in pending)
    if not ok:
        raise IgdmKitError(f"{where} is inconsistent: its robust flags and accuracies do not match",
                           FRESH)
