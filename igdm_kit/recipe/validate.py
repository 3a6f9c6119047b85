"""Whole-recipe validation and the validated ``Recipe``.

A recipe is validated completely before anything heavy runs: the sections by the schema
(``igdm_kit.recipe.schema``), every component name against the registries (an unknown name lists close
matches), and every component's options by that component's own ``Options`` model. Errors carry the dotted
TOML path (``method.alpha_ard: Input should be a valid number``).
"""

from __future__ import annotations

import copy
import hashlib
import json
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ..errors import IgdmKitError, RecipeError, UnknownComponentError
from ..eval_attacks import EvalSpec, check_eps, resolve
from .errors import raise_validation
from .load import apply_overrides, load_raw
from .schema import RecipeModel, TeacherSection


class Recipe:
    """A validated recipe: the schema model, the validated options of every component, and the name of
    the inner attack it trains with (the ``[attack]`` section's, else the method's own)."""

    def __init__(self, model: RecipeModel, path: Path | None, components: dict[str, BaseModel],
                 attack_name: str, eval_specs: list[EvalSpec]) -> None:
        self.model = model
        self.path = path
        #: section → validated component Options (data, student, method, module, attack)
        self.components = components
        self.attack_name = attack_name
        #: the validated ``[eval] attacks``
        self.eval_specs = eval_specs
        #: the ``--set`` overrides it was loaded with (to print commands that reproduce it)
        self.overrides: list[str] = []

    @property
    def name(self) -> str:
        return self.model.name or (self.path.stem if self.path else "recipe")

    def resolved(self) -> dict[str, Any]:
        """The fully resolved recipe, defaults included (what ``recipe show`` prints and runs hash)."""
        return copy.deepcopy(self._resolved)

    @cached_property
    def _resolved(self) -> dict[str, Any]:
        m, c = self.model, self.components
        out: dict[str, Any] = {"name": self.name}
        if m.description:
            out["description"] = m.description
        out["data"] = {"name": m.data.name, **_dump(c["data"]),
                       **({"train_limit": m.data.train_limit} if m.data.train_limit else {}),
                       **({"test_limit": m.data.test_limit} if m.data.test_limit else {})}
        out["student"] = {"model": m.student.model, **_dump(c["student"])}
        if m.teacher is not None:
            out["teacher"] = m.teacher.model_dump(exclude_none=True)
        out["method"] = {"name": m.method.name, **_dump(c["method"])}
        if m.module is not None:
            out["module"] = {"name": m.module.name, **_dump(c["module"])}
        out["attack"] = {"name": self.attack_name, **_dump(c["attack"])}
        out["train"] = m.train.model_dump()
        # without shifts, [eval] dumps as before they existed (finished runs keep their digest)
        out["eval"] = m.eval.model_dump(exclude=None if m.eval.shifts else {"shifts", "shift_attacks"})
        if m.output.dir:
            out["output"] = m.output.model_dump(exclude_none=True)
        if m.sweep:
            out["sweep"] = m.sweep
        return out

    @cached_property
    def _digest(self) -> str:
        body = {k: v for k, v in self._resolved.items() if k not in ("output", "sweep", "description")}
        if "teacher" in body:  # where the teacher lies is not what it is: a moved clone keeps its runs
            body["teacher"] = {k: (Path(v).name if k in ("checkpoint", "recipe") else v)
                               for k, v in body["teacher"].items()}
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()

    def digest(self) -> str:
        """sha256 of the resolved recipe without its output and sweep (what determines the result)."""
        return self._digest

    def default_output_dir(self) -> Path:
        if self.model.output.dir:
            return Path(self.model.output.dir)
        return Path("runs") / self.name


def _dump(options: BaseModel) -> dict[str, Any]:
    return options.model_dump(mode="json")


