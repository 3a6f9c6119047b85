"""The shipped recipes: every file validates, its [sweep] variants resolve, the paper recipes carry the
paper's settings (α from Appendix B.2, schedules from Appendix B.1, base-method options at the spec's
defaults, the teachers the paper names), and each family's first training steps run on tiny stand-in data.

Bases (files starting with ``_``) are not recipes by themselves; they are validated through the recipes
that extend them, and every base must have at least one.

The smoke steps never touch the files' data or teacher: the recipe's method, module and attack (with 2
attack steps) run on random 4-image batches, with a small CNN standing in for the teacher and, where the
student is a large network, for the student too (a ResNet-18 or a WRN step is too slow for this machine).
The real student architectures are built separately and run one forward pass.
"""

from __future__ import annotations

import copy
import functools
import itertools
import math
import re
import tomllib
from pathlib import Path

import pytest
import torch
from conftest import RECIPES, load_recipe, loadable_recipes

from igdm_kit import _recipe as R
from igdm_kit._plugins.manager import registry
from igdm_kit._training.engine import build_student, build_training
from igdm_kit._training.loss import compute_loss
from igdm_kit.factories import create_dataset, create_method, create_model
from igdm_kit.interfaces import DatasetInfo

ALL_FILES = sorted(RECIPES.rglob("*.toml"))
LEAVES = [p for p in ALL_FILES if not p.name.startswith("_")]
BASES = [p for p in ALL_FILES if p.name.startswith("_")]
#: the paper's settings: everything under recipes/paper/ and the top-level SVHN recipe the issue names
PAPER = [p for p in LEAVES if "paper" in p.relative_to(RECIPES).parts or p.name == "svhn_pgdat_igdm.toml"]


def rel(p: Path) -> str:
    return p.relative_to(RECIPES).as_posix()


@functools.cache
def _load(path: Path) -> R.Recipe:
    return load_recipe(path)


def load(path: Path) -> R.Recipe:
    """The recipe (cached), or a skip when it needs an extra this Python lacks (``load_recipe``)."""
    return _load(path)


def test_there_are_recipes_to_test():
    assert (RECIPES / "svhn_pgdat_igdm.toml") in PAPER
    assert len(PAPER) > 100 and BASES


# -- (1) validation -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", LEAVES, ids=rel)
def test_recipe_validates(path):
    r = load(path)  # schema, component names and every component's options; raises RecipeError otherwise
    desc = r.model.description
    assert desc and desc.strip() and "\n" not in desc, "every recipe has a one-line description"


def _extends_chain(path: Path) -> list[Path]:
    chain = []
    while True:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        parent = raw.get("extends")
        if parent is None:
            return chain
        path = (path.parent / parent).resolve()
        chain.append(path)


def test_every_base_is_extended_by_a_recipe():
    used = {p for leaf in LEAVES for p in _extends_chain(leaf)}
    orphans = [rel(b) for b in BASES if b.resolve() not in used]
    assert not orphans, f"bases no recipe extends (so nothing validates them): {orphans}"


def test_run_folders_do_not_collide():
    """Each recipe writes runs/<name> by default: two recipes sharing one would refuse each other's run."""
    seen: dict[str, str] = {}
    for p, r in loadable_recipes(LEAVES):
        out = r.default_output_dir().as_posix()
        assert out not in seen, f"{rel(p)} and {seen[out]} both write {out}"
        seen[out] = rel(p)


def _get(tree: dict, dotted: str):
    for k in filter(None, dotted.split(".")):
        tree = tree[k]
    return tree


def _sweep_files() -> list[Path]:
    return [p for p in LEAVES if "sweep" in R.load_raw(p)]


def _grid(table: dict) -> dict:
    """A [sweep] table as dotted keys to values: its seeds axis (``seeds``) is ``train.seed``."""
    from igdm_kit._sweep.sweep import SEEDS, parse_seeds

    return {("train.seed" if k == SEEDS else k): (parse_seeds(v) if k == SEEDS else v) for k, v in table.items()}


