"""Dataset plugins on data the tests write in the real on-disk formats.

Fake CIFAR batches are pickled dicts exactly as in ``cifar-10-python.tar.gz`` (``data`` N×3072 uint8 rows
of R, G, B planes, ``labels`` / ``fine_labels`` lists, ``batches.meta`` / ``meta``); SVHN is a MATLAB file
with ``X`` 32×32×3×N and ``y`` N×1 (10 = digit 0); Tiny-ImageNet and image folders are trees of JPEG/PNG
files. Each expected pixel is computed from the raw arrays by index arithmetic (or, for encoded images,
by decoding the file separately with PIL), not by the loaders' code.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from test_imagenet import write_imagenet  # ImageNet's train/<wnid>/ and val/ layout, JPEGs
from test_mnist import write_mnist  # torchvision's idx layout, written from the format

import igdm_kit
from igdm_kit.errors import DataError, IgdmKitError, RecipeError
from igdm_kit.factories import list_components

RNG = np.random.default_rng(0)


# -- writers of the real formats ------------------------------------------------------------------------------
def write_cifar10(root: Path, per_batch: int = 3, test: int = 4) -> dict:
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    batches = {}
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", test)]:
        data = RNG.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in RNG.integers(0, 10, size=n)]
        entry = {"batch_label": f"fake {name}", "labels": labels, "data": data,
                 "filenames": [f"img_{i}.png" for i in range(n)]}
        with open(base / name, "wb") as fh:
            pickle.dump(entry, fh, protocol=2)  # the originals are Python-2 cPickle files (protocol 2)
        batches[name] = (data, labels)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(base / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": names, "num_cases_per_batch": per_batch, "num_vis": 3072}, fh, protocol=2)
    return batches


def write_cifar100(root: Path, train: int = 5, test: int = 3) -> dict:
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    out = {}
    for name, n in (("train", train), ("test", test)):
        data = RNG.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        fine = [int(v) for v in RNG.integers(0, 100, size=n)]
        entry = {"filenames": [f"f{i}.png" for i in range(n)], "batch_label": name, "fine_labels": fine,
                 "coarse_labels": [v // 5 for v in fine], "data": data}
        with open(base / name, "wb") as fh:
            pickle.dump(entry, fh, protocol=2)
        out[name] = (data, fine)
    with open(base / "meta", "wb") as fh:
        pickle.dump({"fine_label_names": [f"class{i}" for i in range(100)],
                     "coarse_label_names": [f"super{i}" for i in range(20)]}, fh, protocol=2)
    return out


def write_svhn(root: Path, n_train: int = 5, n_test: int = 3) -> dict:
    scipy_io = pytest.importorskip("scipy.io")
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = RNG.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        y = RNG.integers(1, 11, size=(n, 1)).astype(np.uint8)  # 1..10; 10 is the digit 0
        y[0, 0] = 10
        scipy_io.savemat(str(root / f"{split}_32x32.mat"), {"X": x, "y": y})
        out[split] = (x, y)
    return out


def save_image(path: Path, array: np.ndarray, fmt: str | None = None) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array)
    if fmt == "JPEG":
        img.save(path, format="JPEG", quality=95)
    else:
        img.save(path)


def write_tiny_imagenet(root: Path, *, sorted_val: bool = False, per_class: int = 2) -> list[str]:
    base = root / "tiny-imagenet-200"
    wnids = ["n02085620", "n01443537", "n09999999"]  # deliberately not in sorted order
    for wnid in wnids:
        for i in range(per_class):
            save_image(base / "train" / wnid / "images" / f"{wnid}_{i}.JPEG",
                       RNG.integers(0, 256, size=(64, 64, 3), dtype=np.uint8), "JPEG")
    # One greyscale JPEG, as the real archive has some.
    save_image(base / "train" / wnids[0] / "images" / f"{wnids[0]}_grey.JPEG",
               RNG.integers(0, 256, size=(64, 64), dtype=np.uint8), "JPEG")
    lines = []
    for i, wnid in enumerate(wnids + [wnids[0]]):
        arr = RNG.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
        if sorted_val:
            save_image(base / "val" / wnid / "images" / f"val_{i}.JPEG", arr, "JPEG")
        else:
            save_image(base / "val" / "images" / f"val_{i}.JPEG", arr, "JPEG")
            lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t63\t63")
    if not sorted_val:
        (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    return wnids


def write_image_folder(root: Path) -> None:
    colors = {"cat": (255, 0, 0), "dog": (0, 0, 255), "emu": (10, 200, 30)}
    for split, counts in (("train", {"cat": 2, "dog": 1, "emu": 1}), ("test", {"dog": 1, "cat": 1})):
        for cls, n in counts.items():
            for i in range(n):
                arr = np.zeros((20, 40, 3), dtype=np.uint8) + np.array(colors[cls], dtype=np.uint8)
                save_image(root / split / cls / f"{i}.png", arr)
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    (root / "train" / ".hidden").mkdir()


def write_webdataset(root: Path) -> None:
    """Two train shards and one test shard of PNG + .cls samples, written with Python's tarfile."""
    import io
    import tarfile

    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    for name, n in (("train-0.tar", 3), ("train-1.tar", 2), ("test-0.tar", 2)):
        with tarfile.open(root / name, "w") as tar:
            for i in range(n):
                buf = io.BytesIO()
                Image.fromarray(RNG.integers(0, 256, size=(24, 20, 3), dtype=np.uint8)).save(buf, format="PNG")
                for suffix, data in (("png", buf.getvalue()), ("cls", str(i % 3).encode())):
                    info = tarfile.TarInfo(f"{name[:-4]}_{i:03d}.{suffix}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


FAKE = {
    "cifar10": lambda root: (write_cifar10(root), {"root": str(root)})[1],
    "cifar100": lambda root: (write_cifar100(root), {"root": str(root)})[1],
    "svhn": lambda root: (write_svhn(root), {"root": str(root)})[1],
    "tiny-imagenet": lambda root: (write_tiny_imagenet(root), {"root": str(root)})[1],
    "image-folder": lambda root: (write_image_folder(root), {"root": str(root), "image_size": 16})[1],
    "digits": lambda root: {},  # shipped with scikit-learn
    "synthetic": lambda root: {"train_size": 6, "test_size": 4},  # generated, no files
    "mnist": lambda root: (write_mnist(root / "MNIST" / "raw"), {"root": str(root), "source": "files"})[1],
    "imagenet": lambda root: (write_imagenet(root), {"root": str(root), "image_size": 16})[1],
    "webdataset": lambda root: (write_webdataset(root), {"root": str(root), "train": ["train-*.tar"],
                                                         "test": ["test-*.tar"], "num_classes": 3,
                                                         "image_size": 16})[1],
}


# -- contract over every registered dataset ------------------------------------------------------------------
def test_every_registered_dataset_has_a_fake_here():
    assert set(list_components("dataset")) <= set(FAKE), "add a writer of the new dataset's format"


@pytest.mark.parametrize("name", sorted(FAKE))
def test_dataset_contract(name, tmp_path):
    ds = igdm_kit.create_dataset(name, **FAKE[name](tmp_path / "data"))
    info = ds.info()
    for split in ("train", "test"):
        x, y = ds.load(split)
        # 8-bit data keeps its bytes: uint8, pixel k meaning k/255 (the host converts per batch); digits
        # (k/16) is float in [0, 1]
        assert x.dtype == (torch.float32 if name == "digits" else torch.uint8) and y.dtype == torch.int64
        assert x.ndim == 4 and x.shape[0] == y.shape[0] > 0
        assert x.shape[1:] == (info.in_channels, info.image_size, info.image_size)
        assert 0.0 <= float(x.min()) and float(x.max()) <= (1.0 if name == "digits" else 255)
        assert 0 <= int(y.min()) and int(y.max()) < info.num_classes
    assert not info.class_names or len(info.class_names) == info.num_classes


# -- CIFAR ----------------------------------------------------------------------------------------------------
def test_cifar10_pixels_labels_and_info(tmp_path):
    batches = write_cifar10(tmp_path)
    ds = igdm_kit.create_dataset("cifar10", root=str(tmp_path))
    x, y = ds.load("train")
    assert x.shape == (15, 3, 32, 32)
    data = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    labels = sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    # Row layout of the originals: 1024 red values, then green, then blue, each row-major.
    for k, c, i, j in [(0, 0, 0, 0), (3, 1, 5, 7), (14, 2, 31, 30), (7, 2, 16, 0)]:
        assert x[k, c, i, j].item() == data[k, c * 1024 + i * 32 + j]  # the file's byte
    assert y.tolist() == labels
    xt, yt = ds.load("test")
    assert xt.shape == (4, 3, 32, 32) and yt.tolist() == batches["test_batch"][1]
    info = ds.info()
    assert (info.num_classes, info.in_channels, info.image_size) == (10, 3, 32)
    assert (info.crop_padding, info.hflip, info.mean, info.std) == (4, True, None, None)
    assert info.class_names[0] == "airplane" and len(info.class_names) == 10


def test_cifar_reader_agrees_with_torchvision(tmp_path, monkeypatch):
    """torchvision's own CIFAR reader (MD5 checks switched off for the fake files) sees the same data."""
    import torchvision.datasets.cifar as tv_cifar

    write_cifar10(tmp_path)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    tv = tv_cifar.CIFAR10(str(tmp_path), train=True, download=False)
    x, y = igdm_kit.create_dataset("cifar10", root=str(tmp_path)).load("train")
    expected = torch.from_numpy(tv.data).permute(0, 3, 1, 2)  # HWC → CHW, uint8 both
    torch.testing.assert_close(x, expected, rtol=0, atol=0)
    assert y.tolist() == list(tv.targets)
    assert tv.classes == list(igdm_kit.create_dataset("cifar10", root=str(tmp_path)).info().class_names)


def test_cifar100_fine_labels(tmp_path):
    written = write_cifar100(tmp_path)
    ds = igdm_kit.create_dataset("cifar100", root=str(tmp_path))
    x, y = ds.load("test")
    data, fine = written["test"]
    assert y.tolist() == fine
    assert x[2, 1, 3, 4].item() == data[2, 1024 + 3 * 32 + 4]
    info = ds.info()
    assert info.num_classes == 100 and info.class_names[7] == "class7"


def test_cifar_verify_rejects_files_that_are_not_the_official_ones(tmp_path):
    write_cifar10(tmp_path)
    ds = igdm_kit.create_dataset("cifar10", root=str(tmp_path), verify=True)
    with pytest.raises(DataError, match="MD5"):
        ds.load("test")


def test_cifar_batch_that_would_run_code_is_refused_without_running_it(tmp_path):
    write_cifar10(tmp_path)
    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as fh:
        pickle.dump({"data": Payload(), "labels": [0]}, fh, protocol=2)
    with pytest.raises(DataError) as err:
        igdm_kit.create_dataset("cifar10", root=str(tmp_path)).load("test")
    assert not marker.exists()
    assert "\n" not in str(err.value) and "not a CIFAR batch" in str(err.value)


def test_truncated_cifar_batch_is_one_clear_line(tmp_path):
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DataError) as err:
        igdm_kit.create_dataset("cifar10", root=str(tmp_path)).load("train")
    assert "data_batch_3" in str(err.value) and "\n" not in str(err.value)


