"""Pass accounting: count forward and backward passes of the student and the teacher.

``PassCounter.attach(model, "student")`` installs a forward hook. Every forward counts one, with the number
of images it saw; every time gradients flow back into that forward's output (a ``backward()`` or an
``autograd.grad`` that reaches it) counts one backward. Used by the tests (the default path runs the
fewest passes) and by ``benchmarks/step_speed.py``.
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager

import torch
from torch import nn


class PassCounter:
    def __init__(self) -> None:
        self.forwards: Counter[str] = Counter()
        self.backwards: Counter[str] = Counter()
        self.images: Counter[str] = Counter()
        self._handles: list = []

    def attach(self, model: nn.Module, role: str) -> PassCounter:
        def hook(module, inputs, output):
            self.forwards[role] += 1
            self.images[role] += int(inputs[0].shape[0]) if inputs and torch.is_tensor(inputs[0]) else 0
            if torch.is_tensor(output) and output.requires_grad:
                output.register_hook(lambda grad: self.backwards.update([role]))

        self._handles.append(model.register_forward_hook(hook))
        return self

    def reset(self) -> None:
        self.forwards.clear()
        self.backwards.clear()
        self.images.clear()

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def snapshot(self) -> dict[str, dict[str, int]]:
        roles = set(self.forwards) | set(self.backwards)
        return {r: {"forwards": self.forwards[r], "backwards": self.backwards[r], "images": self.images[r]}
                for r in sorted(roles)}


@contextmanager
def count_passes(**models: nn.Module):
    """``with count_passes(student=s, teacher=t) as c: ...`` then ``c.snapshot()``."""
    counter = PassCounter()
    for role, model in models.items():
        if model is not None:
            counter.attach(model, role)
    try:
        yield counter
    finally:
        counter.detach()
