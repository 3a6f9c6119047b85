"""Whole-recipe validation and the validated ``Recipe``.

A recipe is validated completely before anything heavy runs: the sections by the schema
(``igdm_kit._recipe.schema``), every component name against the registries (an unknown name lists close
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

from igdm_kit._plugins.describe import added_later_fields, path_fields
from igdm_kit._plugins.manager import always_on, registry
from igdm_kit._recipe.errors import raise_validation
from igdm_kit._recipe.load import apply_overrides, load_raw
from igdm_kit._recipe.schema import RecipeModel, TeacherSection
from igdm_kit._recipe.specs import EvalSpec, check_eps, resolve, resolve_callbacks
from igdm_kit.errors import RecipeError, UnknownComponentError

#: ``[teacher]`` keys that decide whether a teacher is refused, never what is trained (not in the digest)
TEACHER_CHECKS = ("check_classes", "check_accuracy")


class Recipe:
    """A validated recipe: the schema model, the validated options of every component, and the name of
    the inner attack it trains with (the ``[attack]`` section's, else the method's own)."""

    def __init__(self, model: RecipeModel, path: Path | None, components: dict[str, BaseModel],
                 attack_name: str, eval_specs: list[EvalSpec], val_specs: list[EvalSpec] | None = None) -> None:
        self.model = model
        self.path = path
        #: section → validated component Options (data, student, method, module, attack)
        self.components = components
        self.attack_name = attack_name
        #: the validated ``[eval] attacks``
        self.eval_specs = eval_specs
        #: the validated ``[train.validate] attacks`` (empty without validation)
        self.val_specs = list(val_specs or [])
        #: ``[train] callbacks``, validated
        self.callback_specs = resolve_callbacks(model.train.callbacks)
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
                       **({"test_limit": m.data.test_limit} if m.data.test_limit else {}),
                       **({"val_size": m.data.val_size, "val_seed": m.data.val_seed} if m.data.val_size else {}),
                       **({"workers": m.data.workers} if m.data.workers else {})}
        out["student"] = {"model": m.student.model, **_dump(c["student"])}
        if m.teacher is not None:
            out["teacher"] = m.teacher.model_dump(exclude_none=True)
        if m.peer is not None:
            out["peer"] = {"model": m.peer.model, **_dump(c["peer"])}
        if m.teachers:  # absent, the recipe keeps its digest
            out["teachers"] = {role: t.model_dump(exclude_none=True) for role, t in sorted(m.teachers.items())}
        out["method"] = {"name": m.method.name, **_dump(c["method"])}
        if m.module is not None:
            out["module"] = {"name": m.module.name, **_dump(c["module"])}
        out["attack"] = {"name": self.attack_name, **_dump(c["attack"])}
        out["train"] = _train(m, c)
        # without shifts, [eval] dumps as before they existed (finished runs keep their digest)
        out["eval"] = m.eval.model_dump(exclude=None if m.eval.shifts else {"shifts", "shift_attacks"})
        if out["eval"]["checkpoints"] == ["last"]:  # the default: recipes from before it keep their digest
            del out["eval"]["checkpoints"]
        if m.output.dir:
            out["output"] = m.output.model_dump(exclude_none=True)
        if m.log.trackers or m.log.options():
            out["log"] = {**m.log.model_dump(), **{t: _dump(c[f"log.{t}"]) for t in m.log.trackers}}
            for name in always_on("logger"):
                if name in m.log.options():
                    out["log"][name] = _dump(c[f"log.{name}"])
        if m.sweep:
            out["sweep"] = m.sweep
        return out

    @cached_property
    def _digest(self) -> str:
        # what is written where (output, log) and how a family is named do not change the result
        body = {k: v for k, v in self._resolved.items() if k not in ("output", "sweep", "description", "log")}
        body["train"] = {k: v for k, v in body["train"].items() if k != "threads"}  # how, not what
        body["data"] = {k: v for k, v in body["data"].items() if k != "workers"}  # the same batches for any
        if "teacher" in body:  # whether to refuse a teacher, not what is trained
            body["teacher"] = {k: v for k, v in body["teacher"].items() if k not in TEACHER_CHECKS}
        # an option added after a recipe was written, at its default: the recipe keeps its digest
        for section, options in self.components.items():
            later = added_later_fields(type(options))
            if later and isinstance(body.get(section), dict):
                body[section] = {k: v for k, v in body[section].items() if k not in later or v != later[k]}
        # where the data and the teacher lie is not what they are: a moved clone keeps its runs
        paths = {section: path_fields(type(options)) for section, options in self.components.items()}
        paths["teacher"] = path_fields(TeacherSection)
        for section, keys in paths.items():
            if section in body:
                body[section] = {k: (Path(v).name if k in keys and isinstance(v, str) else v)
                                 for k, v in body[section].items()}
        if "teachers" in body:  # each role as [teacher]: its checks and where its files lie are not hashed
            body["teachers"] = {role: {k: (Path(v).name if k in paths["teacher"] and isinstance(v, str) else v)
                                       for k, v in t.items() if k not in TEACHER_CHECKS}
                                for role, t in body["teachers"].items()}
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


def _train(m: RecipeModel, c: dict[str, BaseModel]) -> dict[str, Any]:
    """``[train]`` resolved; its optional tables only when given (so recipes without them keep their digest)."""
    out = m.train.model_dump(by_alias=True, exclude={"optimizer", "schedule", "validation", "ema", "swa",
                                                              "callbacks"})
    t = m.train
    if t.optimizer is not None:
        out["optimizer"] = {"name": t.optimizer.name, **_dump(c["optimizer"])}
    if t.schedule is not None:
        out["schedule"] = {"name": t.schedule.name, "warmup_epochs": t.schedule.warmup_epochs,
                           "warmup_start": t.schedule.warmup_start, **_dump(c["schedule"])}
    if t.validation is not None:
        out["validate"] = t.validation.model_dump()
    if t.ema is not None:
        out["ema"] = t.ema.model_dump()
    if t.swa is not None:
        out["swa"] = t.swa.model_dump()
    if t.callbacks:  # absent, the recipe keeps its digest
        out["callbacks"] = [{"name": s.name, **_dump(s.options)} for s in resolve_callbacks(t.callbacks)]
    return out


def _component(kind: str, name: str, options: dict[str, Any], where: str, name_key: str = "name"):
    from igdm_kit._plugins.manager import registry

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
        if method_entry.component.weights_module and not module_entry.component.per_sample:
            raise RecipeError(f"module.name: method {model.method.name!r} weights each sample of the module's "
                              f"loss, but module {model.module.name!r} has no per-sample loss",
                              "choose a module with a per-sample loss (`igdm-kit plugins show module NAME`)",
                              path="module.name")
    attack_name = model.attack.name or method_entry.component.attack_for(comps["method"])
    attack_entry, comps["attack"] = _component("attack", attack_name, model.attack.options(), "attack")
    attack_cls, method_cls = attack_entry.component, method_entry.component
    needs.append((f"attack {attack_name!r}", attack_cls.needs_teacher or (
        attack_cls.needs_teacher_clean_logits and not method_cls.supplies_attack_target)))
    _validate_peer(model, method_cls, comps)
    missing = sorted(method_entry.component.attack_outputs - attack_entry.component.outputs)
    if missing:
        raise RecipeError(f"attack.name: method {model.method.name!r} reads the attack's per-sample "
                          f"{', '.join(missing)}, which attack {attack_name!r} does not report",
                          "choose an attack that reports it (e.g. 'pgd' reports kappa)", path="attack.name")
    for who, needed in needs:
        if needed and model.teacher is None:
            raise RecipeError(f"teacher: {who} needs a teacher but the recipe has no [teacher] section",
                              "add [teacher] with `checkpoint = ...` or `recipe = ...`", path="teacher")
    if model.teacher is not None:
        _validate_teacher(model.teacher)
    _validate_roles(model, method_entry.component)
    _validate_optimization(model, comps)
    _validate_log(model, comps)
    val_specs = _validate_validation(model, comps["attack"])
    return Recipe(model, path, comps, attack_name, _validate_eval(model, comps["data"]), val_specs)


def _validate_optimization(model: RecipeModel, comps: dict[str, BaseModel]) -> None:
    t = model.train
    opt, sched = t.optimizer, t.schedule
    _, comps["optimizer"] = _component("optimizer", opt.name if opt else "sgd", opt.options() if opt else {},
                                       "train.optimizer")
    _, comps["schedule"] = _component("schedule", sched.name if sched else "multistep",
                                      sched.options() if sched else {}, "train.schedule")
    if sched is not None and sched.warmup_epochs >= t.epochs:
        raise RecipeError(f"train.schedule.warmup_epochs: {sched.warmup_epochs} warm-up epochs leave none of the "
                          f"{t.epochs} for the schedule", "use fewer warm-up epochs",
                          path="train.schedule.warmup_epochs")
    if t.ema is not None and t.ema.start > t.epochs:
        raise RecipeError(f"train.ema.start: epoch {t.ema.start} is after the last ({t.epochs})",
                          "start the average earlier", path="train.ema.start")
    if t.swa is not None and t.swa.start > t.epochs:
        raise RecipeError(f"train.swa.start: epoch {t.swa.start} is after the last ({t.epochs})",
                          "start the average earlier", path="train.swa.start")


def _validate_validation(model: RecipeModel, attack_options: BaseModel) -> list[EvalSpec]:
    """``[train.validate]`` needs a validation split; its attacks, radius and metric; ``[eval]
    checkpoints`` only names checkpoints the run keeps."""
    from igdm_kit._recipe.specs import DEFAULT_EPS

    t, v = model.train, model.train.validation
    kept = {"last"} | ({"best"} if v else set()) | ({"ema"} if t.ema else set()) | \
        ({"best_ema"} if v and t.ema else set()) | ({"swa"} if t.swa else set())
    for name in model.eval.checkpoints:
        if name not in kept:
            need = {"best": "[train.validate]", "ema": "[train.ema]", "best_ema": "[train.validate] and [train.ema]",
                    "swa": "[train.swa]"}
            raise RecipeError(f"eval.checkpoints: {name!r} needs {need[name]}",
                              "add it, or judge the checkpoints the run keeps: " + ", ".join(sorted(kept)),
                              path="eval.checkpoints")
    if len(set(model.eval.checkpoints)) != len(model.eval.checkpoints):
        raise RecipeError("eval.checkpoints: a checkpoint is named twice", "name each once", path="eval.checkpoints")
    if v is None:
        return []
    if not model.data.val_size:
        raise RecipeError("train.validate: there is no validation split to validate on",
                          "set data.val_size (a count such as 500, or a fraction such as 0.1): the test set "
                          "is never used to choose anything", path="data.val_size")
    if v.start > t.epochs:
        raise RecipeError(f"train.validate.start: epoch {v.start} is after the last ({t.epochs})",
                          "validate from an earlier epoch", path="train.validate.start")
    if v.eps is None:
        v.eps = attack_options.eps if v.threat == "Linf" else DEFAULT_EPS[v.threat]
    check_eps(v.eps, v.threat, "train.validate.eps")
    specs = resolve(v.attacks, v.threat, "train.validate.attacks")
    keys = ["robust", *(s.key for s in specs)]
    if v.metric not in keys:
        raise RecipeError(f"train.validate.metric: {v.metric!r} is not measured",
                          "one of: " + ", ".join(keys), path="train.validate.metric")
    return specs


def _validate_log(model: RecipeModel, comps: dict[str, BaseModel]) -> None:
    """Each tracker of ``[log] trackers`` is registered and installed; ``[log.NAME]`` are their options."""
    import importlib.util


    log = model.log
    tables = log.options()
    always = always_on("logger")
    for name in tables:
        if name not in log.trackers and name not in always:
            raise RecipeError(f"log.{name}: unknown key (not a tracker named in log.trackers)",
                              f"add {name!r} to log.trackers, or remove [log.{name}]", path=f"log.{name}")
    if len(set(log.trackers)) != len(log.trackers):
        raise RecipeError("log.trackers: a tracker is named twice", "name each once", path="log.trackers")
    for name in dict.fromkeys([*always, *log.trackers]):
        try:
            registry("logger").entry(name)
        except UnknownComponentError as exc:
            raise RecipeError(f"log.trackers: {exc.message}", exc.hint, path="log.trackers") from None
        entry, comps[f"log.{name}"] = _component("logger", name, tables.get(name) or {}, f"log.{name}")
        missing = [m for m in entry.component.requires if importlib.util.find_spec(m) is None]
        if missing:
            raise RecipeError(f"log.trackers: {name!r} needs the Python package {missing[0]!r}",
                              f"install it: {entry.component.install or 'pip install ' + missing[0]}",
                              path="log.trackers")


def importable(module: str) -> bool:
    """Whether ``module`` imports (not merely exists: another wheel may ship a broken stand-in of the name,
    as torchattacks does with ``robustbench``)."""
    import importlib

    try:
        importlib.import_module(module)
    except Exception:  # noqa: BLE001 - absent or broken alike: not usable
        return False
    return True


def missing_extras(r: Recipe) -> list[str]:
    """One line per optional package the recipe's components need and this Python cannot import, with the
    line that installs it (``recipe check`` warns with them; ``run`` refuses before training)."""
    from igdm_kit._recipe.specs import resolve_shifts

    out = []
    for i, spec in enumerate(resolve_shifts(r.model.eval.shifts)):
        component = registry("shift").get(spec.name)
        for package in component.requires:
            if not importable(package):
                out.append(f"eval.shifts[{i}]: {spec.name!r} needs the Python package {package!r}; install it: "
                           f"{component.install or 'pip install ' + package}")
    return out


def _validate_eval(model: RecipeModel, data_options: BaseModel) -> list[EvalSpec]:
    """The ``[eval]`` attacks under its threat, and a radius that makes sense for the data's images."""
    from igdm_kit.factories import create_dataset

    ev = model.eval
    try:
        info = create_dataset(model.data.name, data_options).info()
        dims = info.in_channels * info.image_size ** 2
    except Exception:  # noqa: BLE001 - data not there (yet): `run` says so; the radius is checked again then
        dims = None
    check_eps(ev.eps, ev.threat, "eval.eps", dims)
    if ev.shifts:
        from igdm_kit._recipe.specs import resolve_shifts

        resolve_shifts(ev.shifts, "eval.shifts")
        resolve(ev.shift_attacks, ev.threat, "eval.shift_attacks")
    return resolve(ev.attacks, ev.threat, "eval.attacks")


