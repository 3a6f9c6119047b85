"""Robust accuracy: the five metrics of Section 4.1 of the paper, computed as ``shared/spec/methods.md`` fixes.

All at L∞ ε (default 8/255) with the model in ``eval()`` (its previous mode is restored afterwards); the
attacks and their settings are the table in ``igdm_kit._recipe.specs``. AutoAttack is the official package
(``pyautoattack``, version ``standard``: APGD-CE, APGD-T, FAB-T, Square), reported as its robust accuracy;
its warnings (gradient-masking flags) are returned.

Every attack starts from ``torch.manual_seed(seed)`` on a forked RNG, so one attack's result does not depend
on which attacks ran before it and the caller's RNG is left untouched.

The attacks themselves are evaluation-attack plugins; the margin PGD and the resumable AutoAttack driver
they use are public in ``igdm_kit.attacks``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from igdm_kit._evaluation.report import WORST, Accuracy, EvalReport
from igdm_kit._recipe.specs import DEFAULT_ATTACKS, EvalSpec, check_eps, resolve
from igdm_kit.attacks import LINF_EPS, Progress, batch_slices, eval_mode, resolve_device, seeded
from igdm_kit.errors import DataError, IgdmKitError
from igdm_kit.interfaces import Threat
from igdm_kit.nn import to_float_images

ATTACKS = DEFAULT_ATTACKS
FLAGS_FORMAT = "igdm-kit/eval-flags/1"


# -- helpers ---------------------------------------------------------------------------------------------
def _check_data(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.ndim < 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise DataError(f"evaluation data has shapes {tuple(x.shape)} and {tuple(y.shape)}",
                        "pass images (N, C, H, W) and labels (N,)")
    if x.shape[0] == 0:
        raise DataError("evaluation data is empty", "check the dataset and --limit")
    if x.min() < 0 or x.max() > 1:
        raise DataError(f"images lie in [{x.min().item():.3g}, {x.max().item():.3g}], not in [0, 1]",
                        "normalization belongs inside the model; pass raw [0, 1] images")


# -- white-box attacks -------------------------------------------------------------------------------------
class Context:
    """``interfaces.EvalContext``: what an evaluation attack gets besides the model and the data."""

    def __init__(self, threat: Threat, *, batch_size: int, device: torch.device, seed: int | None,
                 task: str, progress: Progress | None, state_path: Path | None, warnings: list[str],
                 details: dict[str, Any]) -> None:
        self.threat, self.batch_size, self.device, self.seed = threat, batch_size, device, seed
        self.state_path = state_path
        self._task, self._progress, self._warnings, self.details = task, progress, warnings, details

    def per_batch(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, perturb) -> torch.Tensor:
        robust = torch.zeros(x.shape[0], dtype=torch.bool)
        batches = batch_slices(x.shape[0], self.batch_size)
        for i, sl in enumerate(batches, 1):
            xb, yb = x[sl].to(self.device), y[sl].to(self.device)
            xb = perturb(xb, yb)
            with torch.no_grad():
                robust[sl] = (model(xb).argmax(1) == yb).cpu()
            self.progress(self._task, i, len(batches))
        return robust

    def progress(self, task: str, done: int, total: int) -> None:
        if self._progress:
            self._progress(task, done, total)

    def warn(self, message: str) -> None:
        if message not in self._warnings:
            self._warnings.append(message)

    def report(self, details: dict[str, Any]) -> None:
        """Extra numbers of the attack (e.g. AutoAttack's accuracy after each of its attacks)."""
        self.details.update(details)


# -- the entry point -----------------------------------------------------------------------------------
def evaluate_report(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: Sequence[Any] = ATTACKS, *,
                    batch_size: int = 256, eps: float = LINF_EPS, threat: str = "Linf",
                    device: str | torch.device | None = None, seed: int | None = 0,
                    progress: Progress | None = None, autoattack_state: str | Path | None = None,
                    where: str = "attacks", num_classes: int | None = None) -> EvalReport:
    """Accuracy of ``model`` on (x, y) under each attack, and the worst case per image over all of them, with
    the per-image robust flags (``EvalReport``).

    ``attacks``: names or tables (``{"name": "pgd", "steps": 50}``) of registered evaluation attacks, or
    resolved ``EvalSpec``s; ``threat`` the norm of the ball of radius ``eps``. ``x`` are [0, 1] images
    (N, C, H, W; uint8 images count as k/255), ``y`` int64 labels. ``device``: ``None`` keeps the model
    where it is, otherwise the model is moved there. Every attack starts from ``torch.manual_seed(seed)`` on a
    forked RNG. Per-class counts (robust fairness) cover classes 0 … ``num_classes`` − 1 (default: the largest
    label + 1).
    """
    if batch_size <= 0:
        raise IgdmKitError(f"batch size {batch_size} is not positive", "pass --batch-size 1 or more")
    x = to_float_images(x)  # uint8 data (k/255): the attacks take [0, 1] floats
    _check_data(x, y)
    check_eps(eps, threat, "eps" if where == "attacks" else where.replace("attacks", "eps"),
              dims=int(x[0].numel()))
    specs = _specs(attacks, threat, where)
    dev = resolve_device(device, model)
    model.to(dev)
    x, y = x.detach(), y.detach().long()
    n = int(x.shape[0])
    flags: dict[str, torch.Tensor] = {}
    rep = EvalReport(n=n, eps=eps, threat=threat, seed=seed, device=str(dev), attacks={},
                     worst=Accuracy(0, n), over=[], flags=flags)
    states = _state_files(autoattack_state, specs)
    with eval_mode(model):
        for spec in specs:
            start = time.perf_counter()
            flags[spec.key] = _run_one(spec, model, x, y, Threat(threat, eps), dev, batch_size, seed, progress,
                                       states.get(spec.key), rep)
            rep.attacks[spec.key] = Accuracy(int(flags[spec.key].sum()), n, spec.label)
            rep.seconds[spec.key] = time.perf_counter() - start
    worst = torch.stack(list(flags.values())).all(dim=0)
    rep.worst, rep.over = Accuracy(int(worst.sum()), n, "worst case"), list(flags)
    flags[WORST] = worst
    classes = num_classes if num_classes is not None else (int(y.max()) + 1 if n else 0)
    rep.per_class = {k: per_class_counts(f, y, classes) for k, f in flags.items()}
    return rep


def per_class_counts(flags: torch.Tensor, y: torch.Tensor, num_classes: int) -> list[tuple[int, int]]:
    """(correct, total) of each class 0 … num_classes − 1 from per-image flags and labels."""
    y = y.to(flags.device).long()
    total = torch.bincount(y, minlength=num_classes)[:num_classes]
    correct = torch.bincount(y[flags.bool()], minlength=num_classes)[:num_classes]
    return [(int(c), int(t)) for c, t in zip(correct.tolist(), total.tolist(), strict=True)]


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: Sequence[Any] = ATTACKS, *,
             keep_flags: bool = False, **kwargs: Any) -> dict[str, Any]:
    """``evaluate_report`` as its JSON (``EvalReport.to_json``); with ``keep_flags`` also ``"flags"``."""
    return evaluate_report(model, x, y, attacks, **kwargs).to_json(flags=keep_flags)


