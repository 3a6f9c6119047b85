"""Teacher loaders: round trips, key unwrapping and prefix stripping, normalization buffers, architecture
mismatches, and files that must be refused (code in the pickle, HTML pages, truncated files).

The oracle of every round trip is the model whose weights were written: the loaded teacher must give
exactly its outputs. The code-running pickles would create a marker file; it must not exist afterwards.
"""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import igdm_kit
from igdm_kit._plugins.manager import registry
from igdm_kit._storage.checkpoint import save_model
from igdm_kit.errors import CheckpointError, IgdmKitError
from igdm_kit.factories import list_components

X = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def calibrated(model):
    """Non-trivial BatchNorm statistics, so eval-mode outputs depend on every buffer."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1)))
    for m in bns:
        m.momentum = 0.1
    return model.eval()


def make(name="small-cnn", num_classes=5, mean=None, std=None, **options):
    torch.manual_seed(0)
    opts = {"width": 4} if name == "small-cnn" and not options else options
    return calibrated(igdm_kit.create_model(name, num_classes=num_classes, image_size=16, mean=mean, std=std,
                                            **opts))


def builder(name="small-cnn", num_classes=5, mean=None, std=None, **options):
    opts = {"width": 4} if name == "small-cnn" and not options else options

    def build():
        torch.manual_seed(123)  # other weights than the file's, so a no-op load would be caught
        return igdm_kit.create_model(name, num_classes=num_classes, image_size=16, mean=mean, std=std, **opts)

    build.model_name = None  # an interfaces.ArchitectureBuilder that does not name its architecture
    build.num_classes, build.in_channels, build.image_size = num_classes, 3, 16  # the dataset's shape
    return build


def net_state(model) -> dict[str, torch.Tensor]:
    """What a training script saves: the network's state dict, without our Classifier's ``net.``."""
    return {k[len("net."):]: v for k, v in model.state_dict().items() if k.startswith("net.")}


def outputs(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(X)


def load(loader: str, path, build=None, **options):
    entry = registry("teacher_loader").entry(loader)
    return entry.component.load(entry.options_model.model_validate(options), path=str(path), build=build)


def test_registered_loaders():
    assert {"igdm-kit", "state-dict", "robustbench"} <= set(list_components("teacher_loader"))


# -- contract over every loader: round trip and wrong architecture ----------------------------------------
def write_native(tmp_path: Path, model) -> tuple[Path, dict]:
    meta = dict(model="small-cnn", model_options={"width": 4}, num_classes=5, in_channels=3, image_size=16,
                mean=None, std=None)
    return save_model(tmp_path / "teacher.safetensors", model, meta), {}


def write_state_dict(tmp_path: Path, model) -> tuple[Path, dict]:
    path = tmp_path / "teacher.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in net_state(model).items()}, "epoch": 7}, path)
    return path, {}


ROUND_TRIP = {"igdm-kit": write_native, "state-dict": write_state_dict}


@pytest.mark.parametrize("loader", sorted(ROUND_TRIP))
def test_round_trip_gives_the_same_outputs(loader, tmp_path):
    model = make()
    path, options = ROUND_TRIP[loader](tmp_path, model)
    teacher = load(loader, path, builder(), **options)
    assert not teacher.training
    torch.testing.assert_close(outputs(teacher), outputs(model), rtol=0, atol=0)


def test_every_loader_has_a_round_trip_test():
    # robustbench's round trip (full-size WRN-28-10) is below.
    assert set(list_components("teacher_loader")) <= set(ROUND_TRIP) | {"robustbench"}


@pytest.mark.parametrize("loader", ["state-dict", "robustbench"])
def test_wrong_architecture_is_one_line_naming_keys(loader, tmp_path):
    path = tmp_path / "resnet.pt"
    file_state = net_state(make("resnet18", num_classes=10))
    torch.save(file_state, path)
    if loader == "robustbench":
        options = {"name": "Chen2021LTD_WRN34_10", "dataset": "cifar10"}
        target = igdm_kit.create_model("wrn-34-10", num_classes=10)
    else:
        options, target = {}, builder("small-cnn")()
    with pytest.raises(CheckpointError) as err:
        load(loader, path, builder("small-cnn"), **options)
    text = str(err.value)
    assert "\n" not in text and "does not fit" in text
    model_keys = {k for k in target.state_dict() if k.startswith("net.")}
    file_keys = {f"net.{k}" for k in file_state}
    # BatchNorm step counters may be absent (files from PyTorch < 0.4.1), so they never count as missing.
    missing = {k for k in model_keys - file_keys if not k.endswith("num_batches_tracked")}
    first_missing, first_unexpected = min(missing), min(file_keys - model_keys)
    assert f"{len(missing)} missing key(s) ({first_missing}, " in text
    assert f"{len(file_keys - model_keys)} unexpected key(s) ({first_unexpected}, " in text


def test_native_loader_rejects_plain_weights_with_a_hint(tmp_path):
    path = tmp_path / "plain.safetensors"
    from safetensors.torch import save_file

    save_file(net_state(make()), str(path))
    with pytest.raises(CheckpointError, match="no igdm-kit metadata.*state-dict"):
        load("igdm-kit", path)


# -- state-dict: containers, prefixes, namespaces ------------------------------------------------------------
CONTAINERS = {
    "bare": lambda sd: sd,
    "state_dict": lambda sd: {"state_dict": sd, "best_acc": 0.5},
    "model": lambda sd: {"model": sd, "optimizer": {"lr": 0.1}},
    "model_state_dict": lambda sd: {"model_state_dict": sd, "epoch": 3, "acc": np.float64(0.75)},
    "nested": lambda sd: {"checkpoint": 1, "model": {"state_dict": sd}},
    "dataparallel": lambda sd: {f"module.{k}": v for k, v in sd.items()},
    "ddp+compile": lambda sd: {f"module._orig_mod.{k}": v for k, v in sd.items()},
    "script-wrapper": lambda sd: {f"model.{k}": v for k, v in sd.items()},
    "pre-0.4.1": lambda sd: {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")},
}


@pytest.mark.parametrize("kind", sorted(CONTAINERS))
def test_state_dict_containers_and_prefixes(kind, tmp_path):
    model = make()
    path = tmp_path / "w.pt"
    torch.save(CONTAINERS[kind](net_state(model)), path)
    teacher = load("state-dict", path, builder())
    torch.testing.assert_close(outputs(teacher), outputs(model), rtol=0, atol=0)


def test_keys_already_in_the_classifier_namespace(tmp_path):
    model = make(mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4))
    path = tmp_path / "whole.pt"
    torch.save(model.state_dict(), path)  # net.* and normalize.* keys
    teacher = load("state-dict", path, builder(mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4)))
    torch.testing.assert_close(outputs(teacher), outputs(model), rtol=0, atol=0)


def test_safetensors_weights_and_the_key_option(tmp_path):
    from safetensors.torch import save_file

    model = make()
    save_file(net_state(model), str(tmp_path / "w.safetensors"))
    torch.testing.assert_close(outputs(load("state-dict", tmp_path / "w.safetensors", builder())),
                               outputs(model), rtol=0, atol=0)
    save_file(net_state(model), str(tmp_path / "renamed.pt"))  # recognised by its header, not its name
    torch.testing.assert_close(outputs(load("state-dict", tmp_path / "renamed.pt", builder())),
                               outputs(model), rtol=0, atol=0)
    torch.save({"ema": net_state(model), "state_dict": {"junk": torch.zeros(1)}}, tmp_path / "ema.pt")
    torch.testing.assert_close(outputs(load("state-dict", tmp_path / "ema.pt", builder(), key="ema")),
                               outputs(model), rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="no entry 'nope'"):
        load("state-dict", tmp_path / "ema.pt", builder(), key="nope")


def test_file_normalization_buffers(tmp_path):
    """DeepMind-style files keep mean/std as top-level buffers of shape (C, 1, 1)."""
    mean, std = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
    model = make(mean=mean, std=std)
    state = net_state(model)
    state["mean"] = torch.tensor(mean).view(3, 1, 1)
    state["std"] = torch.tensor(std).view(3, 1, 1)
    path = tmp_path / "dm.pt"
    torch.save(state, path)
    # The recipe gives no normalization: the file's is used.
    torch.testing.assert_close(outputs(load("state-dict", path, builder())), outputs(model))
    # The recipe gives the same: fine.
    torch.testing.assert_close(outputs(load("state-dict", path, builder(mean=mean, std=std))), outputs(model))
    # The recipe contradicts the file: refused, naming both.
    with pytest.raises(CheckpointError, match=r"normalizes with mean \(0.4914.*built with mean \(0.5"):
        load("state-dict", path, builder(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)))


def test_shape_mismatch_names_the_key_and_both_shapes(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(net_state(make(num_classes=10)), path)
    with pytest.raises(CheckpointError, match=r"net\.\d+\.weight has shape \[10, 8\] in the file but "
                                              r"\[5, 8\] in the model") as err:
        load("state-dict", path, builder(num_classes=5))
    assert "num_classes" in err.value.hint


def test_sub_block1_gets_its_own_hint(tmp_path):
    model = make("wideresnet", depth=10, widen_factor=1, sub_block1=True)
    path = tmp_path / "ltd_like.pt"
    torch.save(net_state(model), path)
    with pytest.raises(CheckpointError, match="unexpected key.*sub_block1") as err:
        load("state-dict", path, builder("wideresnet", depth=10, widen_factor=1))
    assert "sub_block1 = true" in err.value.hint
    teacher = load("state-dict", path, builder("wideresnet", depth=10, widen_factor=1, sub_block1=True))
    torch.testing.assert_close(outputs(teacher), outputs(model), rtol=0, atol=0)


def test_state_dict_loader_needs_an_architecture(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(net_state(make()), path)
    with pytest.raises(CheckpointError, match="needs the teacher's architecture"):
        load("state-dict", path, None)


# -- files that must be refused -----------------------------------------------------------------------------
class RunsCode:
    """Unpickling this calls ``os.system`` — it would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class TouchesPath:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("fmt", ["pickle-protocol-2", "pickle-protocol-4", "torch-save-zip"])
