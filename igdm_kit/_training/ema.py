"""``[train.ema]``: an exponential moving average of the student's weights (``torch.optim.swa_utils``).

After every optimizer step from epoch ``start`` on, ``w_ema ← decay·w_ema + (1 − decay)·w`` (the first
update copies the weights; ``get_ema_multi_avg_fn``); with ``buffers`` the BatchNorm statistics are averaged
the same way, else copied from the student. The average lives on every rank (the ranks' students are equal),
is validated like the student (``val_ema_...``), kept in the training state (a resumed run continues the same
average) and saved to ``ema.safetensors`` when training ends.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from igdm_kit._training.events import Subscriber
from igdm_kit.interfaces.callbacks import Order


class EMA(Subscriber):
    """The average of ``student``; ``fresh()`` builds an untrained copy of its architecture to hold it."""

    state_key = "ema"
    order = Order.AVERAGE

    @classmethod
    def build(cls, options, ctx) -> EMA | None:
        return ctx.ema  # built by the engine (the final evaluation judges it too), None without [train.ema]

    def __init__(self, student: nn.Module, fresh: Callable[[], nn.Module], settings: Any) -> None:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        self.student, self.settings = student, settings
        with torch.random.fork_rng(devices=[]):  # the copy's initial weights must not move the run's RNG
            holder = fresh()
        device = next(student.parameters()).device
        self.averaged = AveragedModel(holder.to(device), device=device, use_buffers=settings.buffers,
                                      multi_avg_fn=get_ema_multi_avg_fn(settings.decay))
        self.averaged.eval()
        for p in self.averaged.parameters():
            p.requires_grad_(False)

    @property
    def model(self) -> nn.Module | None:
        """The averaged model, or None before its first update."""
        return self.averaged.module if int(self.averaged.n_averaged) > 0 else None

    @torch.no_grad()
    def on_step_end(self, trainer, epoch, step) -> None:
        if epoch < self.settings.start:
            return
        self.averaged.update_parameters(self.student)
        if not self.settings.buffers:
            for mine, theirs in zip(self.averaged.module.buffers(), self.student.buffers(), strict=True):
                mine.copy_(theirs)

    def save(self, path: Path, meta: dict[str, Any]) -> Path:
        """The average as a self-describing checkpoint (``ema.safetensors``)."""
        from igdm_kit._storage.checkpoint import save_model

        return save_model(path, self.averaged.module,
                          {**meta, "ema": {"decay": self.settings.decay, "start": self.settings.start,
                                           "steps_averaged": int(self.averaged.n_averaged)}})

    def state_dict(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return {"n_averaged": int(self.averaged.n_averaged)}, dict(self.averaged.state_dict())

    def load_state_dict(self, values, tensors) -> None:
        device = self.averaged.n_averaged.device
        self.averaged.load_state_dict({k: v.to(device) for k, v in tensors.items()})
