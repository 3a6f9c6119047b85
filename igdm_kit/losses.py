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

Per-sample losses (contract R3 of the recent methods): ``reduction="none"`` gives a vector [B] whose mean
over the batch is the default scalar (``kl_div``: each sample's KL summed over classes, or ``classes="mean"``
for ÷ C; the module losses likewise), so a method can weight each sample before ``reduce_batch``.
Teacher-output transforms (R7) return new tensors and never modify the logits they are given:
``swap_classes``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from igdm_kit.errors import IgdmKitError
from igdm_kit.interfaces import SampleTerm

KL_REDUCTIONS = ("batchmean", "mean", "none")
BATCH_REDUCTIONS = ("mean", "sum", "nominal")


def kl_div(target_logits: torch.Tensor, logits: torch.Tensor, temperature: float = 1.0,
           reduction: str = "batchmean") -> torch.Tensor:
    """KL(p(target) ‖ p(logits)); with temperature τ: τ²·KL(target/τ ‖ logits/τ).

    ``reduction = "batchmean"``: summed over classes, averaged over the batch (the spec's KL);
    ``"mean"``: averaged over batch and classes, i.e. batchmean / C (``nn.KLDivLoss()``'s default, used by
    the original ARD and AdaAD's CIFAR-10 code); ``"none"``: the per-sample vector [B], each summed over
    classes (its mean is the batchmean value).
    """
    if reduction not in KL_REDUCTIONS:
        raise IgdmKitError(f"kl_div: unknown reduction {reduction!r}",
                           "use one of " + ", ".join(repr(r) for r in KL_REDUCTIONS))
    t = temperature
    if reduction == "none":
        return kl_per_sample(target_logits, logits, temperature=t)
    log_q = F.log_softmax(logits / t, dim=1)
    log_p = F.log_softmax(target_logits / t, dim=1)
    if reduction == "mean":  # written out: torch's own "mean" is deprecated (to become batchmean)
        return F.kl_div(log_q, log_p, reduction="sum", log_target=True) * (t * t) / log_q.numel()
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True) * (t * t)


def kl_per_sample(target_logits: torch.Tensor, logits: torch.Tensor, temperature: float = 1.0,
                  classes: str = "sum") -> torch.Tensor:
    """Per-sample KL_τ(target_i ‖ logits_i) = τ²·Σ_c p_c (log p_c − log q_c), a vector [B].

    ``classes = "sum"`` (the spec's per-sample KL; its batch mean is batchmean) or ``"mean"`` (÷ C:
    ``nn.KLDivLoss()`` applied to one sample, as MTARD, ABSLD and Fair-ARD's code).
    """
    if classes not in ("sum", "mean"):
        raise IgdmKitError(f"kl_per_sample: unknown class reduction {classes!r}", "use 'sum' or 'mean'")
    t = temperature
    log_q = F.log_softmax(logits / t, dim=1)
    log_p = F.log_softmax(target_logits / t, dim=1)
    per = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(dim=1) * (t * t)
    return per / log_q.shape[1] if classes == "mean" else per


def reduce_batch(values: torch.Tensor, weights: torch.Tensor | None = None, *, reduction: str = "mean",
                 nominal_batch: int | None = None) -> torch.Tensor:
    """A per-sample term [B] (optionally × per-sample weights [B]) reduced over the batch.

    ``"mean"``: Σ_i w_i v_i / B (batchmean when v_i is summed over classes); ``"sum"``: Σ_i w_i v_i;
    ``"nominal"``: Σ_i w_i v_i / ``nominal_batch`` (a fixed batch size, as reference code that divides by
    its ``args.batch_size`` also on a last, partial batch).
    """
    if reduction not in BATCH_REDUCTIONS:
        raise IgdmKitError(f"reduce_batch: unknown reduction {reduction!r}",
                           "use one of " + ", ".join(repr(r) for r in BATCH_REDUCTIONS))
    if values.dim() != 1 or (weights is not None and tuple(weights.shape) != tuple(values.shape)):
        raise IgdmKitError(f"reduce_batch: expected per-sample vectors [B], got values "
                           f"{tuple(values.shape)} and weights {None if weights is None else tuple(weights.shape)}",
                           "pass one value (and one weight) per sample")
    total = (values * weights).sum() if weights is not None else values.sum()
    if reduction == "sum":
        return total
    if reduction == "nominal":
        if nominal_batch is None or nominal_batch <= 0:
            raise IgdmKitError("reduce_batch: reduction 'nominal' needs a positive nominal_batch",
                               "pass nominal_batch=<the reference's batch size>")
        return total / nominal_batch
    return total / values.shape[0]


def reduce_term(term: SampleTerm) -> torch.Tensor:
    """A method's ``SampleTerm`` as the scalar the engine adds to the loss (``reduce_batch``)."""
    return reduce_batch(term.values, term.weights, reduction=term.reduction, nominal_batch=term.nominal_batch)


