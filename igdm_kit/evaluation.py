"""Robust accuracy: the five metrics of Section 4.1 of the paper, computed as ``shared/spec/methods.md`` fixes.

All at L∞ ε (default 8/255) with the model in ``eval()`` (its previous mode is restored afterwards); the
attacks and their settings are the table in ``igdm_kit.eval_attacks``. AutoAttack is the official package
(``pyautoattack``, version ``standard``: APGD-CE, APGD-T, FAB-T, Square), reported as its robust accuracy;
its warnings (gradient-masking flags) are returned.

Every attack starts from ``torch.manual_seed(seed)`` on a forked RNG, so one attack's result does not depend
on which attacks ran before it and the caller's RNG is left untouched.

AutoAttack is resumable. pyautoattack 0.2.0's own state file cannot be resumed (it stores the attack set as
a Python ``repr`` string, so a restore always fails its consistency check, and a restored run would hit an
unbound ``y_adv``), so igdm-kit keeps its own state file: AutoAttack is driven one (attack, batch) at a time
over the points still robust — the same batches, seeds and order as one ``run_standard_evaluation`` call —
and the robust flags are saved atomically after every batch, with a fingerprint of model, data and ε.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torchattacks.attack import Attack
from torch import nn

from .errors import DataError, IgdmKitError
from .eval_attacks import ATTACKS, EVAL_ATTACKS, STEP_SIZE
from .io import atomic_write_json

DEFAULT_EPS = 8 / 255
AA_STATE_FORMAT = "igdm-kit/autoattack-state/1"

#: ``progress(task, done, total)``: called after each batch with the cumulative count of batches.
Progress = Callable[[str, int, int], None]


# -- the CW-∞ attack -----------------------------------------------------------------------------------
class CWLinf(Attack):
    """CW-∞: PGD ascent on the margin max_{j≠y} z_j − z_y, L∞ ball of radius ``eps``, uniform random start.

    Each step: z ← Proj(z + α·sign(∇_z margin)), Proj = clamp to the ε-ball around x, then to [0, 1].
    """

    def __init__(self, model: nn.Module, eps: float = DEFAULT_EPS, alpha: float = STEP_SIZE, steps: int = 30,
                 random_start: bool = True) -> None:
        super().__init__("CWLinf", model)
        self.eps, self.alpha, self.steps, self.random_start = eps, alpha, steps, random_start

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        images = images.clone().detach()
        labels = labels.clone().detach()
        adv = images.clone()
        if self.random_start:
            adv = torch.clamp(adv + torch.empty_like(adv).uniform_(-self.eps, self.eps), 0.0, 1.0)
        for _ in range(self.steps):
            adv.requires_grad_(True)
            loss = margin(self.get_logits(adv), labels).sum()
            grad = torch.autograd.grad(loss, adv)[0]
            adv = adv.detach() + self.alpha * grad.sign()
            delta = torch.clamp(adv - images, -self.eps, self.eps)
            adv = torch.clamp(images + delta, 0.0, 1.0).detach()
        return adv


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample max_{j≠y} z_j − z_y (positive iff the prediction is wrong)."""
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return others.max(dim=1).values - z_y


