"""The math of the toolkit as plain functions, usable without the training loop.

Drop IGDM into your own loop::

    from igdm_kit.losses import igdm_loss, ramp_weight
    d = x_adv - x
    loss = base_loss + ramp_weight(alpha, epoch, epochs) * igdm_loss(
        student(x + d), student(x - d), teacher(x + d).detach(), teacher(x - d).detach())

Every KL is ``batchmean``: summed over classes, averaged over the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kl_div(target_logits: torch.Tensor, logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(p(target) ‖ p(logits)), batchmean; with temperature τ: τ²·KL(target/τ ‖ logits/τ)."""
    t = temperature
    log_q = F.log_softmax(logits / t, dim=1)
    log_p = F.log_softmax(target_logits / t, dim=1)
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True) * (t * t)


def ramp_weight(alpha: float, epoch: int, epochs: int, ramp_epochs: int | None = None) -> float:
    """T(α) = α · e / E (e the 1-based epoch; ``ramp_epochs`` replaces E, as the reference's fixed 200).

    Not capped: with ``ramp_epochs`` < E the weight keeps growing past α, as in the reference code.
    """
    denom = ramp_epochs if ramp_epochs is not None else epochs
    if denom <= 0:
        raise ValueError("epochs must be positive")
    return float(alpha) * epoch / denom