def _validate_peer(model: RecipeModel, method: Any, comps: dict[str, BaseModel]) -> None:
    """``[peer]`` exactly when the method trains one (R2), its architecture a registered model."""
    if method.needs_peer and model.peer is None:
        raise RecipeError(f"peer: method {model.method.name!r} trains a peer and the recipe has no [peer] section",
                          "add [peer] with `model = ...` (PeerAiD: the student's architecture)", path="peer")
    if model.peer is not None and not method.needs_peer:
        raise RecipeError(f"peer: method {model.method.name!r} trains no peer", "remove the [peer] section",
                          path="peer")
    if model.peer is not None:
        _, comps["peer"] = _component("model", model.peer.model, model.peer.options(), "peer", "model")


def _validate_roles(model: RecipeModel, method: Any) -> None:
    """``[teachers.<role>]``: exactly the roles the method reads (R1), each a checkpoint or a recipe."""
    wanted, given = set(method.teacher_roles), set(model.teachers)
    for role in sorted(wanted - given):
        raise RecipeError(f"teachers.{role}: method {model.method.name!r} reads a {role!r} teacher and the recipe "
                          "has none", f"add [teachers.{role}] with `checkpoint = ...`", path=f"teachers.{role}")
    for role in sorted(given - wanted):
        raise RecipeError(f"teachers.{role}: method {model.method.name!r} reads no {role!r} teacher",
                          "remove the table" + (f", or name one of the roles it reads: {', '.join(sorted(wanted))}"
                                                if wanted else " (the method reads only [teacher])"),
                          path=f"teachers.{role}")
    for role, t in sorted(model.teachers.items()):
        _validate_teacher(t, f"teachers.{role}")


def _validate_teacher(t: TeacherSection, where: str = "teacher") -> None:
    if t.loader != "auto":
        from igdm_kit._plugins.manager import registry

        try:
            entry = registry("teacher_loader").entry(t.loader)
        except UnknownComponentError as exc:
            raise RecipeError(f"{where}.loader: {exc.message}", exc.hint, path=f"{where}.loader") from None
        try:
            entry.options_model.model_validate(t.loader_options)
        except ValidationError as exc:
            raise_validation(exc, f"{where}.loader_options", entry.options_model)
    if t.model is not None:
        _component("model", t.model, t.model_options, where, "model")


def load(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, resolve ``extends``, apply ``--set`` overrides and validate a recipe file."""
    path = Path(path)
    try:
        raw = load_raw(path)
        apply_overrides(raw, overrides or [])
        r = validate(raw, path)
    except RecursionError:  # values nested deeper than the validators go (the parser's own limit is nearer)
        raise RecipeError(f"recipe {str(path)!r} nests tables or lists too deeply",
                          "flatten the nested inline tables and lists") from None
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
