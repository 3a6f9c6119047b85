"""The epoch loop: attack, loss, optimizer step — everything else is a subscriber (``events``).

Each epoch draws its data order and augmentation from (seed, epoch) and its attack starts from a seed of
(seed, epoch, rank), so a resumed run sees exactly what an uninterrupted one would. A step never waits for
the device: its loss terms, counts and finiteness checks accumulate there (``tally``) and are read every
``SYNC_EVERY`` steps, at the end of the epoch and before a stop saves. A non-finite loss term or gradient
stops the run there, naming the epoch, step and term where it first happened (the weights are checked
before each checkpoint by the ``FiniteWeights`` subscriber). A stop request (SIGINT/SIGTERM) finishes the
current step; the subscribers save, and ``Interrupted`` carries the resume command — after the last epoch
too, before the final evaluation.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from igdm_kit._runtime.signals import StopFlag, stopped
from igdm_kit._training.batches import augment, epoch_order
from igdm_kit._training.events import Partial, Subscriber
from igdm_kit._training.loss import compute_loss, module_weight
from igdm_kit._training.parts import Parts
from igdm_kit._training.tally import SYNC_EVERY, LazyTerms, Tally
from igdm_kit.errors import Interrupted
from igdm_kit.nn import to_float_images


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
        #: the loss terms of the last step (subscribers read it in ``on_step_end``; read lazily: a step
        #: whose terms nobody reads does not wait for the device)
        self.step_terms: Mapping[str, float] = LazyTerms()
        self.last_step = None  # the last step's ``Step`` (``StepContext``): a stateful method's statistics
        self.epochs = parts.recipe.model.train.epochs
        n = len(parts.train)
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
        return self._stop.agree(self.parts.dist, self.parts.device)

    def _epoch(self, epoch: int, partial: dict[str, Any] | None) -> dict[str, Any]:
        p, tr = self.parts, self.parts.recipe.model.train
        t0 = time.perf_counter()
        lr = p.optimizer.param_groups[0]["lr"]
        p.student.train()
        if p.peer is not None:
            p.peer.model.train()
        order, gen = epoch_order(len(p.train), tr.seed, epoch)
        order = p.dist.shard(order)
        start = Partial(epoch, 0, {}, 0, 0)
        if partial is not None:
            start = Partial(epoch, partial["step"], dict(partial["sums"]), partial["correct"], partial["seen"])
            gen.set_state(partial["gen_state"])
        else:
            torch.manual_seed(epoch_seed(tr.seed, epoch, p.dist.rank))
            self._emit(lambda s: s.on_epoch_start(self, epoch))  # not on a mid-epoch resume
        tally = Tally(p.device, start)
        batches = p.train.batches(order, tr.batch_size, start.step, self.steps_per_epoch, seed=tr.seed,
                                  epoch=epoch)
        for step_i, idx, xb, yb in batches:
            self._step(epoch, step_i, idx, (xb, yb), gen, tally)
            if (step_i + 1) % SYNC_EVERY == 0:
                tally.check(self.saved_in)  # the only waits for the device inside an epoch
            self._emit(lambda s: s.on_step_end(self, epoch, step_i))
            self._check_stop(epoch, step_i, gen, tally)
        tally.check(self.saved_in)  # before the epoch's row, its validation and its checkpoint
        if p.scheduler_interval == "epoch":
            self._schedule_step()
        return self._row(epoch, lr, tally.partial(self.steps_per_epoch), t0)

    def _step(self, epoch: int, step_i: int, idx: torch.Tensor, batch: tuple[torch.Tensor, torch.Tensor],
              gen: torch.Generator, tally: Tally) -> None:
        """One optimizer step; nothing in it waits for the device (the terms, counts and finiteness checks
        accumulate in ``tally``)."""
        p, tr = self.parts, self.parts.recipe.model.train
        if self._trace:
            with open(f"{self._trace}.rank{p.dist.rank}", "a") as fh:
                fh.write(" ".join(map(str, idx.tolist())) + "\n")
        xb, yb = batch
        # crop and flip move pixels only: on uint8 they give the bytes of the float path; k/255 on the device
        x = to_float_images(augment(xb, p.info, gen).to(p.device, non_blocking=True))
        y = yb.to(p.device, non_blocking=True)
        res = compute_loss(p.trained, p.teacher, p.method, p.module, p.attack, x, y, epoch=epoch,
                           teachers=p.teachers, mean_over_ranks=p.dist.mean,
                           peer=None if p.peer is None else p.peer.trained,
                           epochs=self.epochs, cache=not tr.reference_passes)
        terms = {k: v.detach() for k, v in res.terms.items()}
        p.optimizer.zero_grad(set_to_none=True)
        peer = () if p.peer is None else (p.peer.optimizer,)
        for opt in peer:
            opt.zero_grad(set_to_none=True)
        p.acc.backward_and_step(res.loss, p.optimizer, before_step=lambda: tally.add_gradients(
            step_i, self._gradients()), also=peer)
        if p.scheduler_interval == "step":  # one-cycle, cyclic: the schedule moves with every step
            self._schedule_step()
        self.step_terms = LazyTerms(terms)
        self.last_step = res.step  # the method's state hooks read its per-sample statistics
        s_adv = res.step.cached_student("x_adv")  # the loss's own forward on x_adv: no extra pass
        correct = (s_adv.detach().argmax(1) == y).sum() if s_adv is not None else None
        tally.add_step(step_i, terms, correct, y.shape[0])

    def _gradients(self) -> list[tuple[str, torch.Tensor | None]]:
        """The gradients the finiteness check reads: the student's, and a trained peer's (R2)."""
        p = self.parts
        out = [(n, q.grad) for n, q in p.student.named_parameters()]
        if p.peer is not None:
            out += [(f"peer.{n}", q.grad) for n, q in p.peer.model.named_parameters()]
        return out

    def _schedule_step(self) -> None:
        self.parts.scheduler.step()
        if self.parts.peer is not None:
            self.parts.peer.scheduler.step()

    def _check_stop(self, epoch: int, step_i: int, gen: torch.Generator, tally: Tally) -> None:
        d = self.parts.dist
        if d.enabled and self._stop_requested():
            # every rank stops together; mid-epoch sums and RNG are per rank, so a distributed run
            # restarts the interrupted epoch from its first step
            tally.check(self.saved_in)
            self._emit(lambda s: s.on_interrupt(self, epoch - 1, None, None))
            self._interrupted(epoch, 0)
        if self._stop.signum is not None and step_i + 1 < self.steps_per_epoch:
            tally.check(self.saved_in)  # nothing non-finite is saved
            state = gen.get_state()
            acc = tally.partial(step_i + 1)
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
