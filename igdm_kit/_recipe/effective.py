"""The values a recipe runs with that it does not write: what the dataset decides (random-crop padding,
horizontal flips, normalization), what a component decides itself (``Options.effective_defaults``, e.g. a
WRN's parameter layout), the run's epochs for a module's ramp, this machine's CPU threads, the final
evaluation's headline checkpoint. ``recipe show`` prints each as a comment with where it comes from,
so a default that changes results is seen (digits: PGD-20 79.4 % with flips, 85.8 % without).

Shown, never written into the resolved recipe: the recipe's digest stays what it was.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from igdm_kit._recipe.toml import Words, value_text
from igdm_kit._recipe.validate import Recipe
from igdm_kit.errors import IgdmKitError
from igdm_kit.interfaces import DatasetInfo

Notes = dict[str, dict[str, tuple[Any, str]]]
#: The dataset-decided values a run's log line names: its training augmentation.
AUGMENTATION = ("crop_padding", "hflip")


def effective_defaults(r: Recipe) -> Notes:
    """table → key → (value, where it comes from) for the keys the recipe leaves to someone else."""
    notes: Notes = {"data": dataset_defaults(r)}
    for section in ("data", "student", "method", "module", "attack"):  # what each component decides itself
        options = r.components.get(section)
        if options is not None:
            notes.setdefault(section, {}).update(options.effective_defaults())
    module = r.components.get("module")
    if module is not None:
        from igdm_kit.interfaces.training import ModuleOptions

        if isinstance(module, ModuleOptions) and module.ramp_epochs is None:
            notes["module"]["ramp_epochs"] = (r.model.train.epochs, "the run's epochs")
    if r.model.train.threads is None:
        from igdm_kit._runtime.threads import resolve

        why = "this machine's default: the physical cores available; --threads and IGDM_KIT_THREADS override it"
        notes["train"] = {"threads": (resolve(None), why)}
    ev: dict[str, tuple[Any, str]] = {}
    if r.model.eval.limit is None:
        ev["limit"] = (Words("all"), "the whole test split")
    if r.model.eval.checkpoints == ["last"]:
        ev["checkpoints"] = (["last"], "the default: results.json and model.safetensors are the last epoch")
    notes["eval"] = ev
    return {table: keys for table, keys in notes.items() if keys}


def dataset_defaults(r: Recipe) -> dict[str, tuple[Any, str]]:
    """The dataset's own values of the ``DatasetInfo`` fields the recipe's ``[data]`` leaves unset."""
    from igdm_kit.factories import create_dataset

    options = r.components["data"].model_dump()
    fields = {f.name for f in dataclasses.fields(DatasetInfo)}
    unset = [k for k, v in options.items() if v is None and k in fields]
    if not unset:
        return {}
    name = r.model.data.name
    try:
        info = dataclasses.asdict(create_dataset(name, r.components["data"]).info())
    except IgdmKitError as exc:  # e.g. an image folder that is not there yet: the dataset cannot say
        return {k: (Words("?"), f"the {name} dataset's default; it cannot tell yet: {exc.message}") for k in unset}
    out: dict[str, tuple[Any, str]] = {}
    for key in unset:
        value = info[key]
        if value is None:  # mean/std: no normalization layer
            out[key] = (Words("none"), "the model sees [0, 1] images")
        else:
            out[key] = (list(value) if isinstance(value, tuple) else value, f"the {name} dataset's default")
    return out


def dataset_line(r: Recipe) -> str | None:
    """One log line of the augmentation the dataset decided for this run (``None`` when the recipe set it)."""
    shown = {k: v for k, (v, _) in dataset_defaults(r).items() if k in AUGMENTATION}
    if not shown:
        return None
    return (f"data: {', '.join(f'{k} = {value_text(v)}' for k, v in shown.items())} (the {r.model.data.name} "
            "dataset's augmentation defaults; set them in [data] to change them)")
