"""Learning-rate schedules on ``torch.optim.lr_scheduler``, each for the epochs after any warm-up
(``[train.schedule] warmup_epochs``; the host puts the warm-up in front, ``igdm_kit._training.optim``).

* ``multistep`` — the paper's: × ``gamma`` at each milestone epoch, cumulatively (``MultiStepLR``);
  milestones and gamma default to ``[train] milestones`` and ``lr_decay``; milestones count from the start
  of training (a warm-up does not shift them).
* ``cosine`` — ``eta_min + (lr − eta_min)·(1 + cos(π·e/T))/2`` over the T epochs after the warm-up
  (``CosineAnnealingLR``, stepped per epoch).
* ``onecycle`` — Smith's one-cycle policy per optimizer step (``OneCycleLR``): from ``max_lr/div_factor``
  up to ``max_lr`` over ``pct_start`` of the steps, then down to ``max_lr/(div_factor·final_div_factor)``.
* ``cyclic`` — triangular cycles per optimizer step (``CyclicLR``): ``base_lr`` → ``max_lr`` over
  ``up_fraction`` of each cycle and back; one cycle from 0 is the fast-AT schedule (Wong et al., 2020).
* ``constant`` — ``[train] lr`` throughout.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from igdm_kit.interfaces import LRSchedule, NoOptions, Options


class MultiStepOptions(Options):
    milestones: list[int] | None = Field(None, description="epochs at which the lr is multiplied by gamma; "
                                         "default: [train] milestones")
    gamma: float | None = Field(None, gt=0, description="the factor; default: [train] lr_decay")


class MultiStep(LRSchedule):
    description = "× gamma at each milestone epoch (MultiStepLR); the default, from the [train] keys"
    Options = MultiStepOptions

    def build(self, optimizer, plan):
        import torch

        from igdm_kit.errors import RecipeError

        o = self.options
        gamma = plan.lr_decay if o.gamma is None else o.gamma
        given = list(plan.milestones if o.milestones is None else o.milestones)
        if sorted(set(given)) != given:
            raise RecipeError("train.schedule.milestones: must be strictly increasing", "e.g. [100, 150]",
                              path="train.schedule.milestones")
        if given and given[0] <= plan.warmup_epochs:
            raise RecipeError(f"train.schedule: milestone {given[0]} falls inside the {plan.warmup_epochs}-epoch "
                              "warm-up", "milestones count from the start of training: put them after the warm-up",
                              path="train.schedule.milestones")
        # the schedule's own count starts after the warm-up; its milestones stay epochs of the run
        milestones = [m - plan.warmup_epochs for m in given]
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=gamma)


class CosineOptions(Options):
    eta_min: float = Field(0.0, ge=0, description="the lr at the end")


class Cosine(LRSchedule):
    description = "cosine annealing to eta_min over the epochs after the warm-up (CosineAnnealingLR)"
    Options = CosineOptions

    def build(self, optimizer, plan):
        import torch

        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=plan.schedule_epochs,
                                                          eta_min=self.options.eta_min)


class OneCycleOptions(Options):
    max_lr: float | None = Field(None, gt=0, description="the peak lr; default: [train] lr")
    pct_start: float = Field(0.3, gt=0, lt=1, description="fraction of the steps spent rising")
    anneal_strategy: Literal["cos", "linear"] = "cos"
    div_factor: float = Field(25.0, gt=0, description="the first lr is max_lr / div_factor")
    final_div_factor: float = Field(1e4, gt=0, description="the last lr is max_lr / (div_factor·final_div_factor)")
    three_phase: bool = False
    cycle_momentum: bool = Field(False, description="also cycle SGD's momentum (or Adam's beta1) inversely")


class OneCycle(LRSchedule):
    description = "one-cycle policy, stepped per optimizer step (OneCycleLR)"
    Options = OneCycleOptions
    interval = "step"

    def build(self, optimizer, plan):
        import torch

        o = self.options
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=plan.lr if o.max_lr is None else o.max_lr,
            total_steps=plan.schedule_epochs * plan.steps_per_epoch, pct_start=o.pct_start,
            anneal_strategy=o.anneal_strategy, div_factor=o.div_factor, final_div_factor=o.final_div_factor,
            three_phase=o.three_phase, cycle_momentum=o.cycle_momentum)


class CyclicOptions(Options):
    base_lr: float = Field(0.0, ge=0, description="the lr at the start and end of each cycle")
    max_lr: float | None = Field(None, gt=0, description="the peak lr; default: [train] lr")
    cycles: int = Field(1, ge=1, description="triangles over the training")
    up_fraction: float = Field(0.5, gt=0, lt=1, description="fraction of each cycle spent rising")


class Cyclic(LRSchedule):
    description = "triangular cyclic lr, stepped per optimizer step (CyclicLR; the fast-AT schedule)"
    Options = CyclicOptions
    interval = "step"

    def build(self, optimizer, plan):
        import torch

        o = self.options
        per_cycle = plan.schedule_epochs * plan.steps_per_epoch / o.cycles
        up = max(1, round(per_cycle * o.up_fraction))
        down = max(1, round(per_cycle) - up)
        return torch.optim.lr_scheduler.CyclicLR(
            optimizer, base_lr=o.base_lr, max_lr=plan.lr if o.max_lr is None else o.max_lr,
            step_size_up=up, step_size_down=down, mode="triangular", cycle_momentum=False)


class Constant(LRSchedule):
    description = "[train] lr throughout"
    Options = NoOptions

    def build(self, optimizer, plan):
        import torch

        return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
