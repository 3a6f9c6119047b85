"""Built-in optimizers (SGD, Adam, AdamW) and learning-rate schedules (multistep, cosine, one-cycle,
cyclic, constant), all on ``torch.optim``. The defaults — ``sgd`` and ``multistep`` from the ``[train]``
keys — are the paper's."""

from igdm_kit.hookspecs import hookimpl


@hookimpl
def register_optimizers(register):
    from .optimizers import SGD, Adam, AdamW

    register("sgd", SGD)
    register("adam", Adam)
    register("adamw", AdamW)


@hookimpl
def register_schedules(register):
    from .schedules import Constant, Cosine, Cyclic, MultiStep, OneCycle

    register("multistep", MultiStep)
    register("cosine", Cosine)
    register("onecycle", OneCycle)
    register("cyclic", Cyclic)
    register("constant", Constant)