# -- helpers ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def eval_mode(*models: nn.Module | None) -> Iterator[None]:
    """Put every submodule in eval mode and restore each one's own previous mode afterwards."""
    saved = [(m, m.training) for model in models if model is not None for m in model.modules()]
    for model in models:
        if model is not None:
            model.eval()
    try:
        yield
    finally:
        for m, mode in saved:
            m.training = mode


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Run with ``torch.manual_seed(seed)`` on a forked RNG (the caller's RNG state is left as it was)."""
    if seed is None:
        yield
        return
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def resolve_device(device: str | torch.device | None, model: nn.Module | None = None) -> torch.device:
    """``None``: the model's device; ``"auto"``: CUDA when available, else CPU."""
    if device is None:
        return _model_device(model) if model is not None else torch.device("cpu")
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise IgdmKitError(f"unknown device {str(device)!r}", "use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise IgdmKitError(f"device {str(device)!r} is not available here", "use --device cpu")
    return dev


def _batches(n: int, batch_size: int) -> list[slice]:
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def _check_data(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.ndim < 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise DataError(f"evaluation data has shapes {tuple(x.shape)} and {tuple(y.shape)}",
                        "pass images (N, C, H, W) and labels (N,)")
    if x.shape[0] == 0:
        raise DataError("evaluation data is empty", "check the dataset and --limit")
    if x.min() < 0 or x.max() > 1:
        raise DataError(f"images lie in [{x.min().item():.3g}, {x.max().item():.3g}], not in [0, 1]",
                        "normalization belongs inside the model; pass raw [0, 1] images")


def _accuracy(correct: int, total: int) -> dict[str, Any]:
    return {"accuracy": 100.0 * correct / total, "correct": int(correct), "total": int(total)}


# -- white-box attacks -------------------------------------------------------------------------------------
def _make_attack(name: str, model: nn.Module, eps: float):
    """The white-box attack ``name`` of the table (``igdm_kit.eval_attacks``) against ``model``."""
    spec = EVAL_ATTACKS.get(name)
    if spec is None or spec.build is None:
        raise ValueError(name)
    return spec.build(model, eps)


def _run_batched(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
                 batch_size: int, device: torch.device, seed: int | None,
                 progress: Progress | None) -> int:
    """Correctly classified count under one attack (``clean``: no attack)."""
    attack = None if EVAL_ATTACKS[name].kind == "clean" else _make_attack(name, model, eps)
    if attack is not None:
        attack.set_device(device)
    correct = 0
    batches = _batches(x.shape[0], batch_size)
    with seeded(seed, device):
        for i, sl in enumerate(batches, 1):
            xb, yb = x[sl].to(device), y[sl].to(device)
            if attack is not None:
                xb = attack(xb, yb)
            with torch.no_grad():
                correct += int((model(xb).argmax(1) == yb).sum())
            if progress:
                progress(name, i, len(batches))
    return correct


# -- AutoAttack --------------------------------------------------------------------------------------------
class _Capture(logging.Handler):
    """Collects the messages pyautoattack logs at WARNING and above (its gradient-masking flags)."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg not in self.messages:  # the checks run once per batch; report each flag once
            self.messages.append(msg)


@contextlib.contextmanager
def _captured_autoattack_warnings(messages: list[str]) -> Iterator[logging.Logger]:
    logger = logging.getLogger("auto-attack")
    handler = _Capture()
    old_level = logger.level
    if logger.getEffectiveLevel() > logging.WARNING:
        logger.setLevel(logging.WARNING)  # a quiet root logger must not swallow the flags
    logger.addHandler(handler)
    try:
        yield logger
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        messages.extend(m for m in handler.messages if m not in messages)


def _fingerprint(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, seed: int | None) -> str:
    h = hashlib.sha256()
    for t in (x, y, *model.state_dict().values()):
        h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    h.update(repr((eps, seed)).encode())
    return h.hexdigest()


def _load_aa_state(path: Path, fingerprint: str, attacks: list[str], n: int) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # unreadable, not UTF-8 (a binary file), not JSON
        raise IgdmKitError(f"AutoAttack state {str(path)!r} is not readable JSON",
                           "delete it to start the AutoAttack evaluation afresh") from None
    if not isinstance(state, dict) or state.get("format") != AA_STATE_FORMAT:
        raise IgdmKitError(f"{str(path)!r} is not an igdm-kit AutoAttack state file",
                           "pass a different --aa-state path, or delete that file")
    if state.get("fingerprint") != fingerprint or state.get("attacks") != attacks or \
            len(state.get("robust") or []) != n:
        raise IgdmKitError(f"AutoAttack state {str(path)!r} belongs to another model, data, ε or seed",
                           "use a fresh state file for each evaluation, or delete that one")
    return state


def run_autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float = DEFAULT_EPS,
                   batch_size: int = 250, device: torch.device | str | None = None, seed: int | None = 0,
                   state_path: str | Path | None = None, progress: Progress | None = None,
                   warnings: list[str] | None = None) -> dict[str, Any]:
    """AutoAttack (standard, L∞) robust flags; resumable through ``state_path``. Runs the model in eval().

    Returns ``{"robust": BoolTensor[N], "after": {attack: robust accuracy in %}}``; pyautoattack's warnings
    are appended to ``warnings``.
    """
    from pyautoattack import AutoAttack, checks

    device = resolve_device(device, model)
    messages = warnings if warnings is not None else []
    path = Path(state_path) if state_path is not None else None
    n = x.shape[0]

    with _captured_autoattack_warnings(messages) as logger, seeded(seed, device), eval_mode(model):
        aa = AutoAttack(model, eps=eps, norm="Linf", version="standard", seed=seed, device=device)
        order = list(aa.attacks_to_run)
        fingerprint = _fingerprint(model, x, y, eps, seed) if path is not None else ""
        state = (_load_aa_state(path, fingerprint, order, n) if path is not None else None) or {
            "format": AA_STATE_FORMAT, "fingerprint": fingerprint, "attacks": order, "eps": eps,
            "seed": seed, "robust": None, "after": {}, "done": [], "current": None, "start": None,
            "chunks_done": 0,
        }

        def save() -> None:
            if path is not None:
                atomic_write_json(path, state)

        if state["robust"] is None:  # clean pass: only correctly classified points are attacked
            robust = torch.zeros(n, dtype=torch.bool)
            with torch.no_grad():
                for sl in _batches(n, batch_size):
                    robust[sl] = (model(x[sl].to(device)).argmax(1) == y[sl].to(device)).cpu()
            state["robust"] = robust.tolist()
            state["after"]["clean"] = 100.0 * robust.sum().item() / n
            save()
        robust = torch.tensor(state["robust"], dtype=torch.bool)

        for attack in order:
            if attack in state["done"]:
                continue
            if state["current"] != attack:
                state.update(current=attack, start=robust.tolist(), chunks_done=0)
                save()
            # The batches of one attack are the points robust when it started, as pyautoattack forms them.
            idx = torch.nonzero(torch.tensor(state["start"], dtype=torch.bool)).flatten()
            chunks = list(idx.split(batch_size)) if idx.numel() else []  # split() of nothing is [empty]
            for k in range(state["chunks_done"], len(chunks)):
                chunk = chunks[k]
                aa.attacks_to_run = [attack]
                _, y_adv = aa.run_standard_evaluation(x[chunk].to(device), y[chunk].to(device),
                                                      batch_size=len(chunk))
                robust[chunk] = (y_adv.cpu() == y[chunk])
                state.update(robust=robust.tolist(), chunks_done=k + 1)
                save()
                if progress:
                    progress(f"autoattack:{attack}", k + 1, len(chunks))
            state["after"][attack] = 100.0 * robust.sum().item() / n
            state["done"].append(attack)
            state.update(current=None, start=None, chunks_done=0)
            save()

        # pyautoattack flags a Square Attack that beats the gradient attacks; run per attack it cannot see
        # the whole sequence, so the check runs here on the accuracies after each attack (fractions).
        after = {k: state["after"][k] for k in ("clean", *order) if k in state["after"]}  # JSON sorts keys
        checks.check_square_sr({k: v / 100.0 for k, v in after.items()}, logger=logger)
    return {"robust": robust, "after": after}


# -- the entry point -----------------------------------------------------------------------------------
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: Sequence[str] = ATTACKS, *,
             batch_size: int = 256, eps: float = DEFAULT_EPS, device: str | torch.device | None = None,
             seed: int | None = 0, progress: Progress | None = None,
             autoattack_state: str | Path | None = None) -> dict[str, Any]:
    """Accuracy of ``model`` on (x, y) under each named attack, in percent and counts.

    ``x`` are [0, 1] images (N, C, H, W), ``y`` int64 labels. ``device``: ``None`` keeps the model where it
    is, otherwise the model is moved there. Returns::

        {"n": N, "eps": ε, "seed": seed, "device": "cpu",
         "metrics": {"clean": {"accuracy": 97.5, "correct": 351, "total": 360}, ...},
         "seconds": {"clean": 0.01, ...}, "warnings": [...], "autoattack": {attack: accuracy after it}}
    """
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise IgdmKitError(f"unknown attack {unknown[0]!r}", "known: " + ", ".join(ATTACKS))
    if not attacks:
        raise IgdmKitError("no attack selected", "known: " + ", ".join(ATTACKS))
    if batch_size <= 0:
        raise IgdmKitError(f"batch size {batch_size} is not positive", "pass --batch-size 1 or more")
    _check_data(x, y)
    dev = resolve_device(device, model)
    model.to(dev)
    x, y = x.detach(), y.detach().long()

    result: dict[str, Any] = {"n": int(x.shape[0]), "eps": eps, "seed": seed, "device": str(dev),
                              "metrics": {}, "seconds": {}, "warnings": []}
    with eval_mode(model):
        for name in dict.fromkeys(attacks):
            start = time.perf_counter()
            if EVAL_ATTACKS[name].kind == "autoattack":
                aa = run_autoattack(model, x, y, eps=eps, batch_size=batch_size, device=dev, seed=seed,
                                    state_path=autoattack_state, progress=progress,
                                    warnings=result["warnings"])
                correct = int(aa["robust"].sum())
                result["autoattack"] = aa["after"]
            else:
                correct = _run_batched(name, model, x, y, eps=eps, batch_size=batch_size, device=dev,
                                       seed=seed, progress=progress)
            result["metrics"][name] = _accuracy(correct, x.shape[0])
            result["seconds"][name] = time.perf_counter() - start
    return result


def load_eval_data(dataset_name: str, limit: int | None = None, options: dict[str, Any] | None = None,
                   split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
    """The dataset's test split (its first ``limit`` images when given), as [0, 1] images and labels."""
    from .components import create_dataset

    if limit is not None and limit <= 0:
        raise IgdmKitError(f"--limit {limit} is not positive", "pass a positive number of test images")
    x, y = create_dataset(dataset_name, **(options or {})).load(split)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return x, y
