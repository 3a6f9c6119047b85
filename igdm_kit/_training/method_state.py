"""The method's state and hooks in the training loop (R4, R5): a host callback that tells the method when an
epoch starts and ends and after every optimizer step, sums the method's per-sample statistics per class over
the epoch (all ranks), and keeps both the method's state and the epoch's running sums in the training state.

It runs before the callbacks that fill and save the epoch (``ORDER``), so the state saved at an epoch's end
already holds what the method did at that end (and no sums), and a run stopped mid-epoch resumes with the
sums of the steps it had done; ``on_epoch_start`` is not repeated for an epoch resumed in its middle. Only the
training loop's real optimizer steps reach it: a replay of the loss (a gradient check, the benchmark's
``compute_loss``) changes no state.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import torch

from igdm_kit._training.events import Subscriber
from igdm_kit.interfaces import EpochStats, ScheduleEvent
from igdm_kit.interfaces.callbacks import Order

#: before the finiteness check's neighbours and everything that fills or saves the epoch
ORDER = Order.FINITE + 50
STATE_PREFIX = "m."


class MethodHooks(Subscriber):
    state_key = "method"
    order = ORDER

    @classmethod
    def build(cls, options, ctx) -> MethodHooks | None:
        return cls(ctx.parts) if ctx.parts.method.stateful else None  # a stateless method: nothing to do

    def __init__(self, parts) -> None:
        self.parts = parts
        self.method = parts.method
        self.num_classes = parts.info.num_classes
        self.num_samples = len(parts.train)
        self.sums: dict[str, torch.Tensor] = {}
        self.counts = torch.zeros(self.num_classes, dtype=torch.float64)
        self.lr: float | None = None  # the lr the current epoch trains at

    # -- events -------------------------------------------------------------------------------------------
    def on_fit_start(self, trainer, start_epoch: int, first_step: int) -> None:
        self.lr = self._current_lr()

    def on_epoch_start(self, trainer, epoch: int) -> None:
        self.lr = self._current_lr()
        self._reset()
        self.method.on_epoch_start(epoch)

    def on_step_end(self, trainer, epoch: int, step: int) -> None:
        ctx = trainer.last_step
        y = ctx.y.detach().cpu()
        for name, values in self.method.step_statistics(ctx).items():
            per_class = self.sums.setdefault(name, torch.zeros(self.num_classes, dtype=torch.float64))
            per_class.index_add_(0, y, values.detach().to("cpu", torch.float64))
        self.counts.index_add_(0, y, torch.ones(y.shape[0], dtype=torch.float64))
        self.method.on_step_end(epoch, step, self._rank_mean(trainer.step_terms))

    def on_epoch_end(self, trainer, epoch: int, row: dict[str, Any]) -> None:
        d, device = self.parts.dist, self.parts.device
        names = sorted(self.sums)
        flat = torch.cat([self.sums[n] for n in names] + [self.counts]).tolist()
        reduced = torch.tensor(d.sum(flat, device) if d.enabled else flat, dtype=torch.float64)
        parts = reduced.split(self.num_classes)
        stats = EpochStats(sums=dict(zip(names, parts[:-1], strict=True)), counts=parts[-1],
                           num_samples=self.num_samples, num_classes=self.num_classes)
        next_lr = self._current_lr()
        self.method.on_epoch_end(epoch, stats, ScheduleEvent(lr=self.lr, next_lr=next_lr))
        self._reset()  # the state saved at this epoch's end holds no sums of it
        self._trace(epoch)

    def _trace(self, epoch: int) -> None:
        """Tests: every rank's method state at each epoch's end, one JSON line a rank (``IGDM_KIT_TRACE_STATE``),
        to show that state driven by rank-averaged values stays the same on every rank."""
        path = os.environ.get("IGDM_KIT_TRACE_STATE")
        if path:
            state = {k: v.tolist() if isinstance(v, torch.Tensor) else v for k, v in self.method.state_dict().items()}
            with open(f"{path}.rank{self.parts.dist.rank}", "a") as fh:
                fh.write(json.dumps({"epoch": epoch, "state": state}) + "\n")

    # -- state ----------------------------------------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, Any], dict[str, Any]]:
        values, tensors = {}, {}
        for k, v in self.method.state_dict().items():
            if isinstance(v, torch.Tensor):
                tensors[STATE_PREFIX + k] = v.detach().cpu()
            else:
                values[k] = v
        tensors.update({f"sum.{k}": v for k, v in self.sums.items()})
        tensors["counts"] = self.counts
        return {"method": values}, tensors

    def load_state_dict(self, values, tensors) -> None:
        state = dict(values.get("method", {}))
        state.update({k[len(STATE_PREFIX):]: v for k, v in tensors.items() if k.startswith(STATE_PREFIX)})
        self.method.load_state_dict(state)
        self.sums = {k[4:]: v.to(torch.float64) for k, v in tensors.items() if k.startswith("sum.")}
        self.counts = tensors.get("counts", self.counts).to(torch.float64)

    # -- helpers --------------------------------------------------------------------------------------------
    def _reset(self) -> None:
        self.sums = {}
        self.counts = torch.zeros(self.num_classes, dtype=torch.float64)

    def _current_lr(self) -> float:
        return float(self.parts.optimizer.param_groups[0]["lr"])

    def _rank_mean(self, terms: Mapping[str, float]) -> Mapping[str, float]:
        d = self.parts.dist
        if not d.enabled or not terms:
            return terms  # read lazily: a method that ignores them makes no step wait for the device
        names = sorted(terms)
        total = d.sum([terms[n] for n in names], self.parts.device)
        return {n: v / d.world for n, v in zip(names, total, strict=True)}
