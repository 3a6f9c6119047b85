"""RobustBench's ImageNet L∞ teachers by name (issue 23).

The oracle is RobustBench's own code: its architecture (``robustbench.model_zoo``) gets random weights, they
are written as a RobustBench-format checkpoint in its cache layout (``<dir>/imagenet/Linf/<name>.pt``) and read
back by ``robustbench.utils.load_model`` itself; igdm-kit's teacher loader must give the very same logits
from that file (built-in rows: a timm network, no robustbench import; other names: the package's
architecture, its ``normalize_model`` wrapper turned into igdm-kit's normalization layer).
"""

from __future__ import annotations

import warnings

import pytest
import torch

import igdm_kit
from igdm_kit._plugins.manager import registry
from igdm_kit.errors import CheckpointError, IgdmKitError

pytest.importorskip("timm")


def _zoo():
    from igdm_kit_plugins.teachers.robustbench import package_zoo

    zoo = package_zoo("imagenet", "Linf")
    if zoo is None:
        pytest.skip("the robustbench extra is not installed (pip install 'igdm-kit[robustbench]')")
    return zoo


def load(path, **options):
    entry = registry("teacher_loader").entry("robustbench")
    return entry.component.load(entry.options_model.model_validate(options), path=str(path))


def randomized(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter and BatchNorm statistic random (a file that a no-op or partial load would betray)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if name.endswith(("normalize.mean", "normalize.std")) or not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.05)
    return model.eval()


def write_robustbench_file(folder, name: str, inner: torch.nn.Module, wrapped: bool) -> None:
    """What RobustBench's download leaves: ``{"state_dict": {"module.<key>": ...}}`` of the network (without
    the ``normalize_model`` wrapper's ``model.``, which its loader adds back)."""
    state = inner.model.state_dict() if wrapped else inner.state_dict()
    path = folder / "imagenet" / "Linf" / f"{name}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)


def robustbench_reads(folder, name: str) -> torch.nn.Module:
    from robustbench.utils import load_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model(model_name=name, model_dir=str(folder), dataset="imagenet", threat_model="Linf").eval()


@pytest.mark.parametrize(("name", "size"), [("Salman2020Do_R18", 64), ("Salman2020Do_R50", 64),
                                            ("Engstrom2019Robustness", 64),
                                            ("Singh2023Revisiting_ConvNeXt-T-ConvStem", 224)])
def test_imagenet_zoo_names_give_robustbench_logits(tmp_path, name, size):
    zoo = _zoo()
    torch.manual_seed(0)
    source = randomized(zoo[name]["model"](), seed=1)
    wrapped = [n for n, _ in source.named_children()] == ["normalize", "model"]
    write_robustbench_file(tmp_path, name, source, wrapped)
    theirs = robustbench_reads(tmp_path, name)
    ours = load(tmp_path, name=name, dataset="imagenet")
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = theirs(x)
        torch.testing.assert_close(expected, source(x), rtol=0, atol=0)  # RobustBench read its file back
        torch.testing.assert_close(ours(x), expected, rtol=0, atol=0)
    assert expected.shape == (2, 1000) and expected.std() > 0


def test_builtin_imagenet_rows_need_no_robustbench(tmp_path):
    """The built-in rows are timm networks with ImageNet's normalization in front (no package import)."""
    import sys

    from igdm_kit_plugins.teachers.robustbench import IMAGENET_MEAN, IMAGENET_STD, ZOO

    for module in [m for m in sys.modules if m == "robustbench" or m.startswith("robustbench.")]:
        del sys.modules[module]
    entry = ZOO[("Salman2020Do_R18", "imagenet")]
    assert (entry.model, entry.model_options, entry.preprocessing) == ("timm", {"arch": "resnet18"},
                                                                       "Res256Crop224")
    assert ZOO[("Wong2020Fast", "imagenet")].preprocessing == "Crop288"
    torch.manual_seed(0)
    writer = randomized(igdm_kit.create_model("timm", num_classes=1000, image_size=224, mean=IMAGENET_MEAN,
                                              std=IMAGENET_STD, arch="resnet18"), seed=3)
    torch.save({k[len("net."):]: v for k, v in writer.state_dict().items() if k.startswith("net.")},
               tmp_path / "Salman2020Do_R18.pt")
    teacher = load(tmp_path, name="Salman2020Do_R18", dataset="imagenet")
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(teacher(x), writer(x), rtol=0, atol=0)
        # the normalization is ImageNet's, computed here from its definition
        mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        torch.testing.assert_close(teacher.net(((x.double() - mean.double()) / std.double()).float()),
                                   teacher(x), rtol=1e-5, atol=1e-5)
    assert "robustbench" not in sys.modules


def test_a_file_of_another_zoo_model_is_refused_with_the_names_that_fit(tmp_path):
    torch.manual_seed(0)
    r18 = igdm_kit.create_model("timm", num_classes=1000, image_size=224, arch="resnet18")
    torch.save({"state_dict": {f"module.{k[len('net.'):]}": v for k, v in r18.state_dict().items()}},
               tmp_path / "Salman2020Do_R50.pt")
    with pytest.raises(CheckpointError) as err:
        load(tmp_path, name="Salman2020Do_R50", dataset="imagenet")
    text = str(err.value)
    assert "\n" not in text and "does not fit Salman2020Do_R50" in text
    assert "the file fits Salman2020Do_R18" in text and "Engstrom2019Robustness" not in text

    r50 = igdm_kit.create_model("timm", num_classes=1000, image_size=224, arch="resnet50")
    torch.save({k[len("net."):]: v for k, v in r50.state_dict().items()}, tmp_path / "Salman2020Do_R18.pt")
    with pytest.raises(CheckpointError) as err:
        load(tmp_path, name="Salman2020Do_R18", dataset="imagenet")
    text = str(err.value)
    assert "\n" not in text
    for name in ("Salman2020Do_R50", "Engstrom2019Robustness", "Wong2020Fast"):
        assert name in err.value.hint
    assert "Salman2020Do_50_2" not in err.value.hint

    # a file no ImageNet row takes: said so, in one line
    torch.save({"fc.weight": torch.zeros(10, 512)}, tmp_path / "Wong2020Fast.pt")
    with pytest.raises(CheckpointError) as err:
        load(tmp_path, name="Wong2020Fast", dataset="imagenet")
    assert "\n" not in str(err.value) and "no imagenet model of the built-in table fits" in err.value.hint


def test_bad_imagenet_names_and_datasets_are_one_line():
    with pytest.raises(IgdmKitError) as err:
        igdm_kit.factories.validate_options("teacher_loader", "robustbench",
                                             {"name": "Salman2020Do_R19", "dataset": "imagenet"})
    assert "Salman2020Do_R18" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(IgdmKitError) as err:
        igdm_kit.factories.validate_options("teacher_loader", "robustbench",
                                             {"name": "Salman2020Do_R18", "dataset": "imagenet1k"})
    assert "dataset" in str(err.value) and "\n" not in str(err.value)
