"""Every component kind, described once.

A ``Kind`` says what a component of that kind is (its contract), how a plugin registers it (its hook), where a
recipe or the command line names it, and which contract facts ``plugins show`` prints. The registries, the
hook table of the plugin manager, the generic factory, ``plugins list/show`` (their sections and ``--kind``)
and the kind list in the docs are all derived from ``KINDS``; ``tests/test_layers.py`` checks that every
``register_*`` hookspec has a record and every record a hookspec and a contract.

Adding a kind: a record here, its contract in ``igdm_kit.interfaces``, its hookspec in ``igdm_kit.hookspecs``
(and, for sugar, a ``create_<kind>`` in ``igdm_kit.factories``; ``factories.create(kind, ...)`` builds any kind).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


def _yes(v: Any) -> str:
    return "yes" if v else "no"


@dataclass(frozen=True)
class Kind:
    #: the registry's key (``plugins show --kind``)
    name: str
    #: the registration hook in ``igdm_kit.hookspecs``
    hook: str
    #: the contract's name in ``igdm_kit.interfaces``
    contract: str
    #: plural noun, for headings and messages
    noun: str
    #: where a recipe (or the command line) names a component of this kind
    named_in: str
    #: the dotted recipe path option errors are reported under
    where: str
    #: several named at once (a list), as ``[eval] attacks``
    many: bool = False
    #: contract facts ``plugins show`` prints, read from the component class
    facts: Callable[[Any], list[tuple[str, str]]] = field(default=lambda c: [])


KINDS: tuple[Kind, ...] = (
    Kind("method", "register_methods", "Method", "base methods", "[method] name", "method",
         facts=lambda c: [("default attack", c.default_attack), ("needs a teacher", _yes(c.needs_teacher)),
                          ("weights the module's samples", _yes(c.weights_module))]),
    Kind("module", "register_modules", "GradientModule", "gradient modules", "[module] name", "module",
         facts=lambda c: [("needs a teacher", _yes(c.needs_teacher)),
                          ("works with amp = fp16", _yes(c.supports_fp16)),
                          ("works with compile", _yes(c.supports_compile)),
                          ("per-sample loss", _yes(c.per_sample))]),
    Kind("attack", "register_attacks", "TrainingAttack", "training attacks", "[attack] name", "attack",
         facts=lambda c: [("needs a teacher", _yes(c.uses_teacher()))]),
    Kind("eval_attack", "register_eval_attacks", "EvalAttack", "evaluation attacks", "[eval] attacks",
         "eval.attacks", many=True,
         facts=lambda c: [("threat models", ", ".join(c.norms)), ("column", c.short or c.label or "")]),
    Kind("model", "register_models", "ModelFactory", "models", "[student] model", "student"),
    Kind("dataset", "register_datasets", "DatasetPlugin", "datasets", "[data] name", "data"),
    Kind("teacher_loader", "register_teacher_loaders", "TeacherLoader", "teacher loaders", "[teacher] loader",
         "teacher.loader_options"),
    Kind("optimizer", "register_optimizers", "OptimizerFactory", "optimizers", "[train.optimizer] name",
         "train.optimizer"),
    Kind("schedule", "register_schedules", "LRSchedule", "learning-rate schedules", "[train.schedule] name",
         "train.schedule", facts=lambda c: [("steps", f"once per {c.interval}")]),
    Kind("logger", "register_loggers", "Tracker", "experiment trackers", "[log] trackers", "log", many=True),
    Kind("launcher", "register_launchers", "Launcher", "sweep launchers", "igdm-kit sweep --launcher",
         "--launcher-opt"),
    Kind("shift", "register_shifts", "Shift", "distribution and threat shifts", "[eval] shifts", "eval.shifts",
         many=True),
    Kind("callback", "register_callbacks", "Callback", "training callbacks", "[train] callbacks",
         "train.callbacks", many=True, facts=lambda c: [("order", str(c.order)),
                                                        ("always on", _yes(c.always_on))]),
)

BY_NAME: dict[str, Kind] = {k.name: k for k in KINDS}
NAMES: tuple[str, ...] = tuple(BY_NAME)