def swap_classes(logits: torch.Tensor, first: torch.Tensor, second: torch.Tensor,
                 where: torch.Tensor | None = None) -> torch.Tensor:
    """A copy of ``logits`` [B, C] with columns ``first[i]`` and ``second[i]`` exchanged in each row i
    (only where ``where[i]``): a teacher-output transform (DGAD's label correction). The input is untouched.
    """
    rows = torch.arange(logits.shape[0], device=logits.device)
    a, b = logits[rows, first], logits[rows, second]
    if where is not None:
        a, b = torch.where(where, b, a), torch.where(where, a, b)
    else:
        a, b = b, a
    out = logits.clone()
    out[rows, first] = a
    out[rows, second] = b
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


def _per_sample_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the first: [B, ...] → [B] (its batch mean is the overall mean)."""
    return t.flatten(1).mean(dim=1)


def _check_reduction(fn: str, reduction: str) -> None:
    if reduction not in ("mean", "none"):
        raise IgdmKitError(f"{fn}: unknown reduction {reduction!r}",
                           "use 'mean' (a scalar) or 'none' (one value per sample)")


def igdm_loss(s_plus: torch.Tensor, s_minus: torch.Tensor, t_plus: torch.Tensor, t_minus: torch.Tensor,
              distance: str = "kl", reduction: str = "mean") -> torch.Tensor:
    """IGDM (Eq. 8): D(Δ_S, Δ_T) with Δ_S = S(x⁺) − S(x⁻) and Δ_T = T(x⁺) − T(x⁻), on logits.

    ``kl``: KL(Δ_T ‖ Δ_S), batchmean over softmaxes of the differences; ``l1``: mean |Δ_S − Δ_T|;
    ``l2``: mean (Δ_S − Δ_T)². The teacher side is a constant target: ``t_plus`` and ``t_minus`` are
    detached, so no gradient ever reaches them (or the teacher's parameters). ``reduction = "none"``: one
    value per sample (KL summed over classes, l1/l2 averaged over them), whose batch mean is the scalar.
    """
    _check_distance("igdm_loss", distance, IGDM_DISTANCES)
    _check_reduction("igdm_loss", reduction)
    _check_same_shape("igdm_loss", s_plus=s_plus, s_minus=s_minus, t_plus=t_plus, t_minus=t_minus)
    delta_s = s_plus - s_minus
    delta_t = (t_plus - t_minus).detach()
    if reduction == "none":
        if distance == "kl":
            return kl_per_sample(delta_t, delta_s)
        diff = delta_s - delta_t
        return _per_sample_mean(diff.abs() if distance == "l1" else diff * diff)
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


def direct_loss(g_s: torch.Tensor, g_t: torch.Tensor, distance: str = "l2",
                reduction: str = "mean") -> torch.Tensor:
    """Direct gradient matching (Eq. 11): D(g_S, g_T) on input gradients.

    ``l2``: mean squared error over all entries (the default); ``l1``: mean absolute error; ``cosine``:
    mean over samples of 1 − cos(g_S,i, g_T,i), each gradient flattened. ``g_t`` is the teacher's and is
    treated as a constant (detached). ``reduction = "none"``: one value per sample, whose mean is the scalar.
    """
    _check_distance("direct_loss", distance, DIRECT_DISTANCES)
    _check_reduction("direct_loss", reduction)
    _check_same_shape("direct_loss", g_s=g_s, g_t=g_t)
    g_t = g_t.detach()
    if reduction == "none":
        if distance == "cosine":
            return 1.0 - F.cosine_similarity(g_s.flatten(1), g_t.flatten(1), dim=1)
        diff = g_s - g_t
        return _per_sample_mean(diff.abs() if distance == "l1" else diff * diff)
    if distance == "l2":
        return F.mse_loss(g_s, g_t)
    if distance == "l1":
        return F.l1_loss(g_s, g_t)
    cos = F.cosine_similarity(g_s.flatten(1), g_t.flatten(1), dim=1)
    return (1.0 - cos).mean()


def trades_like_loss(s_plus: torch.Tensor, s_minus: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """IGDM_TRADES-like (Eq. 12): KL(S(x⁻) ‖ S(x⁺)), IGDM with the teacher's difference replaced by 0.

    Nothing is detached: both sides are the student's and both carry gradient.
    """
    _check_reduction("trades_like_loss", reduction)
    _check_same_shape("trades_like_loss", s_plus=s_plus, s_minus=s_minus)
    return kl_div(s_minus, s_plus, reduction="none" if reduction == "none" else "batchmean")


def trades_reg_loss(s_clean: torch.Tensor, s_adv: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """TRADES_reg (Eq. 13): KL(S(x) ‖ S(x + δ)), TRADES' regularizer.

    The target S(x) is not detached, as in TRADES' reference code (and the ``trades`` method here).
    """
    _check_reduction("trades_reg_loss", reduction)
    _check_same_shape("trades_reg_loss", s_clean=s_clean, s_adv=s_adv)
    return kl_div(s_clean, s_adv, reduction="none" if reduction == "none" else "batchmean")
