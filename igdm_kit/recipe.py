"""TOML recipes: parsing, ``extends``, ``--set`` overrides, and whole-recipe validation.

A recipe is validated completely before anything heavy runs: the sections by the schema below
(``extra="forbid"``), every component name against the registries (an unknown name lists close matches),
and every component's options by that component's own ``Options`` model. Errors carry the dotted TOML path
(``method.alpha_ard: Input should be a valid number``).

``extends = "base.toml"`` (relative to the recipe) inherits a recipe: tables merge key by key, except that
a section whose component changes (``[method] name``, ``[student] model``, ...) replaces the parent's
section, since the parent's options belong to another component.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import tomllib
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import RecipeError, UnknownComponentError
from .interfaces import Fraction

MAX_EXTENDS_DEPTH = 16


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ComponentSection(BaseModel):
    """A section naming a component; the remaining keys are that component's options."""

    model_config = ConfigDict(extra="allow")

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class DataSection(ComponentSection):
    name: str
    train_limit: int | None = Field(None, gt=0, description="use only the first N training images")
    test_limit: int | None = Field(None, gt=0, description="evaluate on the first N test images")


class StudentSection(ComponentSection):
    model: str


class TeacherSection(Section):
    checkpoint: str | None = Field(None, description="teacher weights on disk (path relative to the recipe)")
    loader: str = Field("auto", description="teacher loader; auto: igdm-kit for .safetensors, else state-dict")
    loader_options: dict[str, Any] = Field(default_factory=dict)
    model: str | None = Field(None, description="architecture, for loaders that read plain weights")
    model_options: dict[str, Any] = Field(default_factory=dict)
    mean: list[float] | None = None
    std: list[float] | None = None
    recipe: str | None = Field(None, description="a recipe that trains the teacher (cached in its run folder)")

    @model_validator(mode="after")
    def _one_source(self) -> TeacherSection:
        if (self.checkpoint is None) == (self.recipe is None):
            raise ValueError("give exactly one of `checkpoint` or `recipe`")
        return self


class MethodSection(ComponentSection):
    name: str


class ModuleSection(ComponentSection):
    name: str


class AttackSection(ComponentSection):
    name: str | None = Field(None, description="inner attack; default: the method's own")


class TrainSection(Section):
    epochs: int = Field(200, gt=0)
    batch_size: int = Field(128, gt=0)
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    milestones: list[int] = Field(default_factory=lambda: [100, 150])
    lr_decay: float = Field(0.1, gt=0, description="factor applied at each milestone (cumulative)")
    seed: int = 0
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    reference_passes: bool = Field(False, description="separate forwards as the reference code does")
    save_every_epoch: bool = Field(False, description="keep a checkpoint per epoch (for analyze linearity)")
    # Accelerator options (igdm_kit.accel); device-dependent checks happen when the run starts.
    amp: Literal["off", "bf16", "fp16"] = Field(
        "off", description="mixed precision of the forwards: bf16 (CPU or GPU), fp16 (GPU, grad scaler)")
    channels_last: bool = Field(False, description="models and inputs in channels_last memory format")
    compile: bool = Field(False, description="torch.compile the student and the teacher")
    cudnn_benchmark: bool = Field(False, description="let cuDNN pick the fastest convolutions (CUDA only)")
    gpu_data: bool = Field(False, description="keep the training set on the GPU, augment there (CIFAR/SVHN)")

    @model_validator(mode="after")
    def _milestones(self) -> TrainSection:
        if sorted(self.milestones) != self.milestones or len(set(self.milestones)) != len(self.milestones):
            raise ValueError("milestones must be strictly increasing")
        return self


class EvalSection(Section):
    attacks: list[Literal["clean", "fgsm", "pgd20", "cw", "autoattack"]] = Field(
        default_factory=lambda: ["clean", "fgsm", "pgd20", "cw", "autoattack"])
    limit: int | None = Field(None, gt=0, description="evaluate on the first N test images")
    batch_size: int = Field(256, gt=0)
    eps: Fraction = Field(8 / 255, ge=0)
    analysis: bool = Field(False, description="also report GD/GC against the teacher (needs a teacher)")


