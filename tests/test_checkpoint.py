"""igdm-kit checkpoints: every model round-trips through ``igdm_kit.load_model`` with equal outputs, bad
files give one CheckpointError line, and a failed write leaves the previous file intact."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import model_params
from safetensors.torch import save_file

import igdm_kit
from igdm_kit._storage.checkpoint import META_KEY, read_metadata, save_model
from igdm_kit.errors import CheckpointError

SMALL = {"small-cnn": {"width": 4}, "wideresnet": {"depth": 10, "widen_factor": 2, "activation": "silu"},
         "timm": {"arch": "resnet10t"}}
X = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def trained_like(name: str, mean=None, std=None, num_classes=7):
    """A model whose weights and BatchNorm statistics differ from a fresh build's."""
    torch.manual_seed(0)
    options = SMALL.get(name, {})
    model = igdm_kit.create_model(name, num_classes=num_classes, image_size=16, mean=mean, std=std, **options)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(4, 3, 16, 16))
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model.eval(), options


def meta_for(name, options, num_classes=7, mean=None, std=None, **extra):
    return dict(model=name, model_options=options, num_classes=num_classes, in_channels=3, image_size=16,
                mean=mean, std=std, **extra)


@pytest.mark.parametrize("name", model_params())
def test_every_model_round_trips_with_equal_outputs(name, tmp_path):
    model, options = trained_like(name)
    path = save_model(tmp_path / "final.safetensors", model, meta_for(name, options, dataset="cifar10",
                                                                      epoch=3))
    loaded = igdm_kit.load_model(path)
    assert not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), model(X), rtol=0, atol=0)
    assert loaded.igdm_kit_meta["epoch"] == 3 and loaded.igdm_kit_meta["dataset"] == "cifar10"
    assert loaded.igdm_kit_meta["toolkit_version"] and loaded.igdm_kit_meta["format"] == "igdm-kit/1"


def test_normalization_travels_in_the_checkpoint(tmp_path):
    mean, std = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
    model, options = trained_like("small-cnn", mean=mean, std=std)
    path = save_model(tmp_path / "m.safetensors", model, meta_for("small-cnn", options, mean=mean, std=std))
    loaded = igdm_kit.load_model(path)
    torch.testing.assert_close(loaded.normalize.mean.flatten(), torch.tensor(mean))
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), model(X), rtol=0, atol=0)


def test_save_refuses_incomplete_metadata(tmp_path):
    model, _ = trained_like("small-cnn")
    with pytest.raises(ValueError, match="lacks"):
        save_model(tmp_path / "m.safetensors", model, {"model": "small-cnn"})
    assert not list(tmp_path.iterdir())


# -- bad files ------------------------------------------------------------------------------------------------
def write_raw(path, metadata: dict | None, model=None):
    model = model or trained_like("small-cnn")[0]
    tensors = {k: v.contiguous().clone() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata=metadata)
    return path


def good_meta(**changes):
    meta = {"format": "igdm-kit/1", **meta_for("small-cnn", {"width": 4})}
    meta.update(changes)
    return {META_KEY: json.dumps(meta)}


BAD_METADATA = {
    "no igdm-kit key": ({"other": "x"}, "no igdm-kit metadata"),
    "no metadata at all": (None, "no igdm-kit metadata"),
    "not JSON": ({META_KEY: "{not json"}, "corrupt igdm-kit metadata"),
    "JSON list": ({META_KEY: "[1, 2]"}, "not a JSON object"),
    "other format": (good_meta(format="igdm-kit/999"), "checkpoint format 'igdm-kit/999'"),
    "lacks num_classes": ({META_KEY: json.dumps({k: v for k, v in json.loads(
        good_meta()[META_KEY]).items() if k != "num_classes"})}, r"incomplete igdm-kit metadata \(no num_classes\)"),
    "unknown model": (good_meta(model="resnet-9000"), "needs model 'resnet-9000'"),
    "bad model option": (good_meta(model_options={"width": -3}), "needs model 'small-cnn'"),
    "disagrees with tensors": (good_meta(num_classes=3), "does not fit model 'small-cnn'.*shape"),
    "mean and std lengths differ": (good_meta(mean=[0.5, 0.5, 0.5], std=[0.2]), r"std = \[0.2\].*3 finite"),
    # hostile or unlucky metadata (issue 18): refused before anything is built
    "deeply nested JSON": ({META_KEY: "[" * 100_000 + "]" * 100_000}, "corrupt igdm-kit metadata"),
    "eval_eps inf": ({META_KEY: good_meta()[META_KEY].replace("}", ', "eval_eps": Infinity}')},
                     "eval_eps = inf.*finite radius"),
    "eval_eps NaN": ({META_KEY: good_meta()[META_KEY].replace("}", ', "eval_eps": NaN}')}, "eval_eps = nan"),
    "eval_eps text": (good_meta(eval_eps="8/255"), "eval_eps = '8/255'"),
    "a billion classes": (good_meta(num_classes=10**9), "num_classes = 1000000000.*1 to 1,000,000"),
    "classes as text": (good_meta(num_classes="10"), "num_classes = '10'"),
    "channels as bool": (good_meta(in_channels=True), "in_channels = True"),
    "NaN in std": ({META_KEY: good_meta(std=[0.5, 0.5, 0.5])[META_KEY].replace("0.5]", "NaN]")}, "std"),
}


@pytest.mark.parametrize("case", sorted(BAD_METADATA))
def test_bad_metadata_is_one_checkpoint_error_line(case, tmp_path):
    metadata, expected = BAD_METADATA[case]
    path = write_raw(tmp_path / "bad.safetensors", metadata)
    with pytest.raises(CheckpointError, match=expected) as err:
        igdm_kit.load_model(path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("keep", [0.5, 0.999, 8])
def test_truncated_safetensors_is_a_checkpoint_error(keep, tmp_path):
    model, options = trained_like("small-cnn")
    path = save_model(tmp_path / "m.safetensors", model, meta_for("small-cnn", options))
    data = path.read_bytes()
    cut = int(len(data) * keep) if keep < 1 else keep
    path.write_bytes(data[:cut])
    with pytest.raises(CheckpointError, match="truncated") as err:
        igdm_kit.load_model(path)
    assert "\n" not in str(err.value)


def test_other_files_are_checkpoint_errors(tmp_path):
    html = tmp_path / "page.safetensors"
    html.write_text("<!DOCTYPE html><html><body>Sign in</body></html>")
    with pytest.raises(CheckpointError, match="not a safetensors checkpoint"):
        igdm_kit.load_model(html)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_metadata(tmp_path / "missing.safetensors")


# -- atomic writes --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("error", [OSError("No space left on device"), KeyboardInterrupt()])
def test_failed_write_leaves_the_previous_checkpoint_intact(error, tmp_path, monkeypatch):
    import safetensors.torch

    first, options = trained_like("small-cnn")
    path = save_model(tmp_path / "last.safetensors", first, meta_for("small-cnn", options, epoch=1))
    before = path.read_bytes()

    def half_written_then_fail(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:  # the writer gets as far as some bytes, then dies
            fh.write(b"\x00" * 100)
        raise error

    monkeypatch.setattr(safetensors.torch, "save_file", half_written_then_fail)
    second, _ = trained_like("small-cnn", num_classes=7)
    with pytest.raises(type(error)):
        save_model(path, second, meta_for("small-cnn", options, epoch=2))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["last.safetensors"]  # no temporary file left behind
    monkeypatch.undo()
    assert igdm_kit.load_model(path).igdm_kit_meta["epoch"] == 1
