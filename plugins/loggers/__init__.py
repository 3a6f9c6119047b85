"""Built-in experiment trackers: ``jsonl`` (always on), and TensorBoard, Weights & Biases and MLflow, each
an extra (``pip install 'igdm-kit[tensorboard]'``, ``[wandb]``, ``[mlflow]``) chosen in ``[log] trackers``
and offline by default. Each imports its library inside ``start``."""

from igdm_kit.hookspecs import hookimpl


@hookimpl
def register_loggers(register):
    from .jsonl import JSONL
    from .mlflow_logger import MLflow
    from .tensorboard_logger import TensorBoard
    from .wandb_logger import WandB

    register("jsonl", JSONL)
    register("tensorboard", TensorBoard)
    register("wandb", WandB)
    register("mlflow", MLflow)