def test_pickle_that_would_run_code_is_refused_without_running(fmt, tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    if fmt == "torch-save-zip":
        torch.save({"weight": torch.zeros(2), "payload": TouchesPath(marker)}, path)
    else:
        with open(path, "wb") as fh:
            pickle.dump({"weight": RunsCode(marker)}, fh, protocol=int(fmt[-1]))
    with pytest.raises(CheckpointError) as err:
        load("state-dict", path, builder())
    assert not marker.exists()
    text = str(err.value)
    assert "\n" not in text and "refused" in text
    assert ("system" in text) or ("Path" in text) or ("touch" in text)


def test_a_pickled_whole_module_is_refused_with_a_resave_hint(tmp_path):
    path = tmp_path / "module.pt"
    torch.save(make(), path)
    with pytest.raises(CheckpointError, match="refused") as err:
        load("state-dict", path, builder())
    assert "state_dict()" in err.value.hint


BAD_FILES = {
    "html": (lambda p: p.write_text("<!DOCTYPE html>\n<html><head><title>Google Drive - Virus scan warning"
                                    "</title></head><body></body></html>"), "HTML page"),
    "truncated": (None, "truncated or corrupt"),
    "empty": (lambda p: p.write_bytes(b""), "empty"),
    "text": (lambda p: p.write_text("these are not weights\n" * 20), "not a PyTorch weights file"),
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_files_give_one_clear_line(kind, tmp_path):
    path = tmp_path / "weights.pt"
    write, expected = BAD_FILES[kind]
    if write is None:
        torch.save(net_state(make()), path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        write(path)
    with pytest.raises(CheckpointError) as err:
        load("state-dict", path, builder())
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load("state-dict", tmp_path / "nope.pt", builder())


# -- robustbench -------------------------------------------------------------------------------------------
#: DeepMind's CIFAR constants (deepmind-research adversarial_robustness), which RobustBench uses.
DM_CIFAR100 = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))


def test_robustbench_zoo_table():
    from igdm_kit_plugins.teachers.robustbench import ZOO

    for dataset in ("cifar10", "cifar100"):
        ltd = ZOO[("Chen2021LTD_WRN34_10", dataset)]
        assert ltd.model == "wrn-34-10" and ltd.mean is None and ltd.model_options["layout"] == "trades"
        assert ltd.model_options.get("sub_block1", False) == (dataset == "cifar100")
        for name in ("Wang2023Better_WRN-28-10", "Cui2023Decoupled_WRN-28-10"):
            e = ZOO[(name, dataset)]
            assert e.model == "wrn-28-10" and e.model_options == {"activation": "silu", "layout": "deepmind"}
    assert (ZOO[("Wang2023Better_WRN-28-10", "cifar100")].mean,
            ZOO[("Wang2023Better_WRN-28-10", "cifar100")].std) == DM_CIFAR100


def test_robustbench_round_trip_wrn_28_10_silu(tmp_path):
    """A DM-Improves-AT style file (DataParallel keys, no mean/std buffers) in RobustBench's cache layout."""
    for name in [m for m in sys.modules if m == "robustbench" or m.startswith("robustbench.")]:
        del sys.modules[name]  # other tests may have loaded the optional package; this load must not
    mean, std = DM_CIFAR100
    torch.manual_seed(0)
    reference = igdm_kit.create_model("wrn-28-10", num_classes=100, activation="silu", mean=mean, std=std)
    calibrated(reference)
    folder = tmp_path / "models" / "cifar100" / "Linf"
    folder.mkdir(parents=True)
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in net_state(reference).items()}},
               folder / "Wang2023Better_WRN-28-10.pt")
    teacher = load("robustbench", tmp_path / "models", name="Wang2023Better_WRN-28-10", dataset="cifar100")
    x = X[:1]
    with torch.no_grad():
        torch.testing.assert_close(teacher(x), reference.eval()(x), rtol=0, atol=0)
    assert "robustbench" not in sys.modules  # the package stays optional and unused


