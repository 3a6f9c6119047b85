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
from .eval_attacks import DEFAULT_ATTACKS, WORST, EvalSpec, check_eps, resolve
from .interfaces import Threat
from .io import atomic_write_json
from .stats import wilson

DEFAULT_EPS = 8 / 255
STEP_SIZE = 2 / 255
ATTACKS = DEFAULT_ATTACKS
AA_STATE_FORMAT = "igdm-kit/autoattack-state/1"
FLAGS_FORMAT = "igdm-kit/eval-flags/1"

#: ``progress(task, done, total)``: called after each batch with the cumulative count of batches.
Progress = Callable[[str, int, int], None]


# -- the margin PGD (CW-∞) -------------------------------------------------------------------------
class MarginPGD(Attack):
    """PGD ascent on the margin max_{j≠y} z_j − z_y in the L∞ or L2 ball of radius ``eps``, uniform random
    start in the ball (torchattacks has no margin-loss PGD; its ``CW`` is the L2 optimization attack).

    Each step: z ← Proj(z + α·d) with d = sign(∇_z margin) at L∞ and ∇/‖∇‖₂ at L2; Proj = onto the ball
    around x, then clamp to [0, 1].
    """

    def __init__(self, model: nn.Module, eps: float = DEFAULT_EPS, alpha: float = STEP_SIZE, steps: int = 30,
                 random_start: bool = True, norm: str = "Linf") -> None:
        super().__init__("MarginPGD", model)
        if norm not in ("Linf", "L2"):
            raise ValueError(f"MarginPGD supports Linf and L2, not {norm!r}")
        self.eps, self.alpha, self.steps, self.random_start, self.norm = eps, alpha, steps, random_start, norm

    def _project(self, adv: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        delta = adv - images
        if self.norm == "Linf":
            delta = torch.clamp(delta, -self.eps, self.eps)
        else:
            norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (delta.ndim - 1))
            delta = delta * torch.clamp(self.eps / norms, max=1.0)
        return torch.clamp(images + delta, 0.0, 1.0).detach()

    def _start(self, images: torch.Tensor) -> torch.Tensor:
        if not self.random_start:
            return images.clone()
        if self.norm == "Linf":
            return self._project(images + torch.empty_like(images).uniform_(-self.eps, self.eps), images)
        # uniform in the L2 ball, as torchattacks' PGDL2: a Gaussian direction, radius ε·U(0, 1)
        d = torch.randn_like(images)
        n = d.flatten(1).norm(dim=1).view(-1, *[1] * (d.ndim - 1))
        r = torch.empty(images.shape[0], device=images.device).uniform_(0, 1).view_as(n)
        return self._project(images + d / n * r * self.eps, images)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        images = images.clone().detach()
        labels = labels.clone().detach()
        adv = self._start(images)
        for _ in range(self.steps):
            adv.requires_grad_(True)
            loss = margin(self.get_logits(adv), labels).sum()
            grad = torch.autograd.grad(loss, adv)[0]
            if self.norm == "Linf":
                step = grad.sign()
            else:
                step = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (grad.ndim - 1))
            adv = self._project(adv.detach() + self.alpha * step, images)
        return adv


def CWLinf(model: nn.Module, eps: float = DEFAULT_EPS, alpha: float = STEP_SIZE, steps: int = 30,
           random_start: bool = True) -> MarginPGD:
    """The paper's CW-∞: margin PGD in the L∞ ball."""
    return MarginPGD(model, eps=eps, alpha=alpha, steps=steps, random_start=random_start, norm="Linf")


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
        batches = _batches(x.shape[0], self.batch_size)
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


