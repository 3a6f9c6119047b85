"""TOML recipes: schema, loading (``extends``, ``--set``), whole-recipe validation, writing, commands.

* ``schema`` — the sections and keys;
* ``load`` — TOML files, ``extends``, relative paths, ``--set`` overrides;
* ``validate`` — the validated ``Recipe`` (component options checked by each component's ``Options``);
* ``errors`` — validation errors as one line with the dotted key;
* ``toml`` — resolved recipes written back as TOML;
* ``commands`` — the commands that reproduce or resume a run.
"""

from __future__ import annotations

import tomllib

from igdm_kit._recipe.commands import command, eval_command, resume_command, shell_command
from igdm_kit._recipe.load import MAX_EXTENDS_DEPTH, apply_overrides, load_raw, merge, parse_key, parse_override
from igdm_kit._recipe.schema import (
                     AttackSection,
                     DataSection,
                     EvalSection,
                     MethodSection,
                     ModuleSection,
                     OutputSection,
                     RecipeModel,
                     StudentSection,
                     TeacherSection,
                     TrainSection,
)
from igdm_kit._recipe.toml import to_toml
from igdm_kit._recipe.validate import Recipe, first_difference, load, missing_extras, validate

__all__ = ["AttackSection", "DataSection", "EvalSection", "MAX_EXTENDS_DEPTH", "MethodSection",
           "ModuleSection", "OutputSection", "Recipe", "RecipeModel", "StudentSection", "TeacherSection",
           "TrainSection", "apply_overrides", "command", "eval_command", "first_difference", "load", "load_raw",
           "merge", "missing_extras", "parse_key", "parse_override", "resume_command", "shell_command", "to_toml",
           "tomllib", "validate"]
