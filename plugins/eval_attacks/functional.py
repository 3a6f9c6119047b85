"""What ReColor and StAdv share (as perceptual-advex's ``MisterEdAttack``, Laidlaw & Feizi, 2019): Adam on
the parameters p of a transformation x' = T_p(x), maximizing the margin max_{j≠y} z_j − z_y minus λ times
the smoothness of p − p₀, each iterate projected into the threat's bound; an image counts as fooled at the
first iterate the model misclassifies (every iterate lies in the threat set), else the last iterate is kept.
Gradients by ``torch.autograd.grad`` (no parameter's ``.grad`` changes)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample max_{j≠y} z_j − z_y (CW's f6 with κ = ∞)."""
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return others.max(dim=1).values - z_y


def smoothness(field: torch.Tensor) -> torch.Tensor:
    """Σ over grid neighbours of ‖Δ‖₂ (edges replicated), per sample; ``field`` is (N, *grid, C)
    (recoloradv's ``norms.smoothness``, StAdv's L_flow of Xiao et al., 2018, Eq. 4)."""
    total = torch.zeros(field.shape[0], dtype=field.dtype, device=field.device)
    for dim in range(1, field.ndim - 1):
        n = field.shape[dim]
        idx = torch.arange(n, device=field.device)
        for shifted in (field.index_select(dim, (idx + 1).clamp(max=n - 1)),
                        field.index_select(dim, (idx - 1).clamp(min=0))):
            total = total + ((shifted - field).pow(2).sum(-1) + 1e-10).sqrt().flatten(1).sum(1)
    return total


def optimise(model, x, y, p0, render, project, *, lam: float, lr: float, steps: int):
    """(x_adv, p): the adversarial images and the parameters that made them (``render(p) = x_adv``)."""
    p = project(p0.clone()).detach().requires_grad_(True)
    opt = torch.optim.Adam([p], lr=lr)
    best, best_p = None, None
    fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for _ in range(steps):
        out = render(p)
        logits = model(out)
        newly = (logits.argmax(1) != y) & ~fooled
        if best is None:
            best, best_p = out.detach().clone(), p.detach().clone()
        best[newly], best_p[newly] = out.detach()[newly], p.detach()[newly]
        fooled |= newly
        objective = margin(logits, y) - lam * smoothness(p - p0)
        (grad,) = torch.autograd.grad(-objective.sum(), p)
        p.grad = grad
        opt.step()
        with torch.no_grad():
            p.copy_(project(p))
    with torch.no_grad():
        out = render(p)
        keep = ~fooled
        if best is None:
            best, best_p = out.clone(), p.detach().clone()
        best[keep], best_p[keep] = out[keep], p.detach()[keep]
    return best, best_p