def _fingerprint(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: Any, seed: int | None) -> str:
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
                   norm: str = "Linf", version: str = "standard", attacks: list[str] | None = None,
                   batch_size: int = 250, device: torch.device | str | None = None, seed: int | None = 0,
                   state_path: str | Path | None = None, progress: Progress | None = None,
                   warnings: list[str] | None = None) -> dict[str, Any]:
    """AutoAttack robust flags (``version`` standard/plus/rand, or custom ``attacks``; ``norm`` Linf, L2 or
    L1); resumable through ``state_path``. Runs the model in eval().

    Returns ``{"robust": BoolTensor[N], "after": {attack: robust accuracy in %}}``; pyautoattack's warnings
    are appended to ``warnings``.
    """
    from pyautoattack import AutoAttack, checks

    device = resolve_device(device, model)
    messages = warnings if warnings is not None else []
    path = Path(state_path) if state_path is not None else None
    n = x.shape[0]

    with _captured_autoattack_warnings(messages) as logger, seeded(seed, device), eval_mode(model):
        aa = AutoAttack(model, eps=eps, norm=norm, version=version, seed=seed, device=device, attacks=attacks)
        order = list(aa.attacks_to_run)
        fingerprint = _fingerprint(model, x, y, (eps, norm, version), seed) if path is not None else ""
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
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: Sequence[Any] = ATTACKS, *,
             batch_size: int = 256, eps: float = DEFAULT_EPS, threat: str = "Linf",
             device: str | torch.device | None = None, seed: int | None = 0, progress: Progress | None = None,
             autoattack_state: str | Path | None = None, where: str = "attacks",
             keep_flags: bool = False) -> dict[str, Any]:
    """Accuracy of ``model`` on (x, y) under each attack, and the worst case per image over all of them.

    ``attacks``: names or tables (``{"name": "pgd", "steps": 50}``) of registered evaluation attacks, or
    resolved ``EvalSpec``s; ``threat`` the norm of the ball of radius ``eps``. ``x`` are [0, 1] images
    (N, C, H, W), ``y`` int64 labels. ``device``: ``None`` keeps the model where it is, otherwise the model is
    moved there. Every attack starts from ``torch.manual_seed(seed)`` on a forked RNG. Returns::

        {"n": N, "eps": ε, "threat": "Linf", "seed": seed, "device": "cpu",
         "metrics": {"clean": {"accuracy": 97.5, "correct": 351, "total": 360, "ci95": [95.2, 98.7],
                               "label": "Clean"}, ...},
         "worst": {... the same, over every attack run ...},
         "seconds": {...}, "warnings": [...], "details": {"autoattack": {attack: accuracy after it}}}

    With ``keep_flags`` it also holds ``"flags": {"clean": BoolTensor[N], ..., "worst": ...}``, the
    per-image robust flags (``save_flags`` writes them; ``report_json`` drops them again).
    """
    if batch_size <= 0:
        raise IgdmKitError(f"batch size {batch_size} is not positive", "pass --batch-size 1 or more")
    _check_data(x, y)
    check_eps(eps, threat, "eps" if where == "attacks" else where.replace("attacks", "eps"),
              dims=int(x[0].numel()))
    specs = _specs(attacks, threat, where)
    dev = resolve_device(device, model)
    model.to(dev)
    x, y = x.detach(), y.detach().long()
    n = int(x.shape[0])
    result: dict[str, Any] = {"n": n, "eps": eps, "threat": threat, "seed": seed, "device": str(dev),
                              "metrics": {}, "flags": {}, "seconds": {}, "warnings": [], "details": {}}
    with eval_mode(model):
        for spec in specs:
            start = time.perf_counter()
            flags = _run_one(spec, model, x, y, Threat(threat, eps), dev, batch_size, seed, progress,
                             _state_for(autoattack_state, spec.key), result)
            result["flags"][spec.key] = flags
            result["metrics"][spec.key] = {**accuracy(int(flags.sum()), n), "label": spec.label}
            result["seconds"][spec.key] = time.perf_counter() - start
    worst = torch.stack(list(result["flags"].values())).all(dim=0)
    result["worst"] = {**accuracy(int(worst.sum()), n), "label": "worst case", "over": list(result["flags"])}
    result["flags"][WORST] = worst
    return result if keep_flags else report_json(result)