@pytest.mark.parametrize("path", _sweep_files(), ids=rel)
def test_sweep_values_resolve(path):
    raw = R.load_raw(path)
    table = _grid(raw.pop("sweep"))
    assert table, "an empty [sweep] runs nothing"
    for key, values in table.items():
        assert isinstance(values, list) and values, f"sweep.{key} must be a non-empty list"
        assert len(set(map(repr, values))) == len(values), f"sweep.{key} repeats a value"
        for value in values:
            variant = copy.deepcopy(raw)
            node = variant
            *parents, last = key.split(".")
            for k in parents:
                assert isinstance(node.get(k), dict), f"sweep key {key!r}: {k!r} is not a table of the recipe"
                node = node[k]
            assert last in node or last in _get(load(path).resolved(), ".".join(parents)), \
                f"sweep key {key!r} names no option of the recipe"
            node[last] = value
            resolved = R.validate(variant, path).resolved()
            assert _get(resolved, key) == pytest.approx(value), f"{key}={value} did not reach the recipe"


def test_sweep_expansion_matches_the_grid():
    from igdm_kit._sweep.sweep import expand

    for path in _sweep_files():
        table = _grid(R.load_raw(path)["sweep"])
        variants = expand(path)
        assert len(variants) == math.prod(len(v) for v in table.values()), rel(path)
        for v, combo in zip(variants, itertools.product(*table.values()), strict=True):
            for key, value in zip(table, combo, strict=True):
                assert _get(v.recipe.resolved(), key) == pytest.approx(value)


# -- the paper's settings (independent transcription of Appendices B.1, B.2 and Table 1) -------------------

#: Appendix B.2, α of IGDM per (dataset, student, teacher) and base method; IGDM_AdaIAD uses AdaAD's.
ALPHA_B2 = {
    ("cifar100", "resnet18", "ltd"):   # B.2.1
        {"pgd-at": 100, "trades": 5, "ard": 50, "iad": 20, "akd": 50, "rslad": 3, "adaad": 15},
    ("cifar100", "resnet18", "bdmat"):
        {"pgd-at": 220, "trades": 5, "ard": 100, "iad": 50, "akd": 25, "rslad": 10, "adaad": 70},
    ("cifar10", "resnet18", "ltd"):    # B.2.2
        {"pgd-at": 60, "trades": 20, "ard": 5, "iad": 50, "akd": 7, "rslad": 0.9, "adaad": 5},
    ("cifar10", "resnet18", "bdmat"):
        {"pgd-at": 70, "trades": 20, "ard": 10, "iad": 30, "akd": 10, "rslad": 0.9, "adaad": 10},
    ("cifar100", "mobilenetv2", "ltd"):  # B.2.3
        {"pgd-at": 150, "trades": 10, "ard": 70, "iad": 20, "akd": 30, "rslad": 3, "adaad": 20},
    ("cifar100", "mobilenetv2", "bdmat"):
        {"pgd-at": 160, "trades": 10, "ard": 70, "iad": 50, "akd": 30, "rslad": 4, "adaad": 50},
    ("cifar10", "mobilenetv2", "ltd"):   # B.2.4
        {"pgd-at": 70, "trades": 1, "ard": 10, "iad": 50, "akd": 15, "rslad": 0.5, "adaad": 10},
    ("cifar10", "mobilenetv2", "bdmat"):
        {"pgd-at": 40, "trades": 0.5, "ard": 8, "iad": 50, "akd": 15, "rslad": 0.7, "adaad": 10},
    ("svhn", "resnet18", "svhn-pgdat"):  # B.2.5
        {"pgd-at": 60, "trades": 30, "ard": 50, "iad": 40, "akd": 10, "rslad": 3, "adaad": 9},
    ("tiny-imagenet", "preactresnet18", "rift"):  # B.2.6
        {"pgd-at": 30, "trades": 20, "ard": 10, "iad": 20, "akd": 10, "rslad": 1, "adaad": 10},
}
ROBUSTBENCH = {"Wang2023Better_WRN-28-10": "bdmat", "Chen2021LTD_WRN34_10": "ltd"}
#: The families of Tables 2, 3, 10, 11 and 14 and the teachers their columns use.
FAMILIES = {("cifar100", "resnet18"): {"bdmat", "ltd"}, ("cifar10", "resnet18"): {"ltd"},
            ("cifar100", "mobilenetv2"): {"bdmat", "ltd"}, ("cifar10", "mobilenetv2"): {"bdmat", "ltd"},
            ("svhn", "resnet18"): {"svhn-pgdat"}, ("tiny-imagenet", "preactresnet18"): {"rift"}}
