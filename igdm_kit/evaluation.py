"""Evaluation and analysis for notebooks (public): the functions the commands use, with stable names.

``evaluate_report`` judges a model under any registered attacks (the worst case per image, Wilson intervals,
per-image flags) and returns an ``EvalReport``; ``evaluate`` returns its JSON (``results.json``'s layout).
Shifts (Table 9), paired comparison, the statistics and the paper's analyses are here too.

The 0.1 contents of this module that moved elsewhere (``MarginPGD``, ``run_autoattack``, ... now in
``igdm_kit.attacks``) still resolve, with a ``DeprecationWarning``.
"""

from __future__ import annotations

import warnings
from typing import Any

from igdm_kit._evaluation.analysis import gradient_alignment, pointwise_distance, taylor_remainder
from igdm_kit._evaluation.compare import compare
from igdm_kit._evaluation.report import Accuracy, EvalReport
from igdm_kit._evaluation.runner import evaluate, evaluate_report, load_eval_data, load_flags, save_flags
from igdm_kit._evaluation.shifts import compare_shifts, evaluate_models, evaluate_shifts
from igdm_kit._evaluation.stats import mcnemar, wilson

__all__ = ["Accuracy", "EvalReport", "compare", "compare_shifts", "evaluate", "evaluate_models", "evaluate_report",
           "evaluate_shifts", "gradient_alignment", "load_eval_data", "load_flags", "mcnemar", "pointwise_distance",
           "save_flags", "taylor_remainder", "wilson"]


def __getattr__(name: str) -> Any:
    from igdm_kit import _compat, attacks
    from igdm_kit._evaluation import runner

    for where in (attacks, runner):
        if hasattr(where, name):
            warnings.warn(f"igdm_kit.evaluation.{name} is deprecated and will be removed in igdm-kit "
                          f"{_compat.REMOVED_IN}: use {where.__name__}.{name}", DeprecationWarning, stacklevel=2)
            return getattr(where, name)
    raise AttributeError(f"module 'igdm_kit.evaluation' has no attribute {name!r}")
