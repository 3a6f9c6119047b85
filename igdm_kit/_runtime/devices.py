"""Which device a command runs on: one rule for ``train.device``, ``--device`` and a model's own device."""

from __future__ import annotations

import torch
from torch import nn

from igdm_kit.errors import IgdmKitError


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter (or buffer); CPU for a model with neither."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def resolve_device(device: str | torch.device | None, model: nn.Module | None = None, *,
                   where: str = "--device") -> torch.device:
    """``None``: the model's device (CPU without a model); ``"auto"``: CUDA when available, else CPU; else the
    named device, refused in one line (naming ``where``, e.g. ``train.device``) when it is no device or CUDA is
    missing."""
    if device is None:
        return model_device(model) if model is not None else torch.device("cpu")
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    recipe = not where.startswith("--")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise IgdmKitError(f"{where} {str(device)!r} is not a device",
                           'use "auto", "cpu", "cuda" or "cuda:N"' if recipe else "use cpu, cuda, cuda:N or auto"
                           ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise IgdmKitError(f"{where} is {str(device)!r} but CUDA is not available",
                           'use device = "cpu"' if recipe else f"use {where} cpu")
    return dev