BASE_METHODS = ["pgd-at", "trades", "ard", "iad", "akd", "rslad", "adaad", "adaiad"]
TEACHER_FREE = {"pgd-at", "trades"}


def teacher_id(r: R.Recipe) -> str | None:
    t = r.model.teacher
    if t is None:
        return None
    if t.loader == "robustbench":
        assert t.loader_options["dataset"] == r.model.data.name, "the teacher was trained on another dataset"
        return ROBUSTBENCH[t.loader_options["name"]]
    if r.model.data.name == "svhn":
        sub = load(Path(t.recipe))  # the paper's SVHN teacher: a WRN-34-10 trained with PGD-AT
        assert (sub.model.student.model, sub.model.method.name, sub.model.module) == ("wrn-34-10", "pgd-at", None)
        return "svhn-pgdat"
    if r.model.data.name == "tiny-imagenet":
        assert (t.loader, t.model) == ("state-dict", "wrn-34-10")  # RiFT's WideResNet-34-10
        return "rift"
    raise AssertionError(f"unknown teacher {t}")


def _schedule(data: str, method: str) -> tuple[int, list[int], float]:
    """Appendix B.1 (spec "Training defaults"); SVHN starts at lr 0.01, which the spec allows."""
    if data in ("cifar10", "cifar100"):
        return (300, [215, 260, 285], 0.1) if method == "rslad" else (200, [100, 150], 0.1)
    return {"svhn": (50, [40, 45], 0.01), "tiny-imagenet": (100, [50, 80], 0.1)}[data]


@pytest.mark.parametrize("path", PAPER, ids=rel)
def test_paper_recipe_settings(path):
    r = load(path)
    m = r.model
    text = path.read_text(encoding="utf-8")
    assert re.search(r"^#.*\bTable \d+", text, re.M) and re.search(r"^# Paper: ", text, re.M), \
        "say in a comment which table/row it reproduces and the paper's numbers"

    epochs, milestones, lr = _schedule(m.data.name, m.method.name)
    assert (m.train.epochs, m.train.milestones, m.train.lr) == (epochs, milestones, lr)
    assert (m.train.batch_size, m.train.momentum, m.train.weight_decay, m.train.lr_decay) == (128, 0.9, 5e-4, 0.1)
    assert m.train.seed == 0 and m.train.device == "auto"
    # the inner maximization of Appendix B.1: the method's own attack, 10 steps of 2/255 in ε = 8/255
    attack = r.components["attack"]
    assert r.attack_name == create_method(m.method.name, r.components["method"]).attack_name
    assert (attack.eps, attack.step_size) == pytest.approx((8 / 255, 2 / 255))
    assert (attack.steps, attack.random_start, attack.bn_mode) == (10, True, "eval")
    assert m.eval.attacks == ["clean", "fgsm", "pgd20", "cw", "autoattack"] and m.eval.eps == pytest.approx(8 / 255)
    assert m.eval.limit is None and m.data.train_limit is None and m.data.test_limit is None
    # base-method options at the spec's defaults ("The parameters of AT, AD ... strictly set", B.2)
    method_defaults = registry("method").entry(m.method.name).options_model()
    assert r.components["method"] == method_defaults
    assert (m.data.model_extra or {}).keys() <= {"root"}  # augmentation etc. at the dataset's defaults
    assert not (m.student.model_extra or {})

    if m.module is not None and m.module.name == "igdm":
        mod = r.components["module"]
        # the spec's IGDM: KL surrogate, x± = x ± δ unclamped, ramp T(α) = α·e/E over the run
        assert (mod.distance, mod.beta, mod.gamma, mod.clamp, mod.ramp_epochs) == ("kl", 1.0, 1.0, False, None)
        if not m.sweep:
            tid = teacher_id(r)
            method = "adaad" if m.method.name == "adaiad" else m.method.name
            expected = ALPHA_B2[(m.data.name, m.student.model, tid)][method]
            assert mod.alpha == pytest.approx(expected), f"Appendix B.2 gives α = {expected}"
    if m.teacher is not None:
        teacher_id(r)