def test_robustbench_file_mean_std_buffers_win(tmp_path):
    """RobustBench's DMWideResNet stores mean/std buffers; its strict load uses the file's values."""
    file_mean, file_std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    torch.manual_seed(0)
    reference = calibrated(igdm_kit.create_model("wrn-28-10", num_classes=10, activation="silu",
                                                 mean=file_mean, std=file_std))
    state = net_state(reference)
    state["mean"], state["std"] = torch.tensor(file_mean).view(3, 1, 1), torch.tensor(file_std).view(3, 1, 1)
    torch.save(state, tmp_path / "Cui2023Decoupled_WRN-28-10.pt")
    teacher = load("robustbench", tmp_path, name="Cui2023Decoupled_WRN-28-10", dataset="cifar10")
    with torch.no_grad():
        torch.testing.assert_close(teacher(X[:1]), reference(X[:1]), rtol=0, atol=0)


def test_robustbench_missing_file_and_bad_options(tmp_path):
    with pytest.raises(CheckpointError, match="no RobustBench checkpoint Chen2021LTD_WRN34_10.pt") as err:
        load("robustbench", tmp_path, name="Chen2021LTD_WRN34_10", dataset="cifar100")
    assert "load_model" in err.value.hint and "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="does not exist"):
        load("robustbench", tmp_path / "x.pt", name="Chen2021LTD_WRN34_10", dataset="cifar100")
    with pytest.raises(IgdmKitError):
        igdm_kit.factories.validate_options("teacher_loader", "robustbench",
                                             {"name": "Gowal2020Uncovering", "dataset": "cifar10"})
