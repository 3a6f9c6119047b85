"""The hooks a plugin implements. Built-ins use exactly these hooks too.

A plugin is a module (or object) with functions decorated by ``igdm_kit.hookimpl`` and published under the
entry-point group ``igdm_kit``::

    [project.entry-points.igdm_kit]
    my_plugin = "my_package.plugin"

Registration hooks receive a ``register(name, component)`` callback and return nothing. They are called
once, when the registry of that kind is first needed (not at import time, and not for ``--help``), so a
plugin should import heavy modules (torch) inside the hook, not at the top of its plugin module. A
component is a class with a nested ``Options`` pydantic model; see ``igdm_kit.interfaces``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT = "igdm_kit"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: The callback passed to every registration hook: ``register(name, component)``.
Register = Callable[[str, Any], None]


@hookspec
def register_methods(register: Register) -> None:
    """Register base methods (outer minimization), subclasses of ``igdm_kit.interfaces.Method``.

    Called when the method registry is first built. Returns nothing.
    """


@hookspec
def register_modules(register: Register) -> None:
    """Register gradient modules (IGDM and variants), subclasses of ``interfaces.GradientModule``.

    Called when the module registry is first built. Returns nothing.
    """


@hookspec
def register_attacks(register: Register) -> None:
    """Register inner (training) attacks, subclasses of ``interfaces.TrainingAttack``, built by
    ``igdm_kit.create_attack`` as ``cls(student, options=..., teacher=...)``.

    Called when the attack registry is first built. Returns nothing.
    """


@hookspec
def register_eval_attacks(register: Register) -> None:
    """Register evaluation attacks (``interfaces.EvalAttack``), named in ``[eval] attacks`` and by
    ``igdm-kit eval --attack``.

    Called when the evaluation-attack registry is first built. Returns nothing.
    """


@hookspec
def register_models(register: Register) -> None:
    """Register model architectures (``interfaces.ModelFactory``: ``Options`` + ``build`` returning the
    bare network; ``igdm_kit.create_model`` adds the normalization).

    Called when the model registry is first built. Returns nothing.
    """


@hookspec
def register_datasets(register: Register) -> None:
    """Register datasets, subclasses of ``interfaces.DatasetPlugin``.

    Called when the dataset registry is first built. Returns nothing.
    """


@hookspec
def register_teacher_loaders(register: Register) -> None:
    """Register teacher loaders, subclasses of ``interfaces.TeacherLoader`` (``Options`` + ``load``, and
    ``protocol`` if their models' published numbers follow a benchmark's protocol), used by
    ``igdm_kit.create_teacher`` and ``igdm-kit eval``.

    Called when the teacher-loader registry is first built. Returns nothing.
    """


@hookspec
def register_optimizers(register: Register) -> None:
    """Register optimizers (``interfaces.OptimizerFactory``: ``Options`` + ``build(params, plan)`` returning a
    ``torch.optim.Optimizer``), named in ``[train.optimizer] name`` and built by ``igdm_kit.create_optimizer``.

    Called when the optimizer registry is first built. Returns nothing.
    """


@hookspec
def register_schedules(register: Register) -> None:
    """Register learning-rate schedules (``interfaces.LRSchedule``: ``Options``, ``interval`` and
    ``build(optimizer, plan)`` returning a ``torch.optim.lr_scheduler`` scheduler), named in
    ``[train.schedule] name`` and built by ``igdm_kit.create_schedule`` (the host adds any warm-up before).

    Called when the schedule registry is first built. Returns nothing.
    """


@hookspec
def register_loggers(register: Register) -> None:
    """Register experiment trackers (``interfaces.Tracker``), named in ``[log] trackers`` with their options
    in ``[log.NAME]``; each receives the manifest, per-step and per-epoch metrics, the final results and
    (optionally) checkpoint files. ``metrics.jsonl`` is written whatever the trackers are.

    Called when the logger registry is first built. Returns nothing.
    """


@hookspec
def register_launchers(register: Register) -> None:
    """Register sweep launchers (``interfaces.Launcher``: ``Options`` + ``launch(jobs, ctx)``), named by
    ``igdm-kit sweep --launcher NAME`` with options from ``--launcher-opt key=value``.

    Called when the launcher registry is first built. Returns nothing.
    """


@hookspec
def register_shifts(register: Register) -> None:
    """Register distribution and threat shifts (``interfaces.Shift``: shifted evaluation sets and/or
    threat models the model was not trained for), named in ``[eval] shifts`` and ``igdm-kit eval --shifts``.

    Called when the shift registry is first built. Returns nothing.
    """


@hookspec
def register_callbacks(register: Register) -> None:
    """Register training callbacks (``interfaces.Callback``: ``Options``, ``order``, ``build(options, ctx)`` and
    the events of the epoch loop), named in ``[train] callbacks``; a callback with ``always_on`` is built for
    every run (the host's own bookkeeping is registered so). They run in ascending ``order``
    (``interfaces.Order``).

    Called when the callback registry is first built. Returns nothing.
    """


@hookspec
def register_commands(app: Any) -> None:
    """Add commands to the ``igdm-kit`` Typer application ``app`` (e.g. ``@app.command()``).

    Called once when the CLI starts, before arguments are parsed. Returns nothing. Keep imports of heavy
    modules inside the command functions so that ``igdm-kit --help`` stays fast.
    """
