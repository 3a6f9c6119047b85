"""What one run trains with, built from a validated recipe through the component factories."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from igdm_kit._recipe import Recipe
from igdm_kit._runtime.accel import Accelerator
from igdm_kit._runtime.distributed import Dist, wrap
from igdm_kit._storage.run_folder import sha256_file
from igdm_kit._training.loader import MemorySet, StreamSet
from igdm_kit._training.optim import build_optimization
from igdm_kit.errors import CheckpointError, DataError
from igdm_kit.factories import create_attack, create_dataset, create_method, create_model, create_module, create_teacher
from igdm_kit.interfaces import DatasetInfo


@dataclass
class PeerParts:
    """The peer of R2: its module, the module as the loss runs it, its optimizer and its schedule."""

    model: nn.Module
    trained: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any


@dataclass
class Parts:
    """The models, data and components of one run, ready for the trainer."""

    recipe: Recipe
    info: DatasetInfo
    #: the training set: held in memory, or streamed from the dataset's source (``_training.loader``)
    train: MemorySet | StreamSet
    test_data: tuple[torch.Tensor, torch.Tensor]
    student: nn.Module
    #: the student as the outer loss runs it (DDP under torchrun; the attack keeps the bare module)
    trained: nn.Module
    teacher: nn.Module | None
    teacher_digest: str | None
    method: Any
    module: Any
    attack: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    acc: Accelerator
    device: torch.device
    dist: Dist
    #: ``"epoch"`` or ``"step"``: when the trainer steps the scheduler
    scheduler_interval: str = "epoch"
    #: the validation split carved from the training set (``data.val_size``), else None
    val_data: tuple[torch.Tensor, torch.Tensor] | None = None
    #: which images of the training set it holds (indices before the split; for the manifest)
    val_indices: list[int] | None = None
    #: the teachers by role (``[teachers.<role>]``, R1) and their files' sha256
    teachers: dict[str, nn.Module] = field(default_factory=dict)
    teacher_digests: dict[str, str] = field(default_factory=dict)
    #: the peer a method trains beside the student (R2), as the loss runs it (DDP under torchrun), its bare
    #: module, optimizer and schedule; None without ``[peer]``
    peer: PeerParts | None = None

    def checkpoint_meta(self) -> dict[str, Any]:
        """The metadata every checkpoint of this run carries (``igdm_kit.load_model`` rebuilds from it)."""
        r, info = self.recipe, self.info
        return {"model": r.model.student.model, "model_options": r.components["student"].model_dump(),
                "num_classes": info.num_classes, "in_channels": info.in_channels,
                "image_size": info.image_size, "mean": list(info.mean) if info.mean else None,
                "std": list(info.std) if info.std else None,
                "dataset": {"name": r.model.data.name, "options": r.components["data"].model_dump()},
                "class_names": list(info.class_names),
                "recipe_digest": r.digest(), "recipe_name": r.name,
                # what the model was trained and judged at: `igdm-kit eval` defaults to this radius
                "train_attack": {"name": r.attack_name, "eps": r.components["attack"].eps},
                "eval_eps": r.model.eval.eps, "eval_threat": r.model.eval.threat}


def load_data(r: Recipe, split: dict[str, Any] | None = None
              ) -> tuple[DatasetInfo, tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """(info, train, test) held in memory; with ``data.val_size`` the validation split is taken out of train
    and put in ``split`` (``"data"``, ``"indices"``) when the caller passes a dict."""
    info, train, test = load_sets(r, split, stream=False)
    assert isinstance(train, MemorySet)
    return info, (train.x, train.y), test


def load_sets(r: Recipe, split: dict[str, Any] | None = None, *, stream: bool = True, workers: int = 0,
              pin_memory: bool = False) -> tuple[DatasetInfo, MemorySet | StreamSet, tuple[torch.Tensor, torch.Tensor]]:
    """(info, the training set, test): the training set streamed from the dataset's ``source("train")``
    when it has one (and ``stream``), else held in memory (``load("train")``); the test split in memory.
    ``data.train_limit`` keeps the first images, ``data.val_size`` moves a validation split (in memory)
    into ``split``."""
    d = r.model.data
    ds = create_dataset(d.name, r.components["data"])
    info = ds.info()
    source = ds.source("train") if stream else None
    train: MemorySet | StreamSet
    if source is None:
        xtr, ytr = ds.load("train")
        if d.train_limit:  # a view: a memory-mapped set stays shared
            xtr, ytr = xtr[: d.train_limit], ytr[: d.train_limit]
        check_data(d.name, "train", xtr, ytr, info)
        train = MemorySet(xtr, ytr.long())
    else:
        train = StreamSet(source, info, workers=workers, pin_memory=pin_memory)
        if d.train_limit:
            train = train.subset(torch.arange(min(d.train_limit, len(train))))
        check_labels(d.name, "train", train.labels, len(train), info)
    xte, yte = ds.load("test")
    if d.test_limit:
        xte, yte = xte[: d.test_limit], yte[: d.test_limit]
    check_data(d.name, "test", xte, yte, info)
    if d.val_size:
        from igdm_kit._training.split import split_validation

        keep, held = split_validation(train.labels, d.val_size, d.val_seed)
        if split is not None:
            split.update(data=train.take(held), indices=held.tolist())
        train = train.subset(keep)
    return info, train, (xte, yte.long())


def absent_classes(r: Recipe, info: DatasetInfo, train: torch.Tensor, test: torch.Tensor) -> list[str]:
    """Warnings for a ``train_limit``/``test_limit`` whose first images leave classes out (a dataset stored
    class by class, as image folders are, keeps only its first classes): numbers on part of the classes."""
    out = []
    for key, y in (("train_limit", train), ("test_limit", test)):
        limit = getattr(r.model.data, key)
        present = int((torch.bincount(y.cpu().long(), minlength=info.num_classes) > 0).sum())
        if limit and present < info.num_classes:
            out.append(f"warning: data.{key} = {limit} keeps the first images only, which hold {present} of the "
                       f"{info.num_classes} classes; the numbers are about those classes")
    return out


def check_data(name: str, split: str, x: torch.Tensor, y: torch.Tensor, info: DatasetInfo) -> None:
    """Whatever a dataset plugin returns must be uint8 images (k/255) or float images in [0, 1] of the
    declared shape, with one integer label in [0, num_classes) each: everything downstream (attacks, ε)
    assumes it."""
    where = f"dataset {name!r} ({split} split)"
    expected = (info.in_channels, info.image_size, info.image_size)
    if not (torch.is_tensor(x) and torch.is_tensor(y)):
        raise DataError(f"{where} did not return tensors", "a dataset's load() returns (images, labels)")
    if x.ndim != 4 or tuple(x.shape[1:]) != expected:
        raise DataError(f"{where} has images of shape {tuple(x.shape[1:]) if x.ndim == 4 else tuple(x.shape)}, "
                        f"expected {expected}", "check the data files or the dataset's image_size option")
    if not x.is_floating_point() and x.dtype != torch.uint8:
        raise DataError(f"{where} has {x.dtype} images",
                        "images must be uint8 (k means k/255) or float tensors scaled to [0, 1]")
    if x.shape[0] == 0 or y.shape != (x.shape[0],):
        raise DataError(f"{where} has {x.shape[0]} images and labels of shape {tuple(y.shape)}",
                        "one integer label per image, and at least one image")
    lo, hi = (0.0, 1.0) if x.dtype == torch.uint8 else (float(x.min()), float(x.max()))
    if lo < 0.0 or hi > 1.0 or (x.is_floating_point() and x.isnan().any()):
        raise DataError(f"{where} has pixel values in [{lo:.3g}, {hi:.3g}], not [0, 1]",
                        "scale images to [0, 1]; put any normalization (mean/std) inside the model")
    check_labels(name, split, y, x.shape[0], info)


def check_labels(name: str, split: str, y: torch.Tensor, n: int, info: DatasetInfo) -> None:
    """One integer label in [0, num_classes) for each of the ``n`` images (a streamed set's labels too)."""
    where = f"dataset {name!r} ({split} split)"
    if not torch.is_tensor(y) or n == 0 or y.shape != (n,):
        raise DataError(f"{where} has {n} images and labels of shape {tuple(getattr(y, 'shape', ()))}",
                        "one integer label per image, and at least one image")
    if y.dtype not in (torch.int64, torch.int32) or int(y.min()) < 0 or int(y.max()) >= info.num_classes:
        raise DataError(f"{where} has labels outside 0..{info.num_classes - 1} (dtype {y.dtype})",
                        "labels must be integer class indices below num_classes")


def build_student(r: Recipe, info: DatasetInfo) -> nn.Module:
    return create_model(r.model.student.model, num_classes=info.num_classes, in_channels=info.in_channels,
                        image_size=info.image_size, mean=info.mean, std=info.std,
                        **r.components["student"].model_dump())


def load_teacher(r: Recipe, info: DatasetInfo, device: torch.device, path: Path | None,
                 log: Callable[[str], None] = lambda s: None):
    """The recipe's teacher from ``path`` (its checkpoint, or the model its teacher recipe trained) in eval
    mode with frozen parameters, and the file's sha256; (None, None) without a teacher. A teacher whose
    recorded classes are not the data's is refused first (``teacher_check``)."""
    from igdm_kit._training.teacher_check import check_classes

    t = r.model.teacher
    if t is None or path is None:
        return None, None
    check_classes(r, info, Path(path), log)
    teacher = create_teacher(path, loader=t.loader, loader_options=t.loader_options, model=t.model,
                             model_options=t.model_options, num_classes=info.num_classes,
                             in_channels=info.in_channels, image_size=info.image_size, mean=t.mean,
                             std=t.std, device=device)
    return teacher, sha256_file(path)


def load_roles(r: Recipe, info: DatasetInfo, device: torch.device, train, log: Callable[[str], None],
               files: dict[str, Path] | None = None) -> dict[str, tuple[nn.Module, str]]:
    """The teachers by role (``[teachers.<role>]``): each loaded as ``[teacher]`` is, in eval mode with frozen
    parameters, checked against the data (classes, accuracy on a sample), with its file's sha256. ``files``:
    each role's file (its checkpoint, or the model its recipe trained: ``engine.prepare_role_teachers``)."""
    from igdm_kit._training.teacher_check import check_accuracy, check_classes, sample_indices

    out = {}
    for role, t in sorted(r.model.teachers.items()):
        where = f"teachers.{role}"
        given = files[role] if files and role in files else t.checkpoint
        if given is None:  # a role's recipe: engine.prepare_role_teachers trains it and hands its file
            raise CheckpointError(f"{where}.recipe: the teacher it trains was not prepared",
                                  "run the recipe with igdm-kit run (it trains the teacher first)")
        path = Path(given)
        if not path.is_file():
            raise CheckpointError(f"{where}.checkpoint: {str(path)!r} does not exist",
                                  "give the path of the teacher's weights (relative to the recipe file)")
        check_classes(r, info, path, log, where)
        model = create_teacher(path, loader=t.loader, loader_options=t.loader_options, model=t.model,
                               model_options=t.model_options, num_classes=info.num_classes,
                               in_channels=info.in_channels, image_size=info.image_size, mean=t.mean, std=t.std,
                               device=device)
        check_accuracy(r, model, path, *train.take(sample_indices(len(train))), device, log, where)
        out[role] = (model, sha256_file(path))
    return out


def build_training(r: Recipe, student: nn.Module, teacher: nn.Module | None):
    """The method, the gradient module (or None) and the inner attack against ``student``."""
    method = create_method(r.model.method.name, r.components["method"])
    module = create_module(r.model.module.name, r.components["module"]) if r.model.module else None
    attack = create_attack(r.attack_name, student, teacher=teacher, options=r.components["attack"])
    return method, module, attack


def build_parts(r: Recipe, *, device: torch.device, acc: Accelerator, dist: Dist,
                teacher_file: Path | None, log: Callable[[str], None] = lambda s: None,
                role_files: dict[str, Path] | None = None) -> Parts:
    """Data, student, teacher, components, optimizer and schedule — in a fixed order after seeding, so the
    same recipe always starts from the same weights (on every rank). The teacher is checked against the
    training data before anything trains (``teacher_check``: its classes, its accuracy on a sample)."""
    from igdm_kit._training.teacher_check import check_accuracy, sample_indices

    tr = r.model.train
    torch.manual_seed(tr.seed)
    split: dict[str, Any] = {}
    info, train, test = load_sets(r, split, workers=r.model.data.workers, pin_memory=device.type == "cuda")
    if isinstance(train, MemorySet):
        train = MemorySet(*acc.place_data(train.x, train.y))
    elif tr.gpu_data:
        log("train.gpu_data has no effect on a streamed training set (its images are read per batch)")
    student = acc.prepare(build_student(r, info).to(device))
    teacher, digest = load_teacher(r, info, device, teacher_file, log)
    if teacher is not None:
        check_accuracy(r, teacher, Path(teacher_file), *train.take(sample_indices(len(train))), device, log)
    teacher = acc.prepare(teacher)
    roles = load_roles(r, info, device, train, log, role_files)
    method, module, attack = build_training(r, student, teacher)
    attack = acc.wrap_attack(attack)  # mixed precision: the attack-gradient guard (igdm_kit._runtime.accel)
    # The outer loss runs through DDP (gradient all-reduce); the attack keeps the bare module: it needs
    # input gradients only and must not start a gradient synchronization.
    trained = wrap(dist, student, device)
    steps = math.ceil(dist.shard(torch.arange(len(train))).shape[0] / tr.batch_size)
    opt, sched, interval = build_optimization(r, student.parameters(), steps)
    peer = build_peer(r, info, acc, dist, device, steps)
    return Parts(r, info, train, test, student, trained, teacher, digest, method, module, attack, opt,
                 sched, acc, device, dist, interval, split.get("data"), split.get("indices"),
                 {role: acc.prepare(m) for role, (m, _) in roles.items()},
                 {role: d for role, (_, d) in roles.items()}, peer)


def build_peer(r: Recipe, info: DatasetInfo, acc: Accelerator, dist: Dist, device: torch.device,
               steps: int) -> PeerParts | None:
    """``[peer]`` (R2): built after the student (so the student's weights are those of a run without it),
    from scratch, with its own optimizer and schedule of the student's settings."""
    if r.model.peer is None:
        return None
    model = acc.prepare(create_model(r.model.peer.model, num_classes=info.num_classes, in_channels=info.in_channels,
                                     image_size=info.image_size, mean=info.mean, std=info.std,
                                     **r.components["peer"].model_dump()).to(device))
    opt, sched, _ = build_optimization(r, model.parameters(), steps)
    return PeerParts(model, wrap(dist, model, device), opt, sched)
