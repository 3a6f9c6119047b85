"""The epoch loop: attack, loss, optimizer step — everything else is a subscriber (``events``).

Each epoch draws its data order and augmentation from (seed, epoch) and its attack starts from a seed of
(seed, epoch, rank), so a resumed run sees exactly what an uninterrupted one would. A non-finite loss term
or gradient stops the run naming the epoch, step and term (the weights are checked before each checkpoint by
the ``FiniteWeights`` subscriber). A stop request (SIGINT/SIGTERM) finishes the current step; the subscribers
save, and ``Interrupted`` carries the resume command — after the last epoch too, before the final evaluation.
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from igdm_kit._runtime.signals import StopFlag, stopped
from igdm_kit._training.batches import augment, epoch_order
from igdm_kit._training.events import Partial, Subscriber
from igdm_kit._training.loss import compute_loss, module_weight
from igdm_kit._training.parts import Parts
from igdm_kit.errors import Interrupted, TrainingError


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Attack random starts of one epoch on one rank: reproducible, and different across ranks."""
    return (seed * 1_000_003 + epoch * 7_919 + rank * 104_729) % (2**63)


class Trainer:
    """Trains ``parts.student`` for the recipe's epochs, telling ``subscribers`` (the run's callbacks) what
    happens; to a callback it is an ``interfaces.FitState``."""

    def __init__(self, parts: Parts, subscribers: list[Subscriber], *, saved_in: Path, resume_hint: str,
                 metrics: list[dict[str, Any]] | None = None, stop: StopFlag | None = None) -> None:
        self.parts = parts
        self.subscribers = subscribers
        self.saved_in, self.resume_hint = saved_in, resume_hint
        self.metrics: list[dict[str, Any]] = list(metrics or [])
        #: the loss terms of the last step (subscribers read it in ``on_step_end``)
        self.step_terms: dict[str, float] = {}
        self.last_step = None  # the last step's ``Step`` (``StepContext``)
        self.epochs = parts.recipe.model.train.epochs
        n = parts.train_data[0].shape[0]
        self.steps_per_epoch = math.ceil(parts.dist.shard(torch.arange(n)).shape[0]
                                         / parts.recipe.model.train.batch_size)
        self._stop = stop if stop is not None else StopFlag()
        self._trace = os.environ.get("IGDM_KIT_TRACE_DATA")  # tests: which samples each rank saw

    # -- interfaces.FitState: what a callback sees ----------------------------------------------------------
    @property
    def student(self) -> torch.nn.Module:
        return self.parts.student

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.parts.optimizer

    def _emit(self, event: Callable[[Subscriber], None]) -> None:
        for s in self.subscribers:
            event(s)

    def fit(self, start_epoch: int = 1, partial: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Epochs ``start_epoch``..E (``partial``: a saved mid-epoch state of ``start_epoch``)."""
        first = partial["step"] if partial else 0
        self._emit(lambda s: s.on_fit_start(self, start_epoch, first))
        with self._stop:
            for epoch in range(start_epoch, self.epochs + 1):
                row = self._epoch(epoch, partial if partial and partial["epoch"] == epoch else None)
                partial = None
                self.metrics.append(row)
                self._emit(lambda s: s.on_epoch_end(self, epoch, row))
                if self._stop_requested():  # the epoch's end already saved everything
                    if epoch < self.epochs:
                        self._interrupted(epoch + 1, 0)
                    raise stopped(self._stop.signum, f"stopped after the last epoch, before the final evaluation "
                                  f"(training is saved in {self.saved_in})", f"resume with: {self.resume_hint}")
        return self.metrics

    def _stop_requested(self) -> bool:
        """A stop request on any rank stops every rank (the ranks agree at each check)."""
        d, stop = self.parts.dist, self._stop
        if d.enabled and d.sum([float(stop.signum is not None)], self.parts.device)[0] > 0:
            stop.signum = stop.signum or signal.SIGTERM
        return stop.signum is not None

    def _epoch(self, epoch: int, partial: dict[str, Any] | None) -> dict[str, Any]:
        p, tr = self.parts, self.parts.recipe.model.train
        t0 = time.perf_counter()
        lr = p.optimizer.param_groups[0]["lr"]
        p.student.train()
        order, gen = epoch_order(p.train_data[0].shape[0], tr.seed, epoch)
        order = p.dist.shard(order)
        acc = Partial(epoch, 0, {}, 0, 0)
        if partial is not None:
            acc = Partial(epoch, partial["step"], dict(partial["sums"]), partial["correct"], partial["seen"])
            gen.set_state(partial["gen_state"])
        else:
            torch.manual_seed(epoch_seed(tr.seed, epoch, p.dist.rank))
            self._emit(lambda s: s.on_epoch_start(self, epoch))  # not on a mid-epoch resume
        for step_i in range(acc.step, self.steps_per_epoch):
            idx = order[step_i * tr.batch_size:(step_i + 1) * tr.batch_size]
            self._step(epoch, step_i, idx, gen, acc)
            self._emit(lambda s: s.on_step_end(self, epoch, step_i))
            self._check_stop(epoch, step_i, gen, acc)
        if p.scheduler_interval == "epoch":
            p.scheduler.step()
        return self._row(epoch, lr, acc, t0)

    def _step(self, epoch: int, step_i: int, idx: torch.Tensor, gen: torch.Generator, acc: Partial) -> None:
        p, tr = self.parts, self.parts.recipe.model.train
        if self._trace:
            with open(f"{self._trace}.rank{p.dist.rank}", "a") as fh:
                fh.write(" ".join(map(str, idx.tolist())) + "\n")
        xtr, ytr = p.train_data
        x = augment(xtr[idx], p.info, gen).to(p.device, non_blocking=True)
        y = ytr[idx].to(p.device, non_blocking=True)
        res = compute_loss(p.trained, p.teacher, p.method, p.module, p.attack, x, y, epoch=epoch,
                           epochs=self.epochs, cache=not tr.reference_passes)
        values = {k: float(v.detach()) for k, v in res.terms.items()}
        for k, v in values.items():
            if not math.isfinite(v):
                raise TrainingError(
                    f"loss term {k!r} is {v} at epoch {epoch}, step {step_i + 1}",
                    f"the last good checkpoint is {self.saved_in / 'last.safetensors'}; lower train.lr or "
                    "the module's alpha")
        p.optimizer.zero_grad(set_to_none=True)
        p.acc.backward_and_step(res.loss, p.optimizer, before_step=lambda: self._check_gradients(epoch, step_i))
        if p.scheduler_interval == "step":  # one-cycle, cyclic: the schedule moves with every step
            p.scheduler.step()
        self.step_terms = values
        self.last_step = res.step  # the method's state hooks read its per-sample statistics
        bs = y.shape[0]
        for k, v in values.items():
            acc.sums[k] = acc.sums.get(k, 0.0) + v * bs
        acc.sums["loss"] = acc.sums.get("loss", 0.0) + sum(values.values()) * bs
        s_adv = res.step.cached_student("x_adv")  # the loss's own forward on x_adv: no extra pass
        if s_adv is not None:
            acc.correct += int((s_adv.detach().argmax(1) == y).sum())
        acc.seen += bs

    def _check_gradients(self, epoch: int, step_i: int) -> None:
        """A non-finite gradient stops the run before the optimizer step writes it into the weights (one
        device-side reduction per step; under fp16 the grad scaler skips such steps itself)."""
        grads = [q.grad for q in self.parts.student.parameters() if q.grad is not None]
        if grads and not bool(torch.stack([g.isfinite().all() for g in grads]).all()):
            name = next(n for n, q in self.parts.student.named_parameters()
                        if q.grad is not None and not bool(q.grad.isfinite().all()))
            raise TrainingError(
                f"the gradient of {name!r} is not finite at epoch {epoch}, step {step_i + 1}",
                f"the last good checkpoint is {self.saved_in / 'last.safetensors'}; lower train.lr or the "
                "module's alpha")

    def _check_stop(self, epoch: int, step_i: int, gen: torch.Generator, acc: Partial) -> None:
        d = self.parts.dist
        if d.enabled and self._stop_requested():
            # every rank stops together; mid-epoch sums and RNG are per rank, so a distributed run
            # restarts the interrupted epoch from its first step
            self._emit(lambda s: s.on_interrupt(self, epoch - 1, None, None))
            self._interrupted(epoch, 0)
        if self._stop.signum is not None and step_i + 1 < self.steps_per_epoch:
            acc.step = step_i + 1
            state = gen.get_state()
            self._emit(lambda s: s.on_interrupt(self, epoch - 1, acc, state))
            self._interrupted(epoch, step_i + 1)

    def _row(self, epoch: int, lr: float, acc: Partial, t0: float) -> dict[str, Any]:
        p = self.parts
        keys = sorted(acc.sums)
        reduced = p.dist.sum([acc.sums[k] for k in keys] + [float(acc.correct), float(acc.seen)], p.device)
        sums = dict(zip(keys, reduced[:-2], strict=True))
        correct, seen = int(reduced[-2]), int(reduced[-1])
        row: dict[str, Any] = {"epoch": epoch, "lr": lr}
        if p.module is not None:  # T(α) of this epoch; a run without a module has none to log
            row["module_weight"] = module_weight(p.module, epoch, self.epochs)
        row.update({k: v / seen for k, v in sums.items()})
        if correct:
            row["train_adv_acc"] = 100.0 * correct / seen
        self._emit(lambda s: s.on_epoch_metrics(self, epoch, row))
        row["seconds"] = round(time.perf_counter() - t0, 3)
        return row

    def _interrupted(self, epoch: int, step: int) -> None:
        raise interruption(self._stop.signum, self.saved_in, self.resume_hint, epoch, step)


def interruption(signum: int, saved_in: Path, resume_command: str, epoch: int, step: int) -> Interrupted:
    """The error a stop request ends training with: where it stopped, the command that resumes, 128 + signal."""
    where = f"epoch {epoch}, step {step}" if step else f"the start of epoch {epoch}"
    return stopped(signum, f"training stopped and saved at {where} in {saved_in}",
                   f"resume with: {resume_command}")
