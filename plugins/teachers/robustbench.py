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
==============================  ========  =================================================  ============

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
from igdm_kit.interfaces import Options

from .weights import find_state_dict, fit, read_weights

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)

Dataset = Literal["cifar10", "cifar100"]
Threat = Literal["Linf", "L2", "corruptions"]


@dataclass(frozen=True)
class ZooEntry:
    model: str
    model_options: dict = field(default_factory=dict)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


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
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}


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


class RobustBenchLoader:
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
        from igdm_kit.factories import create_model

        entry = ZOO[(options.name, options.dataset)]
        file = resolve_path(path, options.name, options.dataset)
        model = create_model(entry.model, num_classes=NUM_CLASSES[options.dataset], in_channels=3,
                             image_size=32, mean=entry.mean, std=entry.std, **entry.model_options)
        state = find_state_dict(read_weights(file), file)
        return fit(model, state, file, arch=f"{options.name} ({entry.model}, {options.dataset})",
                   adopt_normalization=True,
                   hint=f"is this the {options.name} checkpoint for {options.dataset}? check the name and "
                        "dataset options")

    @classmethod
    def _from_package(cls, options: Options, path: str):
        """Any zoo model: RobustBench's architecture, the file's weights read without running code."""
        from igdm_kit.nn import Classifier

        entry = package_zoo(options.dataset, options.threat_model)[options.name]
        file = resolve_path(path, options.name, options.dataset, options.threat_model)
        model = Classifier(entry["model"]())  # its normalization, if any, is inside RobustBench's model
        state = find_state_dict(read_weights(file), file)
        return fit(model, state, file, arch=f"RobustBench's {options.name} ({options.dataset}, "
                   f"{options.threat_model})",
                   hint=f"is this the {options.name} checkpoint for {options.dataset}? check the name and "
                        "dataset options")