def test_cifar_download_failure_is_one_line(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    ds = igdm_kit.create_dataset("cifar10", root=str(tmp_path), download=True)
    with pytest.raises(DataError, match="downloading CIFAR-10 .* failed: .*name resolution") as err:
        ds.load("train")
    assert "\n" not in str(err.value)


# -- SVHN ---------------------------------------------------------------------------------------------------
def test_svhn_layout_and_label_ten_is_zero(tmp_path):
    written = write_svhn(tmp_path)
    ds = igdm_kit.create_dataset("svhn", root=str(tmp_path))
    x, y = ds.load("train")
    raw_x, raw_y = written["train"]
    assert x.shape == (5, 3, 32, 32)
    for k, c, i, j in [(0, 0, 0, 0), (4, 2, 31, 5), (2, 1, 7, 19)]:
        assert x[k, c, i, j].item() == raw_x[i, j, c, k]  # X is H×W×C×N
    expected = [0 if v == 10 else int(v) for v in raw_y[:, 0]]
    assert y.tolist() == expected and y[0].item() == 0
    info = ds.info()
    assert (info.crop_padding, info.hflip) == (0, False)  # no augmentation for SVHN (Appendix B.1)


# -- Tiny-ImageNet -----------------------------------------------------------------------------------------
def decoded(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.array(img.convert("RGB")).transpose(2, 0, 1)


@pytest.mark.parametrize("sorted_val", [False, True])
def test_tiny_imagenet_original_and_sorted_val_layouts(tmp_path, sorted_val):
    wnids = write_tiny_imagenet(tmp_path, sorted_val=sorted_val)
    ds = igdm_kit.create_dataset("tiny-imagenet", root=str(tmp_path))
    info = ds.info()
    assert list(info.class_names) == sorted(wnids)  # ImageFolder's class order
    assert (info.image_size, info.crop_padding, info.hflip) == (64, 8, True)
    index = {w: i for i, w in enumerate(sorted(wnids))}
    x, y = ds.load("train")
    assert x.shape == (7, 3, 64, 64)
    assert sorted(y.tolist()) == sorted([index[w] for w in wnids for _ in range(2)] + [index[wnids[0]]])
    base = tmp_path / "tiny-imagenet-200"
    grey = base / "train" / wnids[0] / "images" / f"{wnids[0]}_grey.JPEG"
    first_class = sorted(wnids)[0]
    files = sorted((base / "train" / first_class / "images").iterdir())
    assert any(torch.equal(x[k], torch.from_numpy(decoded(files[0]))) for k in range(7))
    assert any(torch.equal(x[k], torch.from_numpy(decoded(grey))) for k in range(7))
    xv, yv = ds.load("test")
    assert xv.shape == (4, 3, 64, 64)
    assert sorted(yv.tolist()) == sorted([index[w] for w in wnids] + [index[wnids[0]]])


def test_tiny_imagenet_wrong_image_size_is_a_data_error(tmp_path):
    wnids = write_tiny_imagenet(tmp_path)
    save_image(tmp_path / "tiny-imagenet-200" / "train" / wnids[1] / "images" / "odd.JPEG",
               np.zeros((32, 32, 3), dtype=np.uint8), "JPEG")
    with pytest.raises(DataError, match="odd.JPEG.*32×32, expected 64×64"):
        igdm_kit.create_dataset("tiny-imagenet", root=str(tmp_path)).load("train")


# -- image folder ----------------------------------------------------------------------------------------------
def test_image_folder_classes_resize_and_labels(tmp_path):
    write_image_folder(tmp_path)
    ds = igdm_kit.create_dataset("image-folder", root=str(tmp_path), image_size=8)
    info = ds.info()
    assert info.class_names == ("cat", "dog", "emu")
    assert (info.in_channels, info.image_size, info.crop_padding, info.hflip) == (3, 8, 1, True)
    x, y = ds.load("train")
    assert x.shape == (4, 3, 8, 8) and y.tolist() == [0, 0, 1, 2]
    # Solid-colour images stay that colour through bilinear resizing and cropping.
    assert torch.all(x[0, 0] == 255) and torch.all(x[0, 1:] == 0)
    assert x[3, :, 4, 4].tolist() == [10, 200, 30]
    xt, yt = ds.load("test")
    assert yt.tolist() == [0, 1]  # test folders are matched to the train classes by name


def test_image_folder_greyscale_and_overrides(tmp_path):
    write_image_folder(tmp_path)
    ds = igdm_kit.create_dataset("image-folder", root=str(tmp_path), image_size=8, grayscale=True,
                                 hflip=False, crop_padding=0, mean=[0.5], std=[0.25])
    info = ds.info()
    assert (info.in_channels, info.hflip, info.crop_padding, info.mean, info.std) == (1, False, 0, (0.5,),
                                                                                     (0.25,))
    x, _ = ds.load("train")
    assert x.shape[1] == 1
    # ITU-R 601-2 luma of pure red: 0.299 · 255 ≈ 76.
    assert abs(x[0, 0, 0, 0].item() - 0.299 * 255) <= 1


def test_image_folder_test_class_unknown_to_train_is_an_error(tmp_path):
    write_image_folder(tmp_path)
    save_image(tmp_path / "test" / "yak" / "0.png", np.zeros((8, 8, 3), dtype=np.uint8))
    with pytest.raises(DataError, match="yak.*no counterpart"):
        igdm_kit.create_dataset("image-folder", root=str(tmp_path)).load("test")


def test_mean_std_must_match_the_channels(tmp_path):
    write_cifar10(tmp_path)
    with pytest.raises(RecipeError, match="data.mean has 1 values"):
        igdm_kit.create_dataset("cifar10", root=str(tmp_path), mean=[0.5], std=[0.2]).info()
    with pytest.raises(IgdmKitError, match="both mean and std"):
        igdm_kit.create_dataset("cifar10", root=str(tmp_path), mean=[0.5, 0.5, 0.5])


# -- missing data ---------------------------------------------------------------------------------------------
MISSING = {
    "cifar10": ("cifar-10-batches-py", "download = true"),
    "cifar100": ("cifar-100-python", "download = true"),
    "svhn": ("train_32x32.mat", "download = true"),
    "tiny-imagenet": ("tiny-imagenet-200", "download = true"),
    "image-folder": ("train", "one folder per class"),
}


@pytest.mark.parametrize("name", sorted(MISSING))
def test_missing_data_is_one_line_saying_where_and_how(name, tmp_path):
    empty = tmp_path / "nothing-here"
    ds = igdm_kit.create_dataset(name, root=str(empty))
    with pytest.raises(DataError) as err:
        ds.load("train")
    text = str(err.value)
    where, how = MISSING[name]
    assert "\n" not in text
    assert str(empty) in text and where in text and how in text