def test_paper_families_cover_every_row():
    """Tables 2, 3, 10, 11 and 14: every base method with and without IGDM, for each teacher column."""
    found: dict[tuple, set] = {}
    for p in PAPER:
        r = load(p)
        m = r.model
        if m.sweep or (m.data.name, m.student.model) not in FAMILIES:
            continue
        found.setdefault((m.data.name, m.student.model), set()).add(
            (teacher_id(r), m.method.name, m.module.name if m.module else None))
    for family, teachers in FAMILIES.items():
        rows = found.get(family, set())
        methods = [x for x in BASE_METHODS if not (family[0] == "tiny-imagenet" and x == "adaiad")]
        for tid in teachers:
            for method in methods:
                baseline = {(tid, method, None)} | ({(None, method, None)} if method in TEACHER_FREE else set())
                assert rows & baseline, f"{family}: no {method} recipe for the {tid} column"
                if method != "adaiad":  # the tables' +IGDM row under AdaAD/AdaIAD is IGDM_AdaAD
                    assert (tid, method, "igdm") in rows, f"{family}: no {method} + IGDM for the {tid} column"


def test_analysis_sweeps_are_the_appendix_grids():
    """Tables 15-18: the α grids of the appendix, on ResNet-18 / CIFAR-100 with the BDM-AT teacher."""
    grids = {}
    for p in PAPER:
        r = load(p)
        if r.model.sweep:
            assert (r.model.data.name, r.model.student.model, teacher_id(r)) == ("cifar100", "resnet18", "bdmat")
            grids[(r.model.method.name, r.model.module.name)] = r.model.sweep["module.alpha"]
    assert grids == {
        ("ard", "direct"): [1, 3, 6, 10, 30, 60, 100, 300, 600, 1000, 3000, 6000, 10000],  # Table 15
        ("ard", "trades-reg"): [1, 5, 10, 15, 20, 25, 30],  # Table 16
        ("ard", "igdm-trades-like"): [1, 5, 10, 15, 20, 25, 30],
        ("pgd-at", "igdm"): [0, *range(20, 301, 20)],  # Table 17 (α = 0: PGD-AT)
        ("ard", "igdm"): [0, *range(20, 301, 20)],  # Table 18 (α = 0: ARD)
    }


# -- (2) the first training steps of each family, on stand-in data --------------------------------------------

#: shape of the paper's datasets, so no file is read: (classes, channels, side)
SHAPES = {"cifar10": (10, 3, 32), "cifar100": (100, 3, 32), "svhn": (10, 3, 32), "tiny-imagenet": (200, 3, 64),
          "imagenet": (1000, 3, 224)}
#: students cheap enough to step on CPU as they are
SMALL_STUDENTS = {"small-cnn"}


def _info(r: R.Recipe) -> DatasetInfo:
    name = r.model.data.name
    if name in SHAPES:
        k, c, s = SHAPES[name]
        return DatasetInfo(num_classes=k, in_channels=c, image_size=s)
    return create_dataset(name, r.components["data"]).info()  # e.g. digits: shipped, no file