def _component(kind: str, name: str, options: dict[str, Any], where: str, name_key: str = "name"):
    from ..plugins import registry

    try:
        entry = registry(kind).entry(name)
    except UnknownComponentError as exc:
        raise RecipeError(f"{where}.{name_key}: {exc.message}", exc.hint, path=f"{where}.{name_key}") from None
    try:
        return entry, entry.options_model.model_validate(options)
    except ValidationError as exc:
        raise_validation(exc, where, entry.options_model)


def validate(raw: dict[str, Any], path: Path | None = None) -> Recipe:
    """Validate a whole raw recipe (after extends and overrides); raise ``RecipeError`` with a dotted path."""
    try:
        model = RecipeModel.model_validate(raw)
    except ValidationError as exc:
        raise_validation(exc, model=RecipeModel, source=path)
    comps: dict[str, BaseModel] = {}
    _, comps["data"] = _component("dataset", model.data.name, model.data.options(), "data")
    _, comps["student"] = _component("model", model.student.model, model.student.options(), "student",
                                     "model")
    method_entry, comps["method"] = _component("method", model.method.name, model.method.options(), "method")
    needs = [(f"method {model.method.name!r}", method_entry.component.needs_teacher)]
    if model.module is not None:
        module_entry, comps["module"] = _component("module", model.module.name, model.module.options(),
                                                   "module")
        needs.append((f"module {model.module.name!r}", module_entry.component.needs_teacher))
    attack_name = model.attack.name or method_entry.component.attack_for(comps["method"])
    attack_entry, comps["attack"] = _component("attack", attack_name, model.attack.options(), "attack")
    needs.append((f"attack {attack_name!r}", attack_entry.component.uses_teacher()))
    for who, needed in needs:
        if needed and model.teacher is None:
            raise RecipeError(f"teacher: {who} needs a teacher but the recipe has no [teacher] section",
                              "add [teacher] with `checkpoint = ...` or `recipe = ...`", path="teacher")
    if model.teacher is not None:
        _validate_teacher(model.teacher)
    return Recipe(model, path, comps, attack_name, _validate_eval(model, comps["data"]))


def _validate_eval(model: RecipeModel, data_options: BaseModel) -> list[EvalSpec]:
    """The ``[eval]`` attacks under its threat, and a radius that makes sense for the data's images."""
    from ..components import create_dataset

    ev = model.eval
    try:
        info = create_dataset(model.data.name, data_options).info()
        dims = info.in_channels * info.image_size ** 2
    except IgdmKitError:  # data not there yet: `run` says so; the radius is checked again then
        dims = None
    check_eps(ev.eps, ev.threat, "eval.eps", dims)
    if ev.shifts:
        from ..shifts import resolve_shifts

        resolve_shifts(ev.shifts, "eval.shifts")
        resolve(ev.shift_attacks, ev.threat, "eval.shift_attacks")
    return resolve(ev.attacks, ev.threat, "eval.attacks")


def _validate_teacher(t: TeacherSection) -> None:
    if t.loader != "auto":
        from ..plugins import registry

        try:
            entry = registry("teacher_loader").entry(t.loader)
        except UnknownComponentError as exc:
            raise RecipeError(f"teacher.loader: {exc.message}", exc.hint, path="teacher.loader") from None
        try:
            entry.options_model.model_validate(t.loader_options)
        except ValidationError as exc:
            raise_validation(exc, "teacher.loader_options", entry.options_model)
    if t.model is not None:
        _component("model", t.model, t.model_options, "teacher", "model")


def load(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, resolve ``extends``, apply ``--set`` overrides and validate a recipe file."""
    path = Path(path)
    raw = load_raw(path)
    apply_overrides(raw, overrides or [])
    r = validate(raw, path)
    r.overrides = list(overrides or [])
    return r


def first_difference(a: Any, b: Any, prefix: str = "") -> str | None:
    """The first dotted key whose value differs between two resolved recipes (for error messages)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            found = first_difference(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else key)
            if found:
                return found
        return None
    return None if a == b else (prefix or "(root)")
