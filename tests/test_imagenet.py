"""``imagenet``: ImageNet-1k's distributed layout, streamed, with the standard per-image augmentation.

Written here: a tiny ImageNet tree of JPEGs (train/<wnid>/, val both sorted into wnid folders and flat with
Kaggle's LOC_val_solution.csv). The oracle of the per-image augmentation is torchvision's own
``RandomResizedCrop`` + ``RandomHorizontalFlip`` run under ``torch.manual_seed(s)``: with a generator seeded
with s the dataset must give the same image, byte for byte.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import igdm_kit
from igdm_kit._training.loader import StreamSet, image_seed
from igdm_kit.errors import DataError

WNIDS = ["n02085620", "n01443537", "n09999999"]  # not sorted: the classes are the sorted names


def write_imagenet(root: Path, *, kaggle: bool = False, per_class: int = 6, seed: int = 0) -> dict:
    from PIL import Image

    rng = np.random.default_rng(seed)
    shapes = [(40, 30), (30, 52), (64, 64), (23, 41)]

    def image(i: int):
        w, h = shapes[i % len(shapes)]
        return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))

    for c, wnid in enumerate(WNIDS):
        (root / "train" / wnid).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image(c + i).save(root / "train" / wnid / f"{wnid}_{i}.JPEG", quality=95)
    (root / "val").mkdir(parents=True, exist_ok=True)
    val = {}
    for i in range(6):
        wnid = WNIDS[i % 3]
        name = f"ILSVRC2012_val_{i + 1:08d}"
        target = root / "val" / (f"{name}.JPEG" if kaggle else f"{wnid}/{name}.JPEG")
        target.parent.mkdir(parents=True, exist_ok=True)
        image(i).save(target, quality=95)
        val[name] = wnid
    if kaggle:
        rows = ["ImageId,PredictionString"] + [f"{n},{w} 1 2 3 4 {w} 5 6 7 8" for n, w in reversed(val.items())]
        (root / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    return val


@pytest.mark.parametrize("kaggle", [False, True])
def test_layout_classes_and_labels(tmp_path, kaggle):
    val = write_imagenet(tmp_path, kaggle=kaggle)
    ds = igdm_kit.create_dataset("imagenet", root=str(tmp_path), image_size=16)
    info = ds.info()
    assert info.class_names == tuple(sorted(WNIDS)) and info.num_classes == 3
    assert (info.crop_padding, info.hflip) == (0, False)  # the flip is per image, in the source
    x, y = ds.load("test")
    assert x.dtype == torch.uint8 and x.shape == (6, 3, 16, 16)
    # Kaggle's flat folder in the file names' order; class folders class by class (ImageFolder's order)
    names = sorted(val) if kaggle else sorted(val, key=lambda n: (val[n], n))
    assert y.tolist() == [sorted(WNIDS).index(val[n]) for n in names]
    src = ds.source("train")
    assert len(src) == 18 and src.augments and ds.source("test") is None
    assert torch.bincount(src.labels).tolist() == [6, 6, 6]


def test_the_test_images_are_resized_to_256_and_centre_cropped(tmp_path):
    """The oracle: torchvision's Resize(256) + CenterCrop(224) (here 16/0.875 → 18, then 16)."""
    from PIL import Image
    from torchvision import transforms

    write_imagenet(tmp_path)
    ds = igdm_kit.create_dataset("imagenet", root=str(tmp_path), image_size=16)
    x, _ = ds.load("test")
    files = sorted((tmp_path / "val").rglob("*.JPEG"), key=lambda p: (p.parent.name, p.name))
    ref = transforms.Compose([transforms.Resize(18, interpolation=transforms.InterpolationMode.BILINEAR),
                              transforms.CenterCrop(16), transforms.PILToTensor()])
    for i, path in enumerate(files):  # portrait, landscape and square images: every rounding of the offsets
        with Image.open(path) as img:
            assert torch.equal(x[i], ref(img.convert("RGB"))), path


#: each test_transform and its torchvision oracle (RobustBench's PREPROCESSINGS are these, at 224/256/288)
TORCHVISION_TESTS = {
    "resize-crop": lambda t, size: [t.Resize(18, interpolation=t.InterpolationMode.BILINEAR), t.CenterCrop(size)],
    "bicubic-resize-crop": lambda t, size: [t.Resize(18, interpolation=t.InterpolationMode.BICUBIC),
                                            t.CenterCrop(size)],
    "resize": lambda t, size: [t.Resize((size, size))],
    "crop": lambda t, size: [t.CenterCrop(size)],
}


