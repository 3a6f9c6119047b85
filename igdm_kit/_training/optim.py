"""The optimizer and the learning-rate schedule of a run, from ``[train.optimizer]`` and
``[train.schedule]`` through the factories; without either, ``sgd`` and ``multistep`` from the ``[train]``
keys (the paper's: ``torch.optim.SGD`` and a cumulative ``MultiStepLR``, exactly as before they were
components).

``[train.schedule] warmup_epochs = W`` puts a linear warm-up in front of any schedule: from
``warmup_start`` × the schedule's first learning rate up to it over W epochs (counted in optimizer steps
for a per-step schedule), then the schedule, whose own count starts at 0 there (``SequentialLR`` of a
``LambdaLR`` and the schedule).
"""

from __future__ import annotations

from typing import Any

import torch

from igdm_kit._recipe import Recipe
from igdm_kit.factories import create_optimizer, create_schedule
from igdm_kit.interfaces import TrainingPlan


def plan_of(r: Recipe, steps_per_epoch: int) -> TrainingPlan:
    tr = r.model.train
    warmup = tr.schedule.warmup_epochs if tr.schedule is not None else 0
    return TrainingPlan(lr=tr.lr, momentum=tr.momentum, weight_decay=tr.weight_decay,
                        milestones=tuple(tr.milestones), lr_decay=tr.lr_decay, epochs=tr.epochs,
                        steps_per_epoch=steps_per_epoch, warmup_epochs=warmup)


def build_optimization(r: Recipe, params, steps_per_epoch: int) -> tuple[torch.optim.Optimizer, Any, str]:
    """(optimizer, scheduler, interval): ``interval`` says whether the trainer steps the scheduler once per
    ``"epoch"`` or once per optimizer ``"step"``."""
    tr = r.model.train
    plan = plan_of(r, steps_per_epoch)
    opt_name = tr.optimizer.name if tr.optimizer is not None else "sgd"
    optimizer = create_optimizer(opt_name, params, plan, r.components["optimizer"])
    name = tr.schedule.name if tr.schedule is not None else "multistep"
    scheduler, interval = create_schedule(name, optimizer, plan, r.components["schedule"])
    if plan.warmup_epochs:
        scheduler = with_warmup(optimizer, scheduler, plan.warmup_epochs * (steps_per_epoch if interval == "step"
                                                                             else 1), tr.schedule.warmup_start)
    return optimizer, scheduler, interval


def with_warmup(optimizer: torch.optim.Optimizer, scheduler, length: int, start: float):
    """``length`` scheduler steps rising linearly from ``start`` × the schedule's first lr, then
    ``scheduler`` (its count restarts at 0 when the warm-up ends)."""
    def factor(i: int) -> float:
        return start + (1.0 - start) * min(i, length) / length

    warm = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warm, scheduler], milestones=[length])
