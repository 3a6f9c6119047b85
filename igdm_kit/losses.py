"""The math of the toolkit as plain functions, usable without the training loop.

Drop IGDM into your own loop::

    from igdm_kit.losses import igdm_loss, ramp_weight
    d = x_adv - x
    loss = base_loss + ramp_weight(alpha, epoch, epochs) * igdm_loss(
        student(x + d), student(x - d), teacher(x + d).detach(), teacher(x - d).detach())

The other gradient-matching losses the paper compares IGDM with (Lee, Cho & Kim, "Indirect Gradient
Matching for Adversarial Robust Distillation", ICLR 2025, Appendix A.4–A.5) are here too: ``direct_loss``
on input gradients from ``input_gradient`` (Eq. 11), ``trades_like_loss`` (Eq. 12) and ``trades_reg_loss``
(Eq. 13).

Every KL is ``batchmean`` (summed over classes, averaged over the batch) unless a caller asks for
``reduction="mean"``, ``nn.KLDivLoss()``'s element-wise mean (batchmean / C), which some references use.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from igdm_kit.errors import IgdmKitError

KL_REDUCTIONS = ("batchmean", "mean", "none")


def kl_div(target_logits: torch.Tensor, logits: torch.Tensor, temperature: float = 1.0,
           reduction: str = "batchmean") -> torch.Tensor:
    """KL(p(target) ‖ p(logits)); with temperature τ: τ²·KL(target/τ ‖ logits/τ).

    ``reduction = "batchmean"``: summed over classes, averaged over the batch (the spec's KL);
    ``"mean"``: averaged over batch and classes, i.e. batchmean / C (``nn.KLDivLoss()``'s default, used by
    the original ARD and AdaAD's CIFAR-10 code); ``"none"``: per sample, summed over classes ([B]), for
    methods that weight or mask samples before reducing the batch themselves.
    """
    if reduction not in KL_REDUCTIONS:
        raise IgdmKitError(f"kl_div: unknown reduction {reduction!r}",
                           "use one of " + ", ".join(repr(r) for r in KL_REDUCTIONS))
    t = temperature
    log_q = F.log_softmax(logits / t, dim=1)
    log_p = F.log_softmax(target_logits / t, dim=1)
    if reduction == "none":
        return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(dim=1) * (t * t)
    if reduction == "mean":  # written out: torch's own "mean" is deprecated (to become batchmean)
        return F.kl_div(log_q, log_p, reduction="sum", log_target=True) * (t * t) / log_q.numel()
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True) * (t * t)


def swap_classes(logits: torch.Tensor, a: torch.Tensor, b: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """A copy of ``logits`` (B × C) with, in each row i where ``where[i]``, the entries of classes ``a[i]`` and
    ``b[i]`` exchanged (their probabilities too). A teacher-output transform: the input is never modified, so a
    gradient module that reuses the cached teacher tensors sees them as they were."""
    out = logits.detach().clone()
    rows = torch.nonzero(where.bool(), as_tuple=True)[0]
    va, vb = out[rows, a[rows]].clone(), out[rows, b[rows]].clone()
    out[rows, a[rows]], out[rows, b[rows]] = vb, va
    return out


def ramp_weight(alpha: float, epoch: int, epochs: int, ramp_epochs: int | None = None) -> float:
    """T(α) = α · e / E (e the 1-based epoch; ``ramp_epochs`` replaces E, as the reference's fixed 200).

    Not capped: with ``ramp_epochs`` < E the weight keeps growing past α, as in the reference code.
    """
    denom = ramp_epochs if ramp_epochs is not None else epochs
    if denom <= 0:
        raise ValueError("epochs must be positive")
    return float(alpha) * epoch / denom


IGDM_DISTANCES = ("kl", "l1", "l2")
DIRECT_DISTANCES = ("l2", "l1", "cosine")


def _check_distance(fn: str, distance: str, allowed: tuple[str, ...]) -> None:
    if distance not in allowed:
        raise IgdmKitError(f"{fn}: unknown distance {distance!r}",
                           "use one of " + ", ".join(repr(d) for d in allowed))


def _check_same_shape(fn: str, **tensors: torch.Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        # Broadcasting would silently compare the wrong entries (e.g. (B, C) against (B, 1)).
        raise IgdmKitError(f"{fn}: inputs have different shapes {shapes}",
                           "pass logits (or gradients) of the same batch and classes")


def igdm_loss(s_plus: torch.Tensor, s_minus: torch.Tensor, t_plus: torch.Tensor, t_minus: torch.Tensor,
              distance: str = "kl") -> torch.Tensor:
    """IGDM (Eq. 8): D(Δ_S, Δ_T) with Δ_S = S(x⁺) − S(x⁻) and Δ_T = T(x⁺) − T(x⁻), on logits.

    ``kl``: KL(Δ_T ‖ Δ_S), batchmean over softmaxes of the differences; ``l1``: mean |Δ_S − Δ_T|;
    ``l2``: mean (Δ_S − Δ_T)². The teacher side is a constant target: ``t_plus`` and ``t_minus`` are
    detached, so no gradient ever reaches them (or the teacher's parameters).
    """
    _check_distance("igdm_loss", distance, IGDM_DISTANCES)
    _check_same_shape("igdm_loss", s_plus=s_plus, s_minus=s_minus, t_plus=t_plus, t_minus=t_minus)
    delta_s = s_plus - s_minus
    delta_t = (t_plus - t_minus).detach()
    if distance == "kl":
        return kl_div(delta_t, delta_s)
    if distance == "l1":
        return F.l1_loss(delta_s, delta_t)
    return F.mse_loss(delta_s, delta_t)


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   create_graph: bool = False) -> torch.Tensor:
    """g = ∇_x CE(f(x), y) per sample (the input gradient of Eq. 11 and of the GD/GC analysis).

    The CE is *summed* over the batch, so row i of the result is the gradient of sample i's own loss
    (exactly so when samples do not interact, i.e. no train-mode BatchNorm). The model runs in whatever
    mode it is in. Only ∇_x is computed (``torch.autograd.grad``): no parameter's ``.grad`` is touched.
    With ``create_graph=True`` the result stays differentiable w.r.t. the model's parameters (double
    backprop, for training on it); otherwise it is a constant.
    """
    with torch.enable_grad():  # also usable from evaluation code running under no_grad
        x_in = x.detach().requires_grad_(True)
        loss = F.cross_entropy(model(x_in), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_in, create_graph=create_graph)
    return grad if create_graph else grad.detach()


def direct_loss(g_s: torch.Tensor, g_t: torch.Tensor, distance: str = "l2") -> torch.Tensor:
    """Direct gradient matching (Eq. 11): D(g_S, g_T) on input gradients.

    ``l2``: mean squared error over all entries (the default); ``l1``: mean absolute error; ``cosine``:
    mean over samples of 1 − cos(g_S,i, g_T,i), each gradient flattened. ``g_t`` is the teacher's and is
    treated as a constant (detached).
    """
    _check_distance("direct_loss", distance, DIRECT_DISTANCES)
    _check_same_shape("direct_loss", g_s=g_s, g_t=g_t)
    g_t = g_t.detach()
    if distance == "l2":
        return F.mse_loss(g_s, g_t)
    if distance == "l1":
        return F.l1_loss(g_s, g_t)
    cos = F.cosine_similarity(g_s.flatten(1), g_t.flatten(1), dim=1)
    return (1.0 - cos).mean()


def trades_like_loss(s_plus: torch.Tensor, s_minus: torch.Tensor) -> torch.Tensor:
    """IGDM_TRADES-like (Eq. 12): KL(S(x⁻) ‖ S(x⁺)), IGDM with the teacher's difference replaced by 0.

    Nothing is detached: both sides are the student's and both carry gradient.
    """
    _check_same_shape("trades_like_loss", s_plus=s_plus, s_minus=s_minus)
    return kl_div(s_minus, s_plus)


def trades_reg_loss(s_clean: torch.Tensor, s_adv: torch.Tensor) -> torch.Tensor:
    """TRADES_reg (Eq. 13): KL(S(x) ‖ S(x + δ)), TRADES' regularizer.

    The target S(x) is not detached, as in TRADES' reference code (and the ``trades`` method here).
    """
    _check_same_shape("trades_reg_loss", s_clean=s_clean, s_adv=s_adv)
    return kl_div(s_clean, s_adv)
