"""Batches and train-time augmentation on tensors (seeded, on whatever device the batch lives).

Augmenting whole batches with torch ops (instead of per-image PIL transforms in workers) keeps the data
path deterministic under a seed and lets it run on the GPU next to the model.
"""

from __future__ import annotations

import torch

from igdm_kit.interfaces import DatasetInfo


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad by ``padding`` and crop back to the original size at a random offset per image."""
    if padding <= 0:
        return x
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    off = torch.randint(0, 2 * padding + 1, (2, n), generator=generator, device="cpu").to(x.device)
    rows = off[0][:, None] + torch.arange(h, device=x.device)  # (n, h)
    cols = off[1][:, None] + torch.arange(w, device=x.device)  # (n, w)
    idx = torch.arange(n, device=x.device)[:, None, None]
    # padded[idx, :, rows, cols] puts the channel axis last; move it back.
    return padded.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def random_hflip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    flip = (torch.rand(x.shape[0], generator=generator, device="cpu") < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def augment(x: torch.Tensor, info: DatasetInfo, generator: torch.Generator | None = None) -> torch.Tensor:
    x = random_crop(x, info.crop_padding, generator)
    return random_hflip(x, generator) if info.hflip else x


def epoch_order(n: int, seed: int, epoch: int) -> tuple[torch.Tensor, torch.Generator]:
    """The permutation of the training set for one epoch and the generator for its augmentation.

    Derived from (seed, epoch) alone, so a resumed run sees exactly the data an uninterrupted one would.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g), g