class OutputSection(Section):
    dir: str | None = Field(None, description="run folder; default runs/<recipe file name>")


class RecipeModel(Section):
    name: str | None = None
    description: str | None = None
    extends: str | None = None
    data: DataSection
    student: StudentSection
    teacher: TeacherSection | None = None
    method: MethodSection
    module: ModuleSection | None = None
    attack: AttackSection = Field(default_factory=AttackSection)
    train: TrainSection = Field(default_factory=TrainSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    output: OutputSection = Field(default_factory=OutputSection)
    sweep: dict[str, Any] | None = Field(None, description="grid of dotted keys → values (igdm-kit sweep)")


# -- loading --------------------------------------------------------------------------------------------

_COMPONENT_KEY = {"data": "name", "student": "model", "method": "name", "module": "name", "attack": "name",
                  "teacher": "model"}


def _read_toml(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise RecipeError(f"{str(path)!r} is a folder, not a recipe file", "name a .toml file in it")
    if not path.is_file():
        raise RecipeError(f"recipe file {str(path)!r} does not exist", "check the path")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"recipe {str(path)!r} is not valid TOML: {exc}", "fix the TOML syntax") from None
    except UnicodeDecodeError:
        raise RecipeError(f"recipe {str(path)!r} is not a UTF-8 text file", "pass a .toml recipe") from None


def merge(parent: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """Child over parent; tables merge unless the child's section names another component."""
    out = dict(parent)
    for key, value in child.items():
        old = out.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            ident = _COMPONENT_KEY.get(key)
            if ident and ident in value and value[ident] != old.get(ident):
                out[key] = value
            else:
                out[key] = merge(old, value)
        else:
            out[key] = value
    return out


def load_raw(path: str | Path, _depth: int = 0) -> dict[str, Any]:
    """The recipe's TOML with ``extends`` resolved (paths inside stay relative to their own file)."""
    path = Path(path)
    if _depth > MAX_EXTENDS_DEPTH:
        raise RecipeError(f"recipe {str(path)!r}: `extends` nests deeper than {MAX_EXTENDS_DEPTH}",
                          "check for a cycle of extends")
    raw = _read_toml(path)
    _absolutize(raw, path.parent)
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise RecipeError("extends: must be a file name (string)", "e.g. extends = \"_base.toml\"",
                          path="extends")
    return merge(load_raw(path.parent / parent, _depth + 1), raw)


def _absolutize(raw: dict[str, Any], base: Path) -> None:
    """Paths in a recipe are relative to the recipe's own file (so ``extends`` keeps them right)."""
    teacher = raw.get("teacher")
    if isinstance(teacher, dict):
        for key in ("checkpoint", "recipe"):
            if isinstance(teacher.get(key), str):
                teacher[key] = str((base / teacher[key]).resolve()) if not Path(teacher[key]).is_absolute() \
                    else teacher[key]


def parse_override(item: str) -> tuple[list[str], Any]:
    """``train.epochs=5`` → (["train", "epochs"], 5). Values are TOML; a bare word is a string."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"--set {item!r} is not of the form dotted.key=value", "e.g. --set train.epochs=5")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    return key.strip().split("."), parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        keys, value = parse_override(item)
        node = raw
        for k in keys[:-1]:
            if not isinstance(node.setdefault(k, {}), dict):
                raise RecipeError(f"--set {item!r}: {k!r} is not a table", "check the dotted key")
            node = node[k]
        node[keys[-1]] = value
    return raw


# -- validation -----------------------------------------------------------------------------------------

def _dotted(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc if not (isinstance(p, str) and p.startswith("function-")))


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys a (nested) pydantic model accepts at ``loc``, for "did you mean" hints."""
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return []
        candidates = typing.get_args(field.annotation) or (field.annotation,)
        sub = next((a for a in candidates if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if sub is None:
            return []
        model = sub
    return list(model.model_fields)


_TABLE_ERRORS = ("model_type", "dict_type", "model_attributes_type")


def _raise_validation(exc: ValidationError, prefix: str = "", model: type[BaseModel] | None = None,
                      source: Path | None = None) -> None:
    errors = exc.errors()
    # an unknown key explains the rest (a misspelled [dat] section also makes [data] "missing")
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    path = ".".join(p for p in (prefix, _dotted(err["loc"])) if p)
    msg, hint = err["msg"], "see `igdm-kit recipe show` for the valid keys"
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
        key = err["loc"][-1]
        close = difflib.get_close_matches(str(key), _fields_at(model, err["loc"][:-1]) if model else [], n=3)
        if close:
            hint = "did you mean " + ", ".join(repr(c) for c in close) + "?"
    elif err["type"] == "missing":
        msg = "required key is missing"
        if source is not None and source.name.startswith("_"):
            hint = "files starting with '_' are bases for `extends`, not recipes to run"
    elif err["type"] in _TABLE_ERRORS:
        msg = "must be a table ([section] or { key = value })"
    elif err["type"] == "list_type":
        hint = 'write a TOML list, e.g. ["clean", "pgd20"] (quote it for --set: \'eval.attacks=["clean"]\')'
    elif err["type"].startswith("float") and str(err["loc"][-1]) in ("eps", "step_size"):
        hint = 'a number or a fraction such as "8/255"'
    raise RecipeError(f"{path}: {msg}" if path else msg, hint, path=path) from None


class Recipe:
    """A validated recipe: the schema model plus the validated options of every component."""

    def __init__(self, model: RecipeModel, path: Path | None, components: dict[str, Any]) -> None:
        self.model = model
        self.path = path
        #: section → validated component Options (data, student, method, module, attack)
        self.components = components
        #: the ``--set`` overrides it was loaded with (to print commands that reproduce it)
        self.overrides: list[str] = []

    @property
    def name(self) -> str:
        return self.model.name or (self.path.stem if self.path else "recipe")

    @property
    def attack_name(self) -> str:
        return self.components["attack_name"]

    def resolved(self) -> dict[str, Any]:
        """The fully resolved recipe, defaults included (what ``recipe show`` prints and runs hash)."""
        m = self.model
        out: dict[str, Any] = {"name": self.name}
        if m.description:
            out["description"] = m.description
        out["data"] = {"name": m.data.name, **_dump(self.components["data"]),
                       **({"train_limit": m.data.train_limit} if m.data.train_limit else {}),
                       **({"test_limit": m.data.test_limit} if m.data.test_limit else {})}
        out["student"] = {"model": m.student.model, **_dump(self.components["student"])}
        if m.teacher is not None:
            out["teacher"] = m.teacher.model_dump(exclude_none=True)
        out["method"] = {"name": m.method.name, **_dump(self.components["method"])}
        if m.module is not None:
            out["module"] = {"name": m.module.name, **_dump(self.components["module"])}
        out["attack"] = {"name": self.attack_name, **_dump(self.components["attack"])}
        out["train"] = m.train.model_dump()
        out["eval"] = m.eval.model_dump()
        if m.output.dir:
            out["output"] = m.output.model_dump(exclude_none=True)
        if m.sweep:
            out["sweep"] = m.sweep
        return out

    def digest(self) -> str:
        """sha256 of the resolved recipe without its output and sweep (what determines the result)."""
        body = {k: v for k, v in self.resolved().items() if k not in ("output", "sweep", "description")}
        if "teacher" in body:  # where the teacher lies is not what it is: a moved clone keeps its runs
            body["teacher"] = {k: (Path(v).name if k in ("checkpoint", "recipe") else v)
                               for k, v in body["teacher"].items()}
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()

    def default_output_dir(self) -> Path:
        if self.model.output.dir:
            return Path(self.model.output.dir)
        return Path("runs") / self.name


def _dump(options: BaseModel) -> dict[str, Any]:
    return options.model_dump(mode="json")


def _component(kind: str, name: str, options: dict[str, Any], where: str, name_key: str = "name"):
    from .plugins import registry

    try:
        entry = registry(kind).entry(name)
    except UnknownComponentError as exc:
        raise RecipeError(f"{where}.{name_key}: {exc.message}", exc.hint, path=f"{where}.{name_key}") from None
    try:
        return entry, entry.options_model.model_validate(options)
    except ValidationError as exc:
        _raise_validation(exc, where, entry.options_model)


def validate(raw: dict[str, Any], path: Path | None = None) -> Recipe:
    """Validate a whole raw recipe (after extends and overrides); raise ``RecipeError`` with a dotted path."""
    try:
        model = RecipeModel.model_validate(raw)
    except ValidationError as exc:
        _raise_validation(exc, model=RecipeModel, source=path)
    comps: dict[str, Any] = {}
    data_entry, comps["data"] = _component("dataset", model.data.name, model.data.options(), "data")
    _, comps["student"] = _component("model", model.student.model, model.student.options(), "student",
                                     "model")
    method_entry, comps["method"] = _component("method", model.method.name, model.method.options(), "method")
    module_entry = None
    if model.module is not None:
        module_entry, comps["module"] = _component("module", model.module.name, model.module.options(),
                                                   "module")
    method_cls = method_entry.component
    attack_name = model.attack.name or method_cls(comps["method"]).attack_name
    attack_entry, comps["attack"] = _component("attack", attack_name, model.attack.options(), "attack")
    comps["attack_name"] = attack_name

    needs = [(f"method {model.method.name!r}", method_cls.needs_teacher)]
    if module_entry is not None:
        needs.append((f"module {model.module.name!r}", module_entry.component.needs_teacher))
    needs.append((f"attack {attack_name!r}", getattr(attack_entry.component, "needs_teacher", False)
                  or getattr(attack_entry.component, "needs_teacher_clean_logits", False)))
    for who, needed in needs:
        if needed and model.teacher is None:
            raise RecipeError(f"teacher: {who} needs a teacher but the recipe has no [teacher] section",
                              "add [teacher] with `checkpoint = ...` or `recipe = ...`", path="teacher")
    if model.teacher is not None:
        _validate_teacher(model.teacher)
    return Recipe(model, path, comps)


def _validate_teacher(t: TeacherSection) -> None:
    from .plugins import registry

    if t.loader != "auto":
        _component("teacher_loader", t.loader, t.loader_options, "teacher", "loader")
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


def command_line(r: Recipe, *extra: str) -> str:
    """The shell command that runs this recipe again with the same ``--set`` overrides."""
    import shlex

    parts = ["igdm-kit", "run", str(r.path) if r.path else "RECIPE"]
    for item in r.overrides:
        parts += ["--set", item]
    return " ".join(shlex.quote(p) for p in [*parts, *extra])


def to_toml(data: dict[str, Any]) -> str:
    """A small TOML writer for resolved recipes (scalars, arrays, nested tables)."""
    lines: list[str] = []

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v, ensure_ascii=False)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(i) for i in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{_key(k)} = {value(i)}" for k, i in v.items()) + " }"
        if v is None:
            raise ValueError("TOML has no null")
        return json.dumps(str(v))

    def table(prefix: str, d: dict[str, Any]) -> None:
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict) and v is not None}
        tables = {k: v for k, v in d.items() if isinstance(v, dict)}
        if prefix:
            lines.append(f"\n[{prefix}]")
        for k, v in scalars.items():
            lines.append(f"{_key(k)} = {value(v)}")
        for k, v in d.items():
            if v is None:  # TOML has no null: show that the key exists and is unset
                lines.append(f"# {_key(k)} = (not set)")
        for k, v in tables.items():
            if all(not isinstance(i, dict) for i in v.values()) and prefix.count(".") >= 0 and prefix:
                lines.append(f"{_key(k)} = {value({a: b for a, b in v.items() if b is not None})}")
            else:
                table(f"{prefix}.{_key(k)}" if prefix else _key(k), v)

    table("", data)
    return "\n".join(lines).lstrip("\n") + "\n"


def _key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)