def _specs(attacks: Sequence[Any], threat: str, where: str) -> list[EvalSpec]:
    if attacks and all(isinstance(a, EvalSpec) for a in attacks):
        return list(attacks)
    items = list(dict.fromkeys(attacks)) if all(isinstance(a, str) for a in attacks) else list(attacks)
    return resolve(items, threat, where)


def _run_one(spec: EvalSpec, model, x, y, threat: Threat, dev, batch_size: int, seed: int | None,
             progress: Progress | None, state_path: Path | None, rep: EvalReport) -> torch.Tensor:
    """One attack's robust flags, from a seeded, forked RNG (independent of the attacks before it)."""
    from igdm_kit.factories import create_eval_attack

    details: dict[str, Any] = {}
    ctx = Context(threat, batch_size=batch_size, device=dev, seed=seed, task=spec.key, progress=progress,
                  state_path=state_path, warnings=rep.warnings, details=details)
    with seeded(seed, dev):
        flags = create_eval_attack(spec.name, spec.options).robust(model, x, y, ctx)
    flags = torch.as_tensor(flags, dtype=torch.bool).cpu().reshape(-1)
    if flags.shape[0] != x.shape[0]:
        raise IgdmKitError(f"evaluation attack {spec.name!r} returned {flags.shape[0]} flags for "
                           f"{x.shape[0]} images", "an EvalAttack returns one bool per image")
    if details:
        rep.details[spec.key] = details
    return flags


def _state_files(base: str | Path | None, specs: list[EvalSpec]) -> dict[str, Path]:
    """Each attack's state file: ``base`` (the file the user named, e.g. ``--aa-state``) for the first attack
    whose contract says it is ``resumable``, a sibling named after its key for every other."""
    from igdm_kit._plugins.manager import registry

    if base is None:
        return {}
    base = Path(base)
    first = next((s.key for s in specs if registry("eval_attack").get(s.name).resumable), None)
    safe = {s.key: "".join(c if c.isalnum() or c in "-_." else "_" for c in s.key) for s in specs}
    return {s.key: base if s.key == first else base.with_name(f"{base.name}.{safe[s.key]}") for s in specs}


