"""``[train.swa]``: stochastic weight averaging (Izmailov et al., 2018), as PeerAiD and SAAD train with it.

At the end of every epoch from ``start`` on, the student's parameters join an equal-weight average
(``θ_swa ← θ_swa + (θ − θ_swa)/(n + 1)``; ``torch.optim.swa_utils.AveragedModel``, buffers not averaged), and
the average's BatchNorm statistics are recomputed by one pass over the augmented training split in train mode
with a cumulative average (``torch.optim.swa_utils.update_bn``); once more when training ends. The pass draws
its augmentation from a generator of its own, seeded from (seed, epoch), and leaves the run's RNG untouched, so
a resumed run ends with the same average. Under torchrun each rank passes over its shard and the statistics
are averaged across ranks. The average is validated (``val_swa_...``), kept in the training state, saved to
``swa.safetensors`` and judged by ``[eval] checkpoints = ["swa"]``. Unlike ``[train.ema]`` (every step, a
decay, buffers averaged) it averages epochs equally.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from igdm_kit._training.batches import augment
from igdm_kit._training.events import Subscriber
from igdm_kit.interfaces.callbacks import Order
from igdm_kit.nn import to_float_images

#: the BN pass's augmentation generator is not any epoch's (``epoch_order`` seeds ``seed * 1_000_003 + epoch``)
_SALT = 7_919 * 1_000_003


class SWA(Subscriber):
    """The equal average of ``parts.student``'s weights at epoch ends; ``fresh()`` builds an untrained copy of
    its architecture to hold it."""

    state_key = "swa"
    order = Order.AVERAGE

    @classmethod
    def build(cls, options, ctx) -> SWA | None:
        return ctx.swa  # built by the engine (the final evaluation judges it too), None without [train.swa]

    def __init__(self, parts: Any, fresh: Callable[[], nn.Module], settings: Any) -> None:
        from torch.optim.swa_utils import AveragedModel

        self.parts, self.settings = parts, settings
        with torch.random.fork_rng(devices=[]):  # the copy's initial weights must not move the run's RNG
            holder = fresh()
        self.averaged = AveragedModel(holder.to(parts.device), device=parts.device, use_buffers=False)
        self.averaged.eval()
        for p in self.averaged.parameters():
            p.requires_grad_(False)

    @property
    def model(self) -> nn.Module | None:
        """The averaged model, or None before its first epoch."""
        return self.averaged.module if self.epochs_averaged > 0 else None

    @property
    def epochs_averaged(self) -> int:
        return int(self.averaged.n_averaged)

    def on_epoch_metrics(self, trainer, epoch: int, row: dict[str, Any]) -> None:
        if epoch < self.settings.start:
            return
        with torch.no_grad():
            self.averaged.update_parameters(self.parts.student)
        self.recalibrate(epoch)

    def finish(self, epochs: int) -> None:
        """After the last epoch: the statistics recomputed once more (the official code's last ``update_bn``)."""
        if self.epochs_averaged > 0:
            self.recalibrate(epochs + 1)

    def recalibrate(self, epoch: int) -> None:
        """The average's BatchNorm statistics from one pass over the (augmented) training split."""
        from torch.optim.swa_utils import update_bn

        p = self.parts
        with torch.random.fork_rng(devices=[p.device] if p.device.type == "cuda" else []):
            update_bn(self._batches(epoch), self.averaged)
        self.averaged.eval()
        p.dist.mean_buffers(self.averaged.module)

    def _batches(self, epoch: int) -> Iterator[torch.Tensor]:
        p, tr = self.parts, self.parts.recipe.model.train
        order = p.dist.shard(torch.arange(len(p.train)))
        gen = torch.Generator().manual_seed(tr.seed * 1_000_003 + epoch + _SALT)
        steps = -(-order.shape[0] // tr.batch_size)
        for _, _, xb, _ in p.train.batches(order, tr.batch_size, 0, steps, seed=tr.seed, epoch=epoch):
            yield to_float_images(augment(xb, p.info, gen).to(p.device))

    def save(self, path: Path, meta: dict[str, Any]) -> Path:
        """The average as a self-describing checkpoint (``swa.safetensors``)."""
        from igdm_kit._storage.checkpoint import save_model

        return save_model(path, self.averaged.module,
                          {**meta, "swa": {"start": self.settings.start, "epochs_averaged": self.epochs_averaged}})

    def state_dict(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return {"n_averaged": self.epochs_averaged}, dict(self.averaged.state_dict())

    def load_state_dict(self, values, tensors) -> None:
        device = self.averaged.n_averaged.device
        self.averaged.load_state_dict({k: v.to(device) for k, v in tensors.items()})
