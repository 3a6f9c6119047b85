"""Teacher loader for the RobustBench checkpoints the paper distils from (Section 4.1, Table 1).

The user downloads the file (with RobustBench, or from its model zoo) and points the recipe at it; the
``robustbench`` package itself is never imported. The model name and dataset pick the architecture and
the input normalization, from RobustBench's model zoo (``robustbench/model_zoo/cifar10.py``,
``cifar100.py`` and ``architectures/dm_wide_resnet.py``, L∞ threat model):

==============================  ========  =================================================  ============
name                            dataset   architecture                                       normalization
==============================  ========  =================================================  ============
Chen2021LTD_WRN34_10 (LTD)      cifar10   WideResNet-34-10, ReLU, TRADES layout              none
Chen2021LTD_WRN34_10 (LTD)      cifar100  same, plus the unused ``sub_block1`` group          none
Wang2023Better_WRN-28-10 (BDM)  both      DMWideResNet-28-10, Swish (SiLU), DeepMind layout   CIFAR mean/std
Cui2023Decoupled_WRN-28-10      both      DMWideResNet-28-10, Swish (SiLU), DeepMind layout   CIFAR mean/std
Gowal2021Improving (SAAD)       cifar10   DMWideResNet-28-10, Swish (SiLU), DeepMind layout   CIFAR mean/std
Salman2020Do_R18                imagenet  torchvision ResNet-18 (as timm ``resnet18``)        ImageNet
Salman2020Do_R50                imagenet  torchvision ResNet-50 (as timm ``resnet50``)        ImageNet
Salman2020Do_50_2               imagenet  Wide-ResNet-50-2 (timm ``wide_resnet50_2``)        ImageNet
Engstrom2019Robustness          imagenet  torchvision ResNet-50 (as timm ``resnet50``)        ImageNet
Wong2020Fast                    imagenet  torchvision ResNet-50 (as timm ``resnet50``)        ImageNet
==============================  ========  =================================================  ============

The ImageNet rows are RobustBench's ``model_zoo/imagenet.py`` (robustbench 1.1.1, L∞):
``normalize_model(torchvision.models.<arch>(), mu, sigma)`` with ImageNet's mean (0.485, 0.456, 0.406) and
std (0.229, 0.224, 0.225); timm's ResNets have torchvision's layer names and arithmetic, so the same file
gives the same logits (``tests/test_robustbench_imagenet.py`` checks it against RobustBench's own code).
They need the ``timm`` extra, not the ``robustbench`` one. Their files hold the torchvision network's state
dict (RobustBench adds the ``model.`` of its wrapper itself); every other ImageNet zoo model (ConvNeXt,
Swin, ViT with ConvStem, ...) is built by the package, and when it is ``normalize_model``'s wrapper its
normalization becomes igdm-kit's layer in front of the network, so the file's keys read the same way.
``ZooEntry.preprocessing`` (and the package's ``preprocessing`` entry) names the test-time transform RobustBench
evaluates the model with (``Res256Crop224``, ``Crop288``, ``BicubicRes256Crop224``, ...).

CIFAR mean/std are DeepMind's constants (CIFAR-10: mean (0.4914, 0.4822, 0.4465), std (0.2471, 0.2435,
0.2616); CIFAR-100: mean (0.5071, 0.4865, 0.4409), std (0.2673, 0.2564, 0.2762)), from RobustBench's
``dm_wide_resnet.py``. The LTD rows were read in RobustBench's zoo files. The zoo copies in the reference
index predate RobustBench's 2023 entries, so the two WRN-28-10 rows rest on the authors' code the entries
point to (Wang2023Better: ``wzekai99/DM-Improves-AT``, ``core/models/wideresnetwithswish.py`` — DeepMind's
layout with ``nn.SiLU`` and those constants, kept as plain attributes, i.e. *not* in its state dict) and
on Cui2023Decoupled's (RobustBench issue #143: WRN-28-10 trained with 50M generated images; its
repository ``jiequancui/DKL`` evaluates it with the same ``wideresnetwithswish`` model). When a file
does carry ``mean``/``std`` buffers (RobustBench's ``DMWideResNet`` registers them), those are used,
exactly as RobustBench's strict ``load_state_dict`` does.

Any other model of RobustBench's zoo loads by name when the ``robustbench`` package is installed (the
``robustbench`` extra): its own architecture definition (``robustbench.model_zoo``) is built and the file's
weights are loaded into it with the same safe reader (its normalization is part of its architecture).
Without the package, an unknown name is one line naming ``teacher.loader_options.name``, close matches
and the ``state-dict`` route.

``path`` may be the ``.pt`` file, or a folder holding ``<name>.pt`` or RobustBench's cache layout
``<dataset>/<threat>/<name>.pt``. The recipe's teacher model, if any, is not used: the name decides.
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from igdm_kit.errors import CheckpointError
from igdm_kit.interfaces import Options, TeacherLoader

from .robustbench_protocol import robustbench_protocol
from .weights import find_state_dict, fit, read_weights

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

Dataset = Literal["cifar10", "cifar100", "imagenet"]
Threat = Literal["Linf", "L2", "corruptions"]


@dataclass(frozen=True)
class ZooEntry:
    model: str
    model_options: dict = field(default_factory=dict)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    preprocessing: str | None = None  # RobustBench's test-time transform (ImageNet); None: the images as they are


_DM = {"activation": "silu", "layout": "deepmind"}
ZOO: dict[tuple[str, str], ZooEntry] = {
    ("Chen2021LTD_WRN34_10", "cifar10"): ZooEntry("wrn-34-10", {"activation": "relu", "layout": "trades"}),
    ("Chen2021LTD_WRN34_10", "cifar100"): ZooEntry(
        "wrn-34-10", {"activation": "relu", "layout": "trades", "sub_block1": True}),
    ("Wang2023Better_WRN-28-10", "cifar10"): ZooEntry("wrn-28-10", _DM, CIFAR10_MEAN, CIFAR10_STD),
    ("Wang2023Better_WRN-28-10", "cifar100"): ZooEntry("wrn-28-10", _DM, CIFAR100_MEAN, CIFAR100_STD),
    ("Cui2023Decoupled_WRN-28-10", "cifar10"): ZooEntry("wrn-28-10", _DM, CIFAR10_MEAN, CIFAR10_STD),
    ("Cui2023Decoupled_WRN-28-10", "cifar100"): ZooEntry("wrn-28-10", _DM, CIFAR100_MEAN, CIFAR100_STD),
    # SAAD's teacher: RobustBench 1.1.1's model_zoo/cifar10.py builds it as DMWideResNet(depth 28, width 10,
    # activation_fn=Swish, CIFAR-10 mean/std); its Swish is x·sigmoid(x), the function nn.SiLU computes
    ("Gowal2021Improving_28_10_ddpm_100m", "cifar10"): ZooEntry("wrn-28-10", _DM, CIFAR10_MEAN, CIFAR10_STD),
}


def _torchvision_like(arch: str, preprocessing: str = "Res256Crop224") -> ZooEntry:
    return ZooEntry("timm", {"arch": arch}, IMAGENET_MEAN, IMAGENET_STD, preprocessing)


ZOO.update({
    ("Salman2020Do_R18", "imagenet"): _torchvision_like("resnet18"),
    ("Salman2020Do_R50", "imagenet"): _torchvision_like("resnet50"),
    ("Salman2020Do_50_2", "imagenet"): _torchvision_like("wide_resnet50_2"),
    ("Engstrom2019Robustness", "imagenet"): _torchvision_like("resnet50"),
    ("Wong2020Fast", "imagenet"): _torchvision_like("resnet50", "Crop288"),
})
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}
IMAGE_SIZE = {"cifar10": 32, "cifar100": 32, "imagenet": 224}


def package_zoo(dataset: str, threat: str) -> dict | None:
    """RobustBench's own model table for (dataset, threat) when the package is installed and imports, else
    None. Decided by importing it: torchattacks' wheel ships a ``robustbench`` of its own that fails to import
    without ``pkg_resources``, so a module that is merely findable is not RobustBench."""
    tables = _package_tables()
    if tables is None:
        return None
    model_dicts, benchmark, threats = tables
    return model_dicts[benchmark(dataset)].get(threats(threat), {})


@functools.cache
def _package_tables():
    import importlib.util
    import sys
    import warnings

    if importlib.util.find_spec("autoattack") is None and importlib.util.find_spec("pyautoattack") is not None:
        # robustbench 1.1.1 imports AutoAttack's official code by its git name; PyPI ships it as pyautoattack
        import pyautoattack

        sys.modules.setdefault("autoattack", pyautoattack)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its imports warn about pkg_resources and torch.jit
            from robustbench.model_zoo import model_dicts
            from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
    except Exception:  # noqa: BLE001 - absent, another wheel's stand-in, or broken: not usable here
        return None
    return model_dicts, BenchmarkDataset, ThreatModel


def unknown_name(name: str, dataset: str, threat: str) -> str:
    """The one-line explanation for a name neither table knows."""
    known = sorted({n for n, d in ZOO if d == dataset} | set(package_zoo(dataset, threat) or {}))
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.4)
    where = "RobustBench's zoo" if package_zoo(dataset, threat) is not None else \
        "the built-in table (install igdm-kit[robustbench] for every zoo model)"
    return (f"unknown RobustBench model {name!r} for {dataset} {threat} in {where}"
            + (f"; did you mean {', '.join(map(repr, close))}?" if close else f"; known: {', '.join(known)}")
            + "; or load the file with loader = \"state-dict\" and the teacher's model = \"<architecture>\"")


def resolve_path(path: str | Path, name: str, dataset: str, threat: str = "Linf") -> Path:
    """The checkpoint file: ``path`` itself, or ``<name>.pt`` / ``<dataset>/<threat>/<name>.pt`` inside it."""
    path = Path(path)
    if path.is_dir():
        for candidate in (path / f"{name}.pt", path / dataset / threat / f"{name}.pt"):
            if candidate.is_file():
                return candidate
        raise CheckpointError(
            f"no RobustBench checkpoint {name}.pt for {dataset} in {str(path)!r} (looked for {name}.pt and "
            f"{dataset}/Linf/{name}.pt)",
            f"download it, e.g. robustbench.utils.load_model(model_name={name!r}, dataset={dataset!r}, "
            f"threat_model='Linf') saves it under models/{dataset}/Linf/, and set the teacher path")
    if not path.is_file():
        raise CheckpointError(
            f"RobustBench checkpoint {str(path)!r} does not exist",
            f"download {name} ({dataset}, Linf) from the RobustBench model zoo, e.g. with "
            f"robustbench.utils.load_model, and set the teacher path to the .pt file")
    return path


class RobustBenchLoader(TeacherLoader):
    description = "a RobustBench checkpoint on disk (LTD, BDM-AT, IKL-AT teachers): architecture by name"

    class Options(Options):
        dataset: Dataset = Field(..., description="the dataset the checkpoint was trained on")
        threat_model: Threat = Field("Linf", description="the RobustBench leaderboard the model is on")
        name: str = Field(..., description="RobustBench model name, e.g. Chen2021LTD_WRN34_10")

        @field_validator("name")
        @classmethod
        def _known(cls, name: str, info: ValidationInfo) -> str:
            dataset, threat = info.data.get("dataset"), info.data.get("threat_model", "Linf")
            if dataset is None or (name, dataset) in ZOO and threat == "Linf":
                return name
            if name not in (package_zoo(dataset, threat) or {}):
                raise ValueError(unknown_name(name, dataset, threat))
            return name

    @classmethod
    def load(cls, options: Options, *, path: str, build=None):
        if (options.name, options.dataset) not in ZOO or options.threat_model != "Linf":
            return cls._from_package(options, path)
        file = resolve_path(path, options.name, options.dataset)
        state = find_state_dict(read_weights(file), file)
        model = _build_entry(ZOO[(options.name, options.dataset)], options.dataset)
        try:
            return fit(model, state, file, arch=f"{options.name} ({ZOO[(options.name, options.dataset)].model}, "
                       f"{options.dataset})", adopt_normalization=True,
                       hint=f"is this the {options.name} checkpoint for {options.dataset}? check the name and "
                            "dataset options")
        except CheckpointError as err:
            raise _with_fitting_names(err, state, options) from None

    @classmethod
    def protocol(cls, options: Options):
        """RobustBench's protocol for this model's leaderboard (``robustbench_protocol``)."""
        if (options.name, options.dataset) in ZOO and options.threat_model == "Linf":
            preprocessing = ZOO[(options.name, options.dataset)].preprocessing
        else:
            preprocessing = package_zoo(options.dataset, options.threat_model)[options.name].get("preprocessing")
        return robustbench_protocol(options.name, options.dataset, options.threat_model, preprocessing)

    @classmethod
    def _from_package(cls, options: Options, path: str):
        """Any zoo model: RobustBench's architecture, the file's weights read without running code."""
        entry = package_zoo(options.dataset, options.threat_model)[options.name]
        file = resolve_path(path, options.name, options.dataset, options.threat_model)
        model = _unwrap(entry["model"]())  # its normalization, if any, is inside RobustBench's model
        state = find_state_dict(read_weights(file), file)
        try:
            return fit(model, state, file, arch=f"RobustBench's {options.name} ({options.dataset}, "
                       f"{options.threat_model})",
                       hint=f"is this the {options.name} checkpoint for {options.dataset}? check the name and "
                            "dataset options")
        except CheckpointError as err:
            raise _with_fitting_names(err, state, options) from None


def _build_entry(entry: ZooEntry, dataset: str):
    from igdm_kit.factories import create_model

    return create_model(entry.model, num_classes=NUM_CLASSES[dataset], in_channels=3,
                        image_size=IMAGE_SIZE[dataset], mean=entry.mean, std=entry.std, **entry.model_options)


def _unwrap(net):
    """RobustBench's ``normalize_model`` wrapper (``Sequential(normalize=ImageNormalizer, model=net)``) as an
    igdm-kit ``Classifier`` whose ``Normalize`` holds the same mean/std; any other network as it is (its
    normalization, if any, stays inside it). The file's keys are the inner network's, as RobustBench reads
    them (it strips ``module.``/``model.`` and adds ``model.`` back for the wrapper)."""
    from igdm_kit.nn import Classifier

    children = dict(net.named_children())
    buffers = dict(children["normalize"].named_buffers()) if "normalize" in children else {}
    if list(children) == ["normalize", "model"] and {"mean", "std"} <= buffers.keys():
        return Classifier(children["model"], buffers["mean"].reshape(-1).tolist(),
                          buffers["std"].reshape(-1).tolist())
    return Classifier(net)


def fitting_names(state: dict, dataset: str) -> list[str]:
    """The built-in table's names for ``dataset`` whose architecture takes exactly ``state``'s keys and shapes
    (built on the meta device: no memory, no weights)."""
    import torch

    found, seen = [], {}
    want = {k.removeprefix("model."): tuple(v.shape) for k, v in state.items()
            if k not in {"mean", "std", "mu", "sigma"} and not k.endswith("num_batches_tracked")}
    for (name, ds), entry in ZOO.items():
        if ds != dataset:
            continue
        key = (entry.model, tuple(sorted(entry.model_options.items())))
        if key not in seen:
            try:
                with torch.device("meta"):
                    built = _build_entry(entry, dataset)
            except Exception:  # noqa: BLE001 - e.g. timm absent: that row cannot be compared
                seen[key] = None
            else:
                seen[key] = {k[len("net."):]: tuple(v.shape) for k, v in built.state_dict().items()
                             if k.startswith("net.") and not k.endswith("num_batches_tracked")}
        shapes = seen[key]
        if shapes is not None and want == shapes:
            found.append(name)
    return found


def _with_fitting_names(err: CheckpointError, state: dict, options) -> CheckpointError:
    """The mismatch error, its hint naming the zoo names the file would fit (or saying none does)."""
    names = [n for n in fitting_names(state, options.dataset) if n != options.name]
    hint = (f"the file fits {', '.join(names)}: name the one it is (teacher.loader_options.name, or --name)"
            if names else
            f"no {options.dataset} model of the built-in table fits the file either; is it the {options.name} "
            f"checkpoint for {options.dataset}?")
    return CheckpointError(err.message, hint)
