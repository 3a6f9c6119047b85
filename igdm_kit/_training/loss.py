"""One optimization step's loss: inner attack, base method, gradient module (Algorithm 1 of the paper).

    δ = argmax L_max(x + δ', y)                      (the attack; restores the student's mode)
    L = L_base(x, x_adv) + T(α) · L_module(x ± δ)    (each term logged separately)

A method's ``SampleTerm`` is reduced here; a method with ``weights_module`` weights the module's per-sample
loss: T(α)·(1/B)·Σ_i w_i·m_i (R3). After the method's loss the cached teacher logits must be unchanged (R7).

Kept apart from the training loop so tests, the benchmark and users' own loops can call it directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from igdm_kit._training.step import Step
from igdm_kit.errors import IgdmKitError
from igdm_kit.interfaces import SampleTerm
from igdm_kit.losses import ramp_weight, reduce_term


@dataclass
class StepResult:
    loss: torch.Tensor
    terms: dict[str, torch.Tensor]
    x_adv: torch.Tensor
    step: Step


def module_weight(module, epoch: int, epochs: int) -> float:
    if module is None:
        return 0.0
    o = module.options
    return ramp_weight(o.alpha, epoch, epochs, o.ramp_epochs)


def compute_loss(student, teacher, method, module, attack, x: torch.Tensor, y: torch.Tensor, *,
                 epoch: int, epochs: int, cache: bool = True, teachers: dict | None = None,
                 mean_over_ranks=None, peer=None) -> StepResult:
    """Run the attack and return the total loss and its terms (not yet backpropagated). ``teachers``: the
    teachers by role the method reads (R1); ``mean_over_ranks``: the all-reduce a method's
    ``StepContext.mean_over_ranks`` uses under torchrun; ``peer``: the model a method with ``needs_peer`` trains
    beside the student (R2)."""
    weight = module_weight(module, epoch, epochs)
    active = module if weight > 0 else None  # a zero-weight module is not computed at all
    teacher_inputs = set(method.teacher_inputs(epoch, epochs))
    if active is not None:
        teacher_inputs |= set(active.teacher_inputs())
    step = Step(student, teacher, x, y, epoch=epoch, epochs=epochs, teacher_inputs=sorted(teacher_inputs),
                cache=cache, teachers=teachers, role_inputs=method.role_inputs(epoch, epochs),
                mean_over_ranks=mean_over_ranks, peer=peer)

    kwargs = {}
    if attack.needs_teacher_clean_logits:  # T(x), or the target the method supplies (R6b)
        target = method.attack_target(step)
        kwargs["teacher_logits"] = step.teacher("x") if target is None else target.detach()
    x_adv = attack(x, y, **kwargs).detach()
    step.set_input("x_adv", x_adv)
    if attack.outputs:
        step.set_attack_outputs(attack.side_outputs())
    if active is not None:
        active.prepare(step)

    terms = reduce_terms(method.loss(step))
    step.check_teacher_unchanged()
    if active is not None:
        terms["module"] = weight * module_term(method, active, step)
    total = sum(terms.values())
    return StepResult(loss=total, terms=terms, x_adv=x_adv, step=step)


def reduce_terms(terms) -> dict[str, torch.Tensor]:
    """A method's terms as scalars: each ``SampleTerm`` reduced over the batch, scalars as they are."""
    return {name: reduce_term(t) if isinstance(t, SampleTerm) else t for name, t in terms.items()}


def module_term(method, module, step: Step) -> torch.Tensor:
    """The unweighted module term: its scalar loss, or, for a method that weights the module's samples,
    (1/B)·Σ_i w_i·m_i with w = ``method.module_weights`` and m = ``module.loss_per_sample``."""
    if not method.weights_module:
        return module.loss(step)
    if not module.per_sample:
        raise IgdmKitError(f"the method weights each sample of the module's loss, but module "
                           f"{type(module).__name__} has no per-sample loss",
                           "use a module with per_sample = True (igdm, direct, igdm-trades-like, trades-reg)")
    values = module.loss_per_sample(step)
    return reduce_term(SampleTerm(values, method.module_weights(step)))
