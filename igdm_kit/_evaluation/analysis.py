"""The paper's analyses as functions a notebook can call (Sections 3.1 and 4.2; ``shared/spec/methods.md``).

* ``taylor_remainder``: the Taylor remainder proportion of Section 3.1 / Figure 2,
  ‖f(x+ε) − f(x) − J_f(x)·ε‖₂ / ‖f(x+ε)‖₂ per sample on logits, ε ~ U(−eps, eps) (not clamped to [0, 1]:
  it measures how linear f is around x, not an image), J_f(x)·ε computed exactly as a Jacobian-vector
  product (forward mode, ``torch.func.jvp``).
* ``gradient_alignment``: GD = mean_i ‖g_S,i − g_T,i‖₂ and GC = mean_i cos(g_S,i, g_T,i) of Table 4, with
  g = ∇_x CE(f(x), y) per sample (the sum over the batch is differentiated, so no 1/B factor).
* ``pointwise_distance``: mean_i ‖T(x_i+δ_i) − S(x_i+δ_i)‖₂ on logits of Table 5, for δ ~ U(−ε, ε) or δ
  from the method's own inner attack run for 20 steps against the student.

Every model runs in ``eval()`` and gets its previous mode back. Each function works on a batch tensor and,
with ``batch_size``, over a whole dataset in batches, calling ``progress(task, done, total)`` after each.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from igdm_kit.attacks import LINF_EPS, Progress, batch_slices, eval_mode, model_device
from igdm_kit.errors import IgdmKitError


def _uniform(shape: torch.Size, eps: float, like: torch.Tensor,
             generator: torch.Generator | None) -> torch.Tensor:
    """U(−eps, eps) noise drawn from ``generator`` (on its own device), returned on ``like``'s device."""
    dev = generator.device if generator is not None else like.device
    u = torch.rand(shape, generator=generator, device=dev, dtype=like.dtype)
    return ((2 * u - 1) * eps).to(like.device)


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1)


def _spans(n: int, batch_size: int | None) -> list[slice]:
    return batch_slices(n, batch_size or n) if n else []


# -- Taylor remainder (Section 3.1) -----------------------------------------------------------------------
def taylor_remainder(model: nn.Module, x: torch.Tensor, eps: float = LINF_EPS,
                     generator: torch.Generator | None = None, *, noise: torch.Tensor | None = None,
                     batch_size: int | None = None, progress: Progress | None = None) -> torch.Tensor:
    """Per-sample remainder proportion ‖f(x+ε) − f(x) − J_f(x)·ε‖₂ / ‖f(x+ε)‖₂, ε ~ U(−eps, eps).

    Returns a CPU tensor of shape (N,). ``generator`` makes the noise reproducible (otherwise the global
    RNG is used); ``noise`` (same shape as ``x``) gives the perturbation ε explicitly instead.
    """
    if noise is not None and noise.shape != x.shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)}, x has {tuple(x.shape)}")
    dev = model_device(model)
    out = []
    spans = _spans(x.shape[0], batch_size)
    with eval_mode(model), torch.no_grad():
        for i, sl in enumerate(spans, 1):
            xb = x[sl].to(dev)
            nb = noise[sl].to(dev, xb.dtype) if noise is not None else _uniform(xb.shape, eps, xb, generator)
            # Forward-mode AD gives f(x) and J_f(x)·ε exactly in one pass (no finite difference).
            with warnings.catch_warnings():  # torch's own forward-AD setup warns about torch.jit.script
                warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
                fx, jvp = torch.func.jvp(model, (xb,), (nb,))
            f_noisy = model(xb + nb)
            out.append((_flat_norm(f_noisy - fx - jvp) / _flat_norm(f_noisy)).cpu())
            if progress:
                progress("linearity", i, len(spans))
    return torch.cat(out) if out else torch.empty(0)