@pytest.mark.parametrize("kind", sorted(TORCHVISION_TESTS))
@pytest.mark.parametrize("dataset", ["imagenet", "webdataset"])
def test_each_test_transform_is_torchvisions(tmp_path, kind, dataset):
    """``test_transform`` (RobustBench's Res256Crop224, BicubicRes256Crop224, Res224, Crop288): byte for byte
    torchvision's pipeline on portrait, landscape, square images, and — for ``crop`` — ones smaller than the
    crop on one side or both (torchvision pads them with black)."""
    from PIL import Image
    from torchvision import transforms

    write_imagenet(tmp_path)
    for n, (h, w) in enumerate([(13, 27), (9, 11)]):  # smaller than the crop on one side, on both
        small = tmp_path / "val" / WNIDS[0] / f"ILSVRC2012_val_0000009{n}.JPEG"
        Image.fromarray(np.random.default_rng(n).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(small)
    files = sorted((tmp_path / "val").rglob("*.JPEG"), key=lambda p: (p.parent.name, p.name))
    if dataset == "webdataset":  # the same files as a tar shard, in the same order
        from test_webdataset import write_tar

        members = [m for i, f in enumerate(files) for m in ((f"s{i:03d}.jpg", f.read_bytes()), (f"s{i:03d}.cls", b"0"))]
        write_tar(tmp_path / "test-000.tar", members)
        ds = igdm_kit.create_dataset("webdataset", root=str(tmp_path), train=["test-000.tar"], test=["test-000.tar"],
                                     num_classes=2, image_size=16, test_transform=kind)
    else:
        ds = igdm_kit.create_dataset("imagenet", root=str(tmp_path), image_size=16, test_transform=kind)
    x, _ = ds.load("test")
    ref = transforms.Compose([*TORCHVISION_TESTS[kind](transforms, 16), transforms.PILToTensor()])
    for i, path in enumerate(files):
        with Image.open(path) as img:
            assert torch.equal(x[i], ref(img.convert("RGB"))), (kind, path)


def test_a_training_image_is_torchvisions_random_resized_crop_and_flip(tmp_path):
    from PIL import Image
    from torchvision import transforms

    write_imagenet(tmp_path)
    src = igdm_kit.create_dataset("imagenet", root=str(tmp_path), image_size=16).source("train")
    ref = transforms.Compose([transforms.RandomResizedCrop(16, interpolation=transforms.InterpolationMode.BILINEAR),
                              transforms.RandomHorizontalFlip(), transforms.PILToTensor()])
    flips = set()
    for index in range(len(src)):
        s = image_seed(7, 1, index)
        got = src.read(index, torch.Generator().manual_seed(s))
        torch.manual_seed(s)
        with Image.open(src.paths[index]) as img:
            expected = ref(img.convert("RGB"))
        assert torch.equal(got, expected), index
        flips.add(torch.equal(got, src.read(index, torch.Generator().manual_seed(s))))
    assert flips == {True}  # the same seed, the same image


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_the_streamed_batches_do_not_depend_on_the_workers(tmp_path):
    write_imagenet(tmp_path)
    ds = igdm_kit.create_dataset("imagenet", root=str(tmp_path), image_size=16)
    order = torch.randperm(18, generator=torch.Generator().manual_seed(0))
    runs = [[x for _, _, x, _ in StreamSet(ds.source("train"), ds.info(), workers=w).batches(
        order, 4, 0, 5, seed=3, epoch=2)] for w in (0, 2)]
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))


def test_an_empty_class_folder_is_one_line_naming_it(tmp_path):
    write_imagenet(tmp_path)
    empty = tmp_path / "train" / "n00000001"
    empty.mkdir()
    with pytest.raises(DataError) as err:
        igdm_kit.create_dataset("imagenet", root=str(tmp_path), image_size=16).source("train")
    assert str(empty) in err.value.message and "holds no images" in err.value.message


def test_a_missing_folder_and_a_foreign_label_are_one_line(tmp_path, write_recipe, cli):
    with pytest.raises(DataError, match="does not exist"):
        igdm_kit.create_dataset("imagenet", root=str(tmp_path / "nowhere")).check()
    write_imagenet(tmp_path / "k", kaggle=True)
    csv = tmp_path / "k" / "LOC_val_solution.csv"
    csv.write_text(csv.read_text() + "ILSVRC2012_val_00000099,n12345678 1 2 3 4\n")
    with pytest.raises(DataError, match=r"line 8 names no train class"):
        igdm_kit.create_dataset("imagenet", root=str(tmp_path / "k"), image_size=16).load("test")


def test_a_run_streams_imagenet_with_workers(tmp_path, write_recipe, cli):
    from conftest import TINY

    write_imagenet(tmp_path / "data", per_class=12)
    recipe = write_recipe(TINY.replace('name = "digits"\ntrain_limit = 256',
                                       f'name = "imagenet"\nroot = "{tmp_path / "data"}"\nimage_size = 16\n'
                                       'workers = 2').replace("batch_size = 64", "batch_size = 8"))
    res = cli("run", recipe, "--output", tmp_path / "run")
    assert res.code == 0, res.err
    assert (tmp_path / "run" / "model.safetensors").is_file()
