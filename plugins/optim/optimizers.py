"""SGD, Adam and AdamW from ``torch.optim`` at ``[train] lr`` and ``weight_decay``.

``sgd`` without options is exactly the paper's optimizer: ``torch.optim.SGD(lr, momentum, weight_decay)``
with ``[train] momentum``. Adam's weight decay is L2 added to the gradient; AdamW's is decoupled
(Loshchilov & Hutter, 2019).
"""

from __future__ import annotations

from pydantic import Field

from igdm_kit.interfaces import OptimizerFactory, Options


class SGDOptions(Options):
    momentum: float | None = Field(None, ge=0, lt=1, description="default: [train] momentum")
    nesterov: bool = Field(False, description="Nesterov momentum")
    dampening: float = Field(0.0, ge=0, lt=1)


class SGD(OptimizerFactory):
    description = "SGD with momentum (torch.optim.SGD); the default, from the [train] keys"
    Options = SGDOptions

    def build(self, params, plan):
        import torch

        o = self.options
        momentum = plan.momentum if o.momentum is None else o.momentum
        kwargs = {"nesterov": True} if o.nesterov else {}
        if o.dampening:
            kwargs["dampening"] = o.dampening
        return torch.optim.SGD(params, lr=plan.lr, momentum=momentum, weight_decay=plan.weight_decay, **kwargs)


class AdamOptions(Options):
    betas: tuple[float, float] = Field((0.9, 0.999), description="coefficients of the running averages")
    eps: float = Field(1e-8, gt=0, description="added to the denominator")
    amsgrad: bool = False


class Adam(OptimizerFactory):
    description = "Adam (torch.optim.Adam); weight decay as L2 on the gradient"
    Options = AdamOptions
    cls_name = "Adam"

    def build(self, params, plan):
        import torch

        o = self.options
        cls = getattr(torch.optim, self.cls_name)
        return cls(params, lr=plan.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=plan.weight_decay,
                   amsgrad=o.amsgrad)


class AdamW(Adam):
    description = "AdamW (torch.optim.AdamW); decoupled weight decay"
    cls_name = "AdamW"