def accuracy(correct: int, total: int) -> dict[str, Any]:
    """Accuracy in percent with its count and its 95% Wilson interval."""
    return {k: v for k, v in Accuracy(int(correct), int(total)).to_json().items() if k != "label"}


def report_json(result: dict[str, Any] | EvalReport) -> dict[str, Any]:
    """The evaluation's result without its per-image flags (what results.json and --json hold)."""
    if isinstance(result, EvalReport):
        return result.to_json()
    return {k: v for k, v in result.items() if k != "flags"}


def images_digest(x: torch.Tensor, y: torch.Tensor) -> str:
    """sha256 of the evaluation images and labels: two flag files pair only on the same images."""
    h = hashlib.sha256()
    for t in (to_float_images(x), y):  # of the [0, 1] images, whether held as uint8 or float
        h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_flags(path: str | Path, result: dict[str, Any] | EvalReport, x: torch.Tensor, y: torch.Tensor,
               meta: dict[str, Any] | None = None) -> Path:
    """The per-image robust flags of an evaluation, one uint8 tensor per attack key (and ``worst``), in a
    safetensors file with the images' digest, so two models judged on the same images can be paired."""
    from safetensors.torch import save_file

    from igdm_kit._storage.io import atomic_write

    if isinstance(result, EvalReport):
        result = result.to_json(flags=True)
    tensors = {k: v.to(torch.uint8).contiguous() for k, v in result["flags"].items()}
    info = {"format": FLAGS_FORMAT, "n": result["n"], "eps": result["eps"], "threat": result["threat"],
            "seed": result["seed"], "labels": {k: m["label"] for k, m in result["metrics"].items()},
            "images_sha256": images_digest(x, y), **(meta or {})}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"igdm_kit_flags": json.dumps(info)}))


def load_flags(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(flags by attack key, metadata) of a file ``save_flags`` wrote; a one-line error for anything else
    (``check_flags``)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {})["igdm_kit_flags"])
        raw = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - missing, truncated, foreign: one line
        raise IgdmKitError(f"{str(path)!r} holds no igdm-kit evaluation flags ({type(exc).__name__})",
                           "pass a run folder evaluated by this igdm-kit, or an eval --save-flags file") from None
    check_flags(path, raw, meta)
    return {k: v.bool() for k, v in raw.items()}, meta


def check_flags(path: Path, raw: dict[str, torch.Tensor], meta: Any) -> None:
    """A flags file is used only when it is what ``save_flags`` writes: its format, one flag of 0 or 1 per
    image for every attack (``n`` of them, a vector), and a worst case that is every attack's at once."""
    def bad(why: str) -> IgdmKitError:
        return IgdmKitError(f"{str(path)!r} is not a valid igdm-kit flags file: {why}",
                            "re-create it with igdm-kit eval --save-flags, or evaluate the run again")

    if not isinstance(meta, dict) or meta.get("format") != FLAGS_FORMAT:
        raise bad(f"its format is not {FLAGS_FORMAT!r}")
    n = meta.get("n")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise bad(f"n = {n!r} is not a number of images")
    if not isinstance(meta.get("images_sha256"), str) or not isinstance(meta.get("labels"), dict):
        raise bad("its images' digest or its attack labels are missing")
    for key, t in raw.items():
        if t.ndim != 1 or t.shape[0] != n:
            raise bad(f"{key} has flags of shape {list(t.shape)}, not one per image ({n})")
        if ((t != 0) & (t != 1)).any():
            raise bad(f"{key} has a flag that is neither 0 nor 1")
    attacks = [k for k in raw if k != WORST]
    if not attacks or WORST not in raw or \
            not torch.equal(raw[WORST].bool(), torch.stack([raw[k].bool() for k in attacks]).all(dim=0)):
        raise bad("its worst case is not the worst over its attacks")


def load_eval_data(dataset_name: str, limit: int | None = None, options: dict[str, Any] | None = None,
                   split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
    """The dataset's test split (its first ``limit`` images when given), as float [0, 1] images and labels."""
    from igdm_kit.factories import create_dataset

    if limit is not None and limit <= 0:
        raise IgdmKitError(f"--limit {limit} is not positive", "pass a positive number of test images")
    x, y = create_dataset(dataset_name, **(options or {})).load(split)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return to_float_images(x), y
