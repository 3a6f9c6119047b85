"""What a run costs, in each epoch's row of ``metrics.jsonl`` (the cost columns of the paper's Table 6, which
``igdm-kit report`` shows beside the accuracies; the row's ``seconds`` is the trainer's own):

* ``passes_student`` / ``passes_teacher``: forward + backward passes of one training step (``passes``'
  hooks, on the first step this process runs, then removed; an ``int``, so the log line leaves it out);
* ``peak_memory_mib``: on CUDA, the most memory allocated during the epoch's steps (MiB); not measured on
  other devices, where torch keeps no such counter.
"""

from __future__ import annotations

from typing import Any

from igdm_kit._training.events import RunContext, Subscriber
from igdm_kit.interfaces.callbacks import Order


class Cost(Subscriber):
    """Passes per step and peak accelerator memory in every epoch's row."""

    order = Order.CLEAN_ACCURACY - 10  # before clean accuracy evaluates (its memory is not training's)

    @classmethod
    def build(cls, options, ctx: RunContext) -> Cost:
        return cls()

    def __init__(self) -> None:
        self.counter: Any = None
        self.passes: dict[str, int] = {}

    def on_fit_start(self, trainer, start_epoch, first_step) -> None:
        from igdm_kit._training.passes import count_passes

        p = trainer.parts
        self._cm = count_passes(student=p.student, teacher=p.teacher)
        self.counter = self._cm.__enter__()
        self._reset_memory(trainer)

    def on_step_end(self, trainer, epoch, step) -> None:
        if self.counter is None:
            return
        snap = self.counter.snapshot()
        self._cm.__exit__(None, None, None)  # one step counted: the hooks go
        self.counter = None
        for role in ("student", "teacher"):
            if trainer.parts.teacher is not None or role == "student":
                c = snap.get(role, {})
                self.passes[f"passes_{role}"] = int(c.get("forwards", 0)) + int(c.get("backwards", 0))

    def on_epoch_metrics(self, trainer, epoch, row) -> None:
        row.update(self.passes)
        memory = _cuda_peak(trainer.parts.device)
        if memory is not None:
            row["peak_memory_mib"] = memory
        self._reset_memory(trainer)

    def close(self, ok: bool) -> None:
        if self.counter is not None:
            self._cm.__exit__(None, None, None)
            self.counter = None

    @staticmethod
    def _reset_memory(trainer) -> None:
        import torch

        device = torch.device(trainer.parts.device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)


def _cuda_peak(device) -> int | None:
    """The peak of allocated CUDA memory since the last reset, in MiB; None off CUDA."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return None
    return int(round(torch.cuda.max_memory_allocated(device) / 2**20))