def _specs(attacks: Sequence[Any], threat: str, where: str) -> list[EvalSpec]:
    if attacks and all(isinstance(a, EvalSpec) for a in attacks):
        return list(attacks)
    items = list(dict.fromkeys(attacks)) if all(isinstance(a, str) for a in attacks) else list(attacks)
    return resolve(items, threat, where)


def _run_one(spec: EvalSpec, model, x, y, threat: Threat, dev, batch_size: int, seed: int | None,
             progress: Progress | None, state_path: Path | None, result: dict[str, Any]) -> torch.Tensor:
    """One attack's robust flags, from a seeded, forked RNG (independent of the attacks before it)."""
    from .components import create_eval_attack

    details: dict[str, Any] = {}
    ctx = Context(threat, batch_size=batch_size, device=dev, seed=seed, task=spec.key, progress=progress,
                  state_path=state_path, warnings=result["warnings"], details=details)
    with seeded(seed, dev):
        flags = create_eval_attack(spec.name, spec.options).robust(model, x, y, ctx)
    flags = torch.as_tensor(flags, dtype=torch.bool).cpu().reshape(-1)
    if flags.shape[0] != x.shape[0]:
        raise IgdmKitError(f"evaluation attack {spec.name!r} returned {flags.shape[0]} flags for "
                           f"{x.shape[0]} images", "an EvalAttack returns one bool per image")
    if details:
        result["details"][spec.key] = details
    return flags


def _state_for(base: str | Path | None, key: str) -> Path | None:
    """Each resumable attack's state file: ``base`` for ``autoattack``, a sibling named after its key else."""
    if base is None:
        return None
    base = Path(base)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
    return base if key == "autoattack" else base.with_name(f"{base.name}.{safe}")


def accuracy(correct: int, total: int) -> dict[str, Any]:
    """Accuracy in percent with its count and its 95% Wilson interval."""
    return {"accuracy": 100.0 * correct / total, "correct": int(correct), "total": int(total),
            "ci95": list(wilson(correct, total))}


def report_json(result: dict[str, Any]) -> dict[str, Any]:
    """The evaluation's result without its per-image flags (what results.json and --json hold)."""
    return {k: v for k, v in result.items() if k != "flags"}


def images_digest(x: torch.Tensor, y: torch.Tensor) -> str:
    """sha256 of the evaluation images and labels: two flag files pair only on the same images."""
    h = hashlib.sha256()
    for t in (x, y):
        h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_flags(path: str | Path, result: dict[str, Any], x: torch.Tensor, y: torch.Tensor,
               meta: dict[str, Any] | None = None) -> Path:
    """The per-image robust flags of an evaluation, one uint8 tensor per attack key (and ``worst``), in a
    safetensors file with the images' digest, so two models judged on the same images can be paired."""
    from safetensors.torch import save_file

    from .io import atomic_write

    tensors = {k: v.to(torch.uint8).contiguous() for k, v in result["flags"].items()}
    info = {"format": FLAGS_FORMAT, "n": result["n"], "eps": result["eps"], "threat": result["threat"],
            "seed": result["seed"], "labels": {k: m["label"] for k, m in result["metrics"].items()},
            "images_sha256": images_digest(x, y), **(meta or {})}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"igdm_kit_flags": json.dumps(info)}))


def load_flags(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(flags by attack key, metadata) of a file ``save_flags`` wrote; a one-line error for anything else."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {})["igdm_kit_flags"])
        flags = {k: v.bool() for k, v in load_file(str(path)).items()}
    except Exception as exc:  # noqa: BLE001 - missing, truncated, foreign: one line
        raise IgdmKitError(f"{str(path)!r} holds no igdm-kit evaluation flags ({type(exc).__name__})",
                           "pass a run folder evaluated by this igdm-kit, or an eval --save-flags file") from None
    return flags, meta


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
