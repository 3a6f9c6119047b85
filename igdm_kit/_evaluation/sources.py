"""Any model to judge: an igdm-kit checkpoint, or a file a teacher loader reads (a RobustBench checkpoint
by its name, plain PyTorch weights with the architecture named) — through the same loaders a recipe's
``[teacher]`` uses, so a teacher is judged with the same command as its student.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from igdm_kit.errors import IgdmKitError


@dataclass
class Source:
    """Where a model comes from, as ``igdm-kit eval``/``analyze`` take it."""

    path: Path
    loader: str = "auto"
    name: str | None = None  # RobustBench model name
    arch: str | None = None  # a registered model, for plain weights
    arch_options: dict[str, Any] = field(default_factory=dict)

    def is_native(self) -> bool:
        from igdm_kit.factories import default_loader

        auto_native = self.path.is_dir() or default_loader(self.path) == "igdm-kit"  # a folder: say so
        return (self.loader == "auto" and auto_native) or self.loader == "igdm-kit"


def dataset_for(checkpoint: Path, meta: dict[str, Any], name: str | None,
                given: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """The dataset to evaluate on: ``--dataset`` or the checkpoint's ``dataset`` metadata (name, options),
    ``given`` (``--data-opt``) over the recorded options of the same dataset."""
    recorded = meta.get("dataset")
    rec_name, rec_opts = None, {}
    if isinstance(recorded, dict):
        rec_name, rec_opts = recorded.get("name"), dict(recorded.get("options") or {})
    elif isinstance(recorded, str):
        rec_name = recorded
    if name is None:
        if rec_name is None:
            raise IgdmKitError(f"checkpoint {str(checkpoint)!r} does not record its dataset",
                               "pass --dataset NAME (see `igdm-kit plugins list`)")
        return rec_name, {**rec_opts, **(given or {})}
    return name, {**(rec_opts if name == rec_name else {}), **(given or {})}


def open_dataset(name: str, options: dict[str, Any]):
    """The dataset plugin; its options' errors name ``--data-opt``, the flag that sets them."""
    from igdm_kit.factories import create_dataset

    try:
        return create_dataset(name, **options)
    except IgdmKitError as exc:
        if not exc.message.startswith("data."):
            raise
        key = exc.message.split(":", 1)[0].removeprefix("data.")
        raise IgdmKitError(exc.message, f"set it with --data-opt {key}=VALUE"
                           + (f" ({exc.hint})" if exc.hint else "")) from None


def check_fits(checkpoint: Path, meta: dict[str, Any], name: str, info) -> None:
    """A checkpoint's recorded classes, channels and image size against the dataset's."""
    for key, want in (("num_classes", info.num_classes), ("in_channels", info.in_channels),
                      ("image_size", info.image_size)):
        have = meta.get(key)
        if have is not None and want != have:
            raise IgdmKitError(f"checkpoint {str(checkpoint)!r} has {key}={have} but dataset {name!r} has {want}",
                               "pass the --dataset the model was trained on")


def _loader(source: Source, dataset: str) -> tuple[str, dict[str, Any]]:
    """The teacher loader that reads a foreign file, and its options from the command line, read off its
    ``Options``: ``--name`` is its ``name`` option, and the dataset fills its ``dataset`` option if it has one."""
    from igdm_kit._plugins.manager import registry

    loader = source.loader if source.loader != "auto" else "state-dict"
    fields = registry("teacher_loader").entry(loader).options_model.model_fields
    options: dict[str, Any] = {"dataset": dataset} if "dataset" in fields else {}
    if source.name is not None:
        if "name" not in fields:
            raise IgdmKitError(f"--name {source.name!r} is not an option of the {loader!r} loader",
                               "drop it: it names the model for loaders that take a name (--loader robustbench)")
        options["name"] = source.name
    elif "name" in fields and fields["name"].is_required():
        raise IgdmKitError(f"the {loader!r} loader needs the model's name", "pass --name, e.g. "
                           "--name Chen2021LTD_WRN34_10")
    return loader, options


def protocol(source: Source, dataset: str | None):
    """The benchmark protocol a foreign file's loader names for it (``TeacherLoader.protocol``); None for an
    igdm-kit checkpoint, whose run recorded how it was evaluated."""
    from igdm_kit.factories import teacher_protocol

    if source.is_native() or dataset is None:
        return None
    return teacher_protocol(*_loader(source, dataset))


def load(source: Source, dataset: str | None, device: Any, data_options: dict[str, Any] | None = None):
    """(model in eval mode on ``device``, checkpoint metadata ({} for foreign files), dataset name, its
    options). Foreign files need ``dataset`` (their classes and image size come from it); ``data_options``
    (``--data-opt``) go over the options the checkpoint recorded."""
    from igdm_kit._storage.checkpoint import load_model, read_metadata
    from igdm_kit.factories import create_teacher

    if source.is_native():
        meta = read_metadata(source.path)
        name, options = dataset_for(source.path, meta, dataset, data_options)
        check_fits(source.path, meta, name, open_dataset(name, options).info())
        return load_model(source.path, device=str(device)), meta, name, options
    if dataset is None:
        raise IgdmKitError(f"{str(source.path)!r} is not an igdm-kit checkpoint, so its dataset is unknown",
                           "pass --dataset NAME (e.g. cifar10)")
    options = dict(data_options or {})
    info = open_dataset(dataset, options).info()
    loader, loader_options = _loader(source, dataset)
    model = create_teacher(source.path, loader=loader, loader_options=loader_options, model=source.arch,
                           model_options=source.arch_options, num_classes=info.num_classes,
                           in_channels=info.in_channels, image_size=info.image_size, device=device)
    return model, {}, dataset, options