# -- gradient alignment (Table 4) --------------------------------------------------------------------------
def input_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """g_i = ∇_{x_i} CE(f(x_i), y_i) for each sample (model assumed in eval mode: samples independent)."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def gradient_alignment(student: nn.Module, teacher: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                       batch_size: int | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """GD = mean_i ‖g_S,i − g_T,i‖₂ and GC = mean_i cos(g_S,i, g_T,i), g = ∇_x CE(f(x), y) per sample.

    Returns ``{"gd": float, "gc": float, "distance": Tensor[N], "cosine": Tensor[N]}`` (CPU tensors).
    A sample whose gradient is exactly zero has cosine 0 (torch's convention).
    """
    dev = model_device(student)
    dist, cos = [], []
    spans = _spans(x.shape[0], batch_size)
    with eval_mode(student, teacher):
        for i, sl in enumerate(spans, 1):
            xb, yb = x[sl].to(dev), y[sl].to(dev)
            gs = input_gradients(student, xb, yb).flatten(1)
            gt = input_gradients(teacher, xb, yb).flatten(1)
            dist.append((gs - gt).norm(dim=1).cpu())
            cos.append(F.cosine_similarity(gs, gt, dim=1).cpu())
            if progress:
                progress("alignment", i, len(spans))
    distance, cosine = torch.cat(dist), torch.cat(cos)
    return {"gd": distance.mean().item(), "gc": cosine.mean().item(), "distance": distance, "cosine": cosine}


# -- point-wise distance (Table 5) -------------------------------------------------------------------------
def method_attack(method: str, student: nn.Module, teacher: nn.Module | None, *, eps: float = LINF_EPS,
                  steps: int = 20, attack: str | None = None):
    """The inner attack of a registered method with its default options (its ``attack_name``, e.g. AdaAD's
    ``adaad``) unless ``attack`` names one, built against ``student`` with ``steps`` steps and radius
    ``eps``, the attack's other options at their defaults."""
    from igdm_kit.factories import create_attack, create_method

    name = attack if attack is not None else create_method(method).attack_name
    return create_attack(name, student, teacher=teacher, options={"eps": eps, "steps": steps})


def adversarial_inputs(attack, x: torch.Tensor, y: torch.Tensor, teacher: nn.Module | None) -> torch.Tensor:
    """x_adv from a training attack, giving it T(x) when it asks for the teacher's clean logits (RSLAD)."""
    kwargs = {}
    if attack.needs_teacher_clean_logits:
        if teacher is None:
            raise IgdmKitError("this method's attack needs the teacher", "pass --teacher")
        with torch.no_grad():
            kwargs["teacher_logits"] = teacher(x)
    return attack(x, y, **kwargs).detach()


def pointwise_distance(student: nn.Module, teacher: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                       delta: Literal["uniform", "adversarial"] = "uniform", method: str = "pgd-at",
                       attack: str | None = None, eps: float = LINF_EPS, steps: int = 20,
                       generator: torch.Generator | None = None, batch_size: int | None = None,
                       progress: Progress | None = None) -> dict[str, Any]:
    """Mean_i ‖T(x_i+δ_i) − S(x_i+δ_i)‖₂ on logits.

    ``delta="uniform"``: δ ~ U(−eps, eps) (not clamped, as the spec writes it). ``"adversarial"``: δ from
    ``method``'s own inner attack (its default attack, or ``attack``) run for ``steps`` steps against the
    student. Returns ``{"mean": float, "distance": Tensor[N]}``.
    """
    if delta not in ("uniform", "adversarial"):
        raise IgdmKitError(f"unknown delta {delta!r}", "use 'uniform' or 'adversarial'")
    dev = model_device(student)
    atk = method_attack(method, student, teacher, eps=eps, steps=steps, attack=attack) \
        if delta == "adversarial" else None
    out = []
    spans = _spans(x.shape[0], batch_size)
    with eval_mode(student, teacher):
        for i, sl in enumerate(spans, 1):
            xb, yb = x[sl].to(dev), y[sl].to(dev)
            if atk is None:
                xd = xb + _uniform(xb.shape, eps, xb, generator)
            else:
                xd = adversarial_inputs(atk, xb, yb, teacher)
            with torch.no_grad():
                out.append(_flat_norm(teacher(xd) - student(xd)).cpu())
            if progress:
                progress(f"pointwise:{delta}", i, len(spans))
    distance = torch.cat(out)
    return {"mean": distance.mean().item(), "distance": distance}


# -- summaries ----------------------------------------------------------------------------------------------
def summarize(values: torch.Tensor | Sequence[float],
              quantiles: Sequence[float] = (0.05, 0.25, 0.5, 0.75, 0.95)) -> dict[str, float]:
    """Mean, std (unbiased; 0 for a single value), min, max, median and quantiles of per-sample values."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    if v.numel() == 0:
        raise IgdmKitError("nothing to summarize", "the data is empty; check the dataset and --limit")
    out = {"n": int(v.numel()), "mean": v.mean().item(),
           "std": v.std().item() if v.numel() > 1 else 0.0,
           "min": v.min().item(), "max": v.max().item(), "median": v.quantile(0.5).item()}
    for q in quantiles:
        out[f"q{round(q * 100):02d}"] = v.quantile(q).item()
    return out
