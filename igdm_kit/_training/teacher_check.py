"""A teacher checked against the student's data before anything trains.

A teacher's outputs are its own classes in its own order; a student distilled from a teacher whose classes
are not the data's learns noise and the run still exits 0 (a folder of classes ``zero…nine`` — sorted
``eight, five, four, …`` — with the digits teacher trained a student to 10 % clean accuracy). So:

1. **Class names.** An igdm-kit checkpoint records the class names of the data it was trained on (older
   ones: its dataset, whose names are looked up); when both the teacher and the data name their classes,
   the lists must be equal — same names, same order — or the run is refused with both lists.
2. **Accuracy.** The teacher classifies a fixed sample of the training images (a generator of its own: the
   run's random stream is untouched). At chance — the lower end of its 95 % Wilson interval no higher than
   the largest class's share, which a constant guess scores — the run is refused; near chance (below a
   quarter of the way from chance to 100 %) it is a warning.

``[teacher] check_classes = false`` / ``check_accuracy = false`` turn a refusal into a warning (a teacher
whose class names differ but mean the same, a deliberately weak teacher); neither changes what is trained.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from igdm_kit._recipe import Recipe
from igdm_kit.errors import CheckpointError
from igdm_kit.interfaces import DatasetInfo

#: How many training images the teacher's accuracy is measured on (all of them when fewer).
SAMPLE = 1000
#: "Near chance": below chance + NEAR · (100 − chance), in percent.
NEAR = 0.25


def teacher_classes(path: Path) -> tuple[tuple[str, ...], str | None]:
    """(class names, dataset name) an igdm-kit teacher file records; ``((), None)`` for any other file.

    A checkpoint written before class names were recorded names its dataset: the names are that dataset's
    (when it can describe itself here)."""
    from igdm_kit._storage.checkpoint import read_metadata

    try:
        meta = read_metadata(path)
    except CheckpointError:  # plain weights, RobustBench files: they record no classes
        return (), None
    dataset = meta.get("dataset") if isinstance(meta.get("dataset"), dict) else {}
    name = dataset.get("name") if isinstance(dataset.get("name"), str) else None
    names = meta.get("class_names")
    if isinstance(names, list):
        return tuple(names), name
    if name is None:
        return (), None
    try:
        from igdm_kit.factories import create_dataset

        return tuple(create_dataset(name, **(dataset.get("options") or {})).info().class_names), name
    except Exception:  # noqa: BLE001 - a dataset not installed or not at hand here: no names to compare
        return (), name


def _listed(names: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", … ({len(names)} classes)" if len(names) > limit else "")


def check_classes(r: Recipe, info: DatasetInfo, path: Path, log: Callable[[str], None],
                  where: str = "teacher") -> None:
    """Refuse (or, with ``check_classes = false``, warn about) a teacher whose recorded classes are not the
    data's; say which dataset the teacher was trained on when it is another. ``where``: ``teacher`` or
    ``teachers.<role>``, the recipe table of the teacher."""
    t = _section(r, where)
    names, dataset = teacher_classes(path)
    student = r.model.data.name
    if dataset is not None and dataset != student:
        log(f"teacher: trained on {dataset}; the student's data is {student}")
    if not names or not info.class_names or tuple(names) == tuple(info.class_names):
        return
    what = (f"teacher {str(path)!r} predicts the classes [{_listed(names)}]"
            + (f" of {dataset}" if dataset else "") + f", but the data ({student}) has [{_listed(info.class_names)}]")
    if t is not None and not t.check_classes:
        log(f"warning: {what} ({where}.check_classes = false: training anyway)")
        return
    raise CheckpointError(what, "a teacher's outputs are its classes in its order: give the data the teacher's "
                          "classes (e.g. class folders named as they are), or train a teacher on this data; "
                          f"if the names differ but mean the same, set {where}.check_classes = false")


def _section(r: Recipe, where: str):
    return r.model.teacher if where == "teacher" else r.model.teachers[where.split(".", 1)[1]]


def sample_indices(size: int, n: int = SAMPLE) -> torch.Tensor:
    """Which ``n`` of ``size`` training images the teacher is judged on: drawn with a generator of its own."""
    g = torch.Generator().manual_seed(0)
    return torch.randperm(size, generator=g)[:n] if size > n else torch.arange(size)


def sample_accuracy(teacher: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device,
                    n: int = SAMPLE, batch_size: int = 256) -> tuple[int, int, float]:
    """(correct, images, chance in %) of the teacher on ``n`` training images drawn with a generator of
    its own; chance is the largest class's share of the sample."""
    from igdm_kit.attacks import eval_mode
    from igdm_kit.nn import to_float_images

    idx = sample_indices(x.shape[0], n)
    xs, ys = x[idx.to(x.device)], y[idx.to(y.device)].cpu()
    correct = 0
    with torch.no_grad(), eval_mode(teacher):
        for i in range(0, xs.shape[0], batch_size):
            pred = teacher(to_float_images(xs[i:i + batch_size].to(device))).argmax(1).cpu()
            correct += int((pred == ys[i:i + batch_size]).sum())
    chance = 100.0 * int(torch.bincount(ys).max()) / ys.shape[0]
    return correct, int(ys.shape[0]), chance


def verdict(correct: int, n: int, chance: float) -> str:
    """``"refuse"`` at chance (the 95 % Wilson interval's lower end ≤ chance), ``"warn"`` near it (accuracy
    below chance + NEAR · (100 − chance)), else ``"ok"``."""
    from igdm_kit._evaluation.stats import wilson

    accuracy = 100.0 * correct / n
    if wilson(correct, n)[0] <= chance:
        return "refuse"
    return "warn" if accuracy < chance + NEAR * (100.0 - chance) else "ok"


def check_accuracy(r: Recipe, teacher: torch.nn.Module, path: Path, x: torch.Tensor, y: torch.Tensor,
                   device: torch.device, log: Callable[[str], None], where: str = "teacher") -> dict[str, Any]:
    """The teacher's accuracy on a sample of the training images: a refusal at chance (unless
    ``check_accuracy = false``), a warning near it; the numbers, for the log."""
    from igdm_kit._evaluation.stats import wilson

    correct, n, chance = sample_accuracy(teacher, x, y, device)
    lo, hi = wilson(correct, n)
    found = (f"teacher {str(path)!r} classifies {100.0 * correct / n:.1f}% ({lo:.1f}–{hi:.1f}) of {n:,} training "
             f"images correctly; chance is {chance:.1f}% (the largest class)")
    result = verdict(correct, n, chance)
    if result == "refuse" and _section(r, where).check_accuracy:
        raise CheckpointError(f"{found}: no better than chance",
                              "its classes are not the data's, or it is untrained: check the class order and "
                              f"the teacher file; set {where}.check_accuracy = false to train with it anyway")
    if result != "ok":
        log(f"warning: {found}: {'no better than' if result == 'refuse' else 'near'} chance"
            + (f" ({where}.check_accuracy = false: training anyway)" if result == "refuse" else
               "; are its classes the data's?"))
    else:
        log(f"teacher: {100.0 * correct / n:.1f}% correct on {n:,} training images (chance {chance:.1f}%)")
    return {"correct": correct, "n": n, "chance": chance}
