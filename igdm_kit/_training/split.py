"""The validation split: ``[data] val_size`` images (a count, or a fraction) taken out of the training set,
stratified by class and seeded by ``[data] val_seed`` (scikit-learn's ``train_test_split``), so every run of
one recipe holds out the same images whatever its training seed.
"""

from __future__ import annotations

import torch

from igdm_kit.errors import DataError


def split_validation(y: torch.Tensor, size: int | float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices kept for training, indices held out), each sorted: ``size`` images (a count, or a fraction of
    the set) drawn stratified by label with ``seed``."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    n = int(y.shape[0])
    idx = np.arange(n)
    try:
        keep, held = train_test_split(idx, test_size=size, stratify=y.cpu().numpy(), random_state=seed,
                                      shuffle=True)
    except ValueError as exc:
        raise DataError(f"data.val_size = {size:g}: {n} training images cannot be split by class ({exc})",
                        "choose a val_size that leaves every class images on both sides") from None
    return torch.from_numpy(np.sort(keep)), torch.from_numpy(np.sort(held))
