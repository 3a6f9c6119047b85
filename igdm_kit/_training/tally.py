"""One epoch's running numbers kept on the device, so a training step never waits for the device.

The loss terms' sums, the correct count and the first non-finite loss term or gradient (which step, which
term or parameter, its value) are device tensors; the host reads them at its sync points only — every
``SYNC_EVERY`` steps, at the end of the epoch, and before a stop saves anything — and raises the
non-finite error there, naming the step where it happened, before anything is saved.

The sums are float64 and added in the order the host added Python floats before (``v·B`` per term, the
terms' total for ``loss``), so the epoch's numbers are the same to the last bit.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from igdm_kit._training.events import Partial
from igdm_kit.errors import TrainingError

#: steps between two reads of the device-side numbers (a non-finite step stops the run within this many)
SYNC_EVERY = 50


class LazyTerms(Mapping[str, float]):
    """The last step's loss terms as ``FitState.step_terms``: each read as a float when a callback asks for
    it (that read waits for the device; a step that nobody reads does not)."""

    def __init__(self, terms: dict[str, torch.Tensor] | None = None) -> None:
        self._terms = terms or {}

    def __getitem__(self, key: str) -> float:
        return float(self._terms[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self._terms)

    def __len__(self) -> int:
        return len(self._terms)


class Tally:
    """The running sums of one epoch on one rank, and the first non-finite value, on ``device``."""

    def __init__(self, device: torch.device, partial: Partial) -> None:
        self.device, self.epoch, self.seen = device, partial.epoch, partial.seen
        f64 = torch.float64
        self.sums = {k: torch.tensor(v, dtype=f64, device=device) for k, v in partial.sums.items()}
        self.correct = torch.tensor(partial.correct, dtype=torch.int64, device=device)
        self._none = torch.tensor(-1, dtype=torch.int64, device=device)
        self._term_step: dict[str, torch.Tensor] = {}
        self._term_value: dict[str, torch.Tensor] = {}
        self._grad_step = self._none
        self._grad_flags: torch.Tensor | None = None
        self._grad_names: list[str] = []

    def add_step(self, step_i: int, terms: dict[str, torch.Tensor], correct: torch.Tensor | None,
                 batch_size: int) -> None:
        """One step's terms (detached device scalars), its correct count (or None) and batch size."""
        total = None
        for k, v in terms.items():
            v = v.detach().to(self.device, torch.float64)
            self.sums[k] = self.sums.get(k, 0.0) + v * batch_size
            total = v if total is None else total + v
            self._record_term(step_i, k, v)
        if total is not None:
            self.sums["loss"] = self.sums.get("loss", 0.0) + total * batch_size
        if correct is not None:
            self.correct = self.correct + correct
        self.seen += batch_size

    def _record_term(self, step_i: int, key: str, v: torch.Tensor) -> None:
        first = (~torch.isfinite(v)) & (self._term_step.get(key, self._none) < 0)
        self._term_step[key] = torch.where(first, step_i, self._term_step.get(key, self._none))
        self._term_value[key] = torch.where(first, v, self._term_value.get(key, v))

    def add_gradients(self, step_i: int, named: list[tuple[str, torch.Tensor | None]]) -> None:
        """Whether each parameter's gradient is finite this step (None: no gradient, fine)."""
        one = torch.ones((), dtype=torch.bool, device=self.device)
        flags = torch.stack([one if g is None else g.isfinite().all().to(self.device) for _, g in named])
        first = (~flags.all()) & (self._grad_step < 0)
        self._grad_step = torch.where(first, step_i, self._grad_step)
        self._grad_flags = flags if self._grad_flags is None else torch.where(first, flags, self._grad_flags)
        self._grad_names = [n for n, _ in named]

    def check(self, saved_in: Path) -> None:
        """Read the non-finite records (one wait for the device) and raise for the earliest: a loss term
        before a gradient of the same step, as the step computes them."""
        steps = {k: int(s) for k, s in self._term_step.items()}
        bad = [(s, 0, k) for k, s in steps.items() if s >= 0]
        grad_step = int(self._grad_step)
        if grad_step >= 0:
            bad.append((grad_step, 1, ""))
        if not bad:
            return
        step_i, kind, key = min(bad, key=lambda t: (t[0], t[1]))  # the terms' order breaks a tie (stable)
        last = saved_in / "last.safetensors"
        if kind == 0:
            raise TrainingError(f"loss term {key!r} is {float(self._term_value[key])} at epoch {self.epoch}, "
                                f"step {step_i + 1}",
                                f"the last good checkpoint is {last}; lower train.lr or the module's alpha")
        flags = self._grad_flags.tolist() if self._grad_flags is not None else []
        name = next(n for n, ok in zip(self._grad_names, flags, strict=True) if not ok)
        raise TrainingError(f"the gradient of {name!r} is not finite at epoch {self.epoch}, step {step_i + 1}",
                            f"the last good checkpoint is {last}; lower train.lr or the module's alpha")

    def partial(self, step: int) -> Partial:
        """The host's ``Partial`` of the epoch so far (one wait for the device)."""
        return Partial(self.epoch, step, {k: float(v) for k, v in self.sums.items()}, int(self.correct),
                       self.seen)