def _family_key(path: Path):
    raw = R.load_raw(path)
    module = (raw.get("module") or {}).get("name")
    return (raw["data"]["name"], raw["student"]["model"], raw["method"]["name"], module)


def _families() -> list[Path]:
    """One recipe per (dataset, student, method, module)."""
    first: dict[tuple, Path] = {}
    for p in LEAVES:
        first.setdefault(_family_key(p), p)
    return list(first.values())


@pytest.mark.parametrize("path", _families(), ids=rel)
def test_family_first_steps_on_stand_in_data(path):
    r = load_recipe(path, ["attack.steps=2"])
    info = _info(r)
    torch.manual_seed(0)
    shape = dict(num_classes=info.num_classes, in_channels=info.in_channels, image_size=info.image_size)
    if r.model.student.model in SMALL_STUDENTS:
        student = build_student(r, info)
    else:
        student = create_model("small-cnn", width=8, **shape)
    teacher = None
    if r.model.teacher is not None:
        teacher = create_model("small-cnn", width=8, **shape).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        teacher_before = [p.clone() for p in teacher.parameters()]
    method, module, attack = build_training(r, student, teacher)
    tr = r.model.train
    opt = torch.optim.SGD(student.parameters(), lr=tr.lr, momentum=tr.momentum, weight_decay=tr.weight_decay)
    before = [p.detach().clone() for p in student.parameters()]
    x = torch.rand(4, info.in_channels, info.image_size, info.image_size)
    y = torch.randint(0, info.num_classes, (4,))

    # the first epoch (IGDM's ramp at its smallest) and the last (T(α) = α; IAD's introspection on)
    for epoch in (1, tr.epochs):
        student.train()
        res = compute_loss(student, teacher, method, module, attack, x, y, epoch=epoch, epochs=tr.epochs,
                           teachers={role: teacher for role in method.teacher_roles},
                           peer=create_model("small-cnn", width=8, **shape) if method.needs_peer else None)
        assert torch.isfinite(res.loss), (epoch, {k: float(v) for k, v in res.terms.items()})
        assert (res.x_adv - x).abs().max() <= r.components["attack"].eps + 1e-6
        has_module = module is not None and module.options.alpha > 0
        assert ("module" in res.terms) == has_module
        opt.zero_grad()
        res.loss.backward()
        grads = [p.grad for p in student.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        opt.step()
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, student.parameters(), strict=True))
    if teacher is not None:  # the teacher is a constant: no gradient reaches it, nothing changes
        assert all(p.grad is None for p in teacher.parameters())
        assert all(torch.equal(a, b) for a, b in zip(teacher_before, teacher.parameters(), strict=True))


def _student_shapes() -> list[Path]:
    first: dict[tuple, Path] = {}
    for p in LEAVES:
        raw = R.load_raw(p)
        first.setdefault((raw["data"]["name"], raw["student"]["model"]), p)
    return list(first.values())


@pytest.mark.parametrize("path", _student_shapes(), ids=rel)
def test_real_student_fits_the_dataset(path):
    """The recipe's own student (not the stand-in) builds for the dataset's classes and image size."""
    r = load(path)
    info = _info(r)
    student = build_student(r, info).eval()
    with torch.no_grad():
        out = student(torch.rand(2, info.in_channels, info.image_size, info.image_size))
    assert out.shape == (2, info.num_classes) and torch.isfinite(out).all()


@pytest.mark.parametrize("path", [p for p in LEAVES if f"runs/{p.stem}/" in p.read_text().split("\nname")[0]],
                         ids=rel)
def test_the_run_folders_a_header_names_are_where_the_run_writes(path, monkeypatch):
    """A header's commands (`analyze ood runs/quickstart_shifts/alpha=0 ...`) name the folder the recipe writes,
    relative to the repository root where the README runs them (quickstart_shifts wrote recipes/runs/...)."""
    monkeypatch.chdir(RECIPES.parent)
    written = load(path).default_output_dir().resolve()
    assert written == (RECIPES.parent / "runs" / path.stem).resolve(), written
