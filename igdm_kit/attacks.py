"""Attack building blocks for evaluation-attack plugins (public): the margin PGD behind CW-∞, the context
managers every attack runs under, and the resumable AutoAttack driver.

AutoAttack is resumable. pyautoattack 0.2.0's own state file cannot be resumed (it stores the attack set as
a Python ``repr`` string, so a restore always fails its consistency check, and a restored run would hit an
unbound ``y_adv``), so igdm-kit keeps its own state file: AutoAttack is driven one (attack, batch) at a time
over the points still robust — the same batches, seeds and order as one ``run_standard_evaluation`` call —
and the robust flags are saved atomically after every batch (``igdm_kit._storage.aa_state``: a fingerprint of
model, data, ε, norm, version and seed, the batch size the batches were formed with, a checksum; a state
that is not this evaluation's, or malformed, or edited, is refused). A rerun with another batch size keeps
the state's: pyautoattack re-seeds every batch, so the batches decide the random starts, and a resumed
evaluation gives the uninterrupted one's flags.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchattacks.attack import Attack

from igdm_kit._runtime.devices import model_device, resolve_device
from igdm_kit._storage import aa_state
from igdm_kit.interfaces.evaluation import DEFAULT_EPS

__all__ = ["AA_STATE_FORMAT", "CWLinf", "LINF_EPS", "MarginPGD", "STEP_SIZE", "batch_slices", "eval_mode", "margin",
           "model_device", "resolve_device", "run_autoattack", "seeded"]

#: the paper's L∞ radius and step size for the white-box evaluation attacks
LINF_EPS = DEFAULT_EPS["Linf"]
STEP_SIZE = 2 / 255
AA_STATE_FORMAT = aa_state.FORMAT

#: ``progress(task, done, total)``: called after each batch with the cumulative count of batches.
Progress = Callable[[str, int, int], None]


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample max_{j≠y} z_j − z_y (positive iff the prediction is wrong)."""
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return others.max(dim=1).values - z_y


# -- the margin PGD (CW-∞) -------------------------------------------------------------------------
class MarginPGD(Attack):
    """PGD ascent on the margin max_{j≠y} z_j − z_y in the L∞ or L2 ball of radius ``eps``, uniform random
    start in the ball (torchattacks has no margin-loss PGD; its ``CW`` is the L2 optimization attack).

    Each step: z ← Proj(z + α·d) with d = sign(∇_z margin) at L∞ and ∇/‖∇‖₂ at L2; Proj = onto the ball
    around x, then clamp to [0, 1].
    """

    def __init__(self, model: nn.Module, eps: float = LINF_EPS, alpha: float = STEP_SIZE, steps: int = 30,
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


def CWLinf(model: nn.Module, eps: float = LINF_EPS, alpha: float = STEP_SIZE, steps: int = 30,
           random_start: bool = True) -> MarginPGD:
    """The paper's CW-∞: margin PGD in the L∞ ball."""
    return MarginPGD(model, eps=eps, alpha=alpha, steps=steps, random_start=random_start, norm="Linf")


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


def batch_slices(n: int, batch_size: int) -> list[slice]:
    """Consecutive slices of at most ``batch_size`` over ``n`` images."""
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


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


def run_autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float = LINF_EPS,
                   norm: str = "Linf", version: str = "standard", attacks: list[str] | None = None,
                   batch_size: int = 250, device: torch.device | str | None = None, seed: int | None = 0,
                   state_path: str | Path | None = None, progress: Progress | None = None,
                   warnings: list[str] | None = None) -> dict[str, Any]:
    """AutoAttack robust flags (``version`` standard/plus/rand, or custom ``attacks``; ``norm`` Linf, L2 or
    L1); resumable through ``state_path`` (resumed in the state's own batches, whatever ``batch_size`` says,
    with a warning). Runs the model in eval().

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
        print_ = aa_state.fingerprint(model, x, y, (eps, norm, version), seed) if path is not None else ""
        state = (aa_state.load(path, print_, order, n) if path is not None else None) or \
            aa_state.new_state(print_, order, batch_size, eps, seed)
        if state["batch_size"] != batch_size:
            messages.append(f"resumed from {path} with its batch size {state['batch_size']}, not {batch_size}: "
                            "the batches decide AutoAttack's random starts, so the evaluation ends as it began")
        if state["robust"] is None:  # clean pass: only correctly classified points are attacked
            clean = _clean_flags(model, x, y, batch_size, device)
            state.update(clean=clean.tolist(), robust=clean.tolist(), after={"clean": 100.0 * clean.sum().item() / n})
            aa_state.save(path, state)
        robust = torch.tensor(state["robust"], dtype=torch.bool)
        for attack in order:
            if attack not in state["done"]:
                _run_attack(aa, attack, x, y, robust, state, path, device, progress)

        # pyautoattack flags a Square Attack that beats the gradient attacks; run per attack it cannot see
        # the whole sequence, so the check runs here on the accuracies after each attack (fractions).
        after = {k: state["after"][k] for k in ("clean", *order) if k in state["after"]}  # JSON sorts keys
        checks.check_square_sr({k: v / 100.0 for k, v in after.items()}, logger=logger)
    return {"robust": robust, "after": after}


def _clean_flags(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                 device: torch.device) -> torch.Tensor:
    robust = torch.zeros(x.shape[0], dtype=torch.bool)
    with torch.no_grad():
        for sl in batch_slices(x.shape[0], batch_size):
            robust[sl] = (model(x[sl].to(device)).argmax(1) == y[sl].to(device)).cpu()
    return robust


def _run_attack(aa: Any, attack: str, x: torch.Tensor, y: torch.Tensor, robust: torch.Tensor,
                state: dict[str, Any], path: Path | None, device: torch.device, progress: Progress | None) -> None:
    """One attack of the run over the images standing when it started, in the state's batches (each a
    package call, as one ``run_standard_evaluation`` forms them), the state saved after every batch."""
    if state["current"] != attack:
        state.update(current=attack, start=robust.tolist(), chunks_done=0)
        aa_state.save(path, state)
    chunks = aa_state.chunks(state["start"], state["batch_size"])
    for k in range(state["chunks_done"], len(chunks)):
        chunk = chunks[k]
        aa.attacks_to_run = [attack]
        _, y_adv = aa.run_standard_evaluation(x[chunk].to(device), y[chunk].to(device), batch_size=len(chunk))
        robust[chunk] = (y_adv.cpu() == y[chunk])
        state.update(robust=robust.tolist(), chunks_done=k + 1)
        aa_state.save(path, state)
        if progress:
            progress(f"autoattack:{attack}", k + 1, len(chunks))
    state["after"][attack] = 100.0 * robust.sum().item() / x.shape[0]
    state["done"].append(attack)
    state.update(current=None, start=None, chunks_done=0)
    aa_state.save(path, state)
