"""WebDataset tar shards as a streamed dataset (``[data] name = "webdataset"``).

Oracles: shards written by Python's own ``tarfile`` from an image folder's files, in the folder's order, train
a student bit-identical to the streamed image-folder run; shards written by ``webdataset.TarWriter`` read back
equal what webdataset's own reader yields (the extra's test). Hostile shards are one line naming the shard
and the sample.
"""

from __future__ import annotations

import gzip
import io
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY
from safetensors.torch import load_file

import igdm_kit
from igdm_kit import _recipe as R
from igdm_kit._training.batches import epoch_order
from igdm_kit._training.engine import run
from igdm_kit._training.loader import StreamSet
from igdm_kit.errors import DataError, IgdmKitError, RecipeError


def png(rng, size: int = 8) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """The same images as an image folder and as shards of 10 samples, in the folder's order (classes, then
    file names): root/folder/{train,test}/<class>/*.png and root/shards/{train,test}-NNN.tar."""
    root = tmp_path_factory.mktemp("twins")
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 30), ("test", 4)):
        samples = []
        for c in range(3):
            folder = root / "folder" / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                data = png(rng)
                (folder / f"{i:03d}.png").write_bytes(data)
                samples += [(f"c{c}_{i:03d}.png", data), (f"c{c}_{i:03d}.cls", str(c).encode())]
        (root / "shards").mkdir(exist_ok=True)
        for k in range(0, len(samples), 20):  # 10 samples a shard
            write_tar(root / "shards" / f"{split}-{k // 20:03d}.tar", samples[k:k + 20])
    return root


def shard_dataset(root: Path, **extra):
    options = {"root": str(root / "shards"), "train": ["train-*.tar"], "test": ["test-*.tar"], "num_classes": 3,
               "image_size": 8, "test_crop": 1.0, "train_augment": "center", "crop_padding": 1}
    return igdm_kit.create_dataset("webdataset", **{**options, **extra})


def test_the_shards_hold_the_folders_images_in_its_order(twins):
    folder = igdm_kit.create_dataset("image-folder", root=str(twins / "folder"), image_size=8)
    for split in ("train", "test"):
        xf, yf = folder.load(split)
        xs, ys = shard_dataset(twins).load(split)
        assert torch.equal(xf, xs) and torch.equal(yf, ys)
    source = shard_dataset(twins).source("train")
    assert len(source) == 90 and source.keys[:2] == ["c0_000", "c0_001"]
    assert torch.equal(source.read(37), folder.load("train")[0][37])


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_workers_read_the_same_batches(twins):
    ds = shard_dataset(twins)
    order, _ = epoch_order(90, 3, 1)
    a = [x for _, _, x, _ in StreamSet(ds.source("train"), ds.info(), workers=0).batches(order, 16, 0, 5, seed=3,
                                                                                         epoch=1)]
    b = [x for _, _, x, _ in StreamSet(ds.source("train"), ds.info(), workers=2).batches(order, 16, 0, 5, seed=3,
                                                                                         epoch=1)]
    assert len(a) == 5 and all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


RECIPE = TINY.replace('name = "digits"\ntrain_limit = 256', '{data}').replace("batch_size = 64", "batch_size = 16")


def test_a_run_on_the_shards_equals_the_streamed_folder_run(twins, tmp_path):
    shards = (f'name = "webdataset"\nroot = "{twins}/shards"\ntrain = ["train-*.tar"]\n'
              'test = ["test-{000..001}.tar"]\nnum_classes = 3\nimage_size = 8\ntest_crop = 1.0\n'
              'train_augment = "center"\ncrop_padding = 1\nworkers = 2')
    if not _has_braceexpand():
        shards = shards.replace('"test-{000..001}.tar"', '"test-*.tar"')
    folder = f'name = "image-folder"\nroot = "{twins}/folder"\nimage_size = 8\nstream = true'
    results = []
    for name, data in (("f", folder), ("s", shards)):
        path = tmp_path / f"{name}.toml"
        path.write_text(RECIPE.format(data=data))
        results.append(run(R.load(path), output_dir=tmp_path / name))
    a, b = (load_file(str(r.output_dir / "model.safetensors")) for r in results)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _has_braceexpand() -> bool:
    try:
        import braceexpand  # noqa: F401
    except ImportError:
        return False
    return True


def test_options_are_checked_with_their_dotted_path(twins, write_recipe):
    with pytest.raises(RecipeError, match="num_classes or class_names"):
        R.load(write_recipe(RECIPE.format(data=f'name = "webdataset"\nroot = "{twins}"\ntrain = ["a.tar"]\n'
                                               'test = ["b.tar"]')))


def hostile(tmp_path: Path, members: list[tuple[str, bytes]], name: str = "bad.tar") -> Path:
    (tmp_path / "h").mkdir(exist_ok=True)
    return write_tar(tmp_path / "h" / name, members)


def test_hostile_shards_are_one_line_naming_shard_and_sample(tmp_path):
    rng = np.random.default_rng(1)
    good = [("a.png", png(rng)), ("a.cls", b"1")]

    def fails(members, match, name="bad.tar"):
        hostile(tmp_path, members, name)
        with pytest.raises(DataError, match=match):
            igdm_kit.create_dataset("webdataset", root=str(tmp_path / "h"), train=[name], test=[name],
                                    num_classes=3, image_size=8, test_crop=1.0).source("train")

    fails(good + [("b.png", png(rng))], r"sample 'b' in .*bad.tar' has no .cls label")
    fails(good + [("b.cls", b"2")], r"sample 'b' .* has no image")
    fails(good + [("b.png", png(rng)), ("b.cls", b"two")], r"sample 'b' .* has label b'two'")
    fails([], "hold no samples", name="empty.tar")
    (tmp_path / "h" / "text.tar").write_text("not a tar file at all\n" * 50)
    fails_existing = pytest.raises(DataError, match=r"cannot read WebDataset shard .*text.tar")
    with fails_existing:
        igdm_kit.create_dataset("webdataset", root=str(tmp_path / "h"), train=["text.tar"], test=["text.tar"],
                                num_classes=3, image_size=8).source("train")
    data = write_tar(tmp_path / "h" / "whole.tar", good + [("b.png", png(rng)), ("b.cls", b"0")]).read_bytes()
    (tmp_path / "h" / "gz.tar").write_bytes(gzip.compress(data))
    with pytest.raises(DataError, match="gzip-compressed"):
        igdm_kit.create_dataset("webdataset", root=str(tmp_path / "h"), train=["gz.tar"], test=["gz.tar"],
                                num_classes=3, image_size=8).source("train")
    cuts = {"image": 512 + 100, "header": 1024 + 100, "boundary": len(data) - 10240 + 2048}
    for where, cut in cuts.items():
        (tmp_path / "h" / f"cut-{where}.tar").write_bytes(data[:cut])
        with pytest.raises(DataError, match=rf"cut-{where}.tar' is truncated"):
            igdm_kit.create_dataset("webdataset", root=str(tmp_path / "h"), train=[f"cut-{where}.tar"],
                                    test=["liar.tar"], num_classes=3, image_size=8).source("train")
    hostile(tmp_path, good + [("b.jpg", b"this is text, named .jpg"), ("b.cls", b"0")], "liar.tar")
    liar = igdm_kit.create_dataset("webdataset", root=str(tmp_path / "h"), train=["liar.tar"], test=["liar.tar"],
                                   num_classes=3, image_size=8, test_crop=1.0).source("train")
    assert liar.read(0).shape == (3, 8, 8)
    with pytest.raises(DataError, match=r"cannot read image .*liar.tar:b'"):
        liar.read(1)
    with pytest.raises(DataError, match=r"shard .*nope-1.tar' does not exist"):
        igdm_kit.create_dataset("webdataset", root=str(tmp_path / "h"), train=["liar.tar", "nope-1.tar"],
                                test=["liar.tar"], num_classes=3, image_size=8).check()
    with pytest.raises(DataError, match=r"match no file"):
        igdm_kit.create_dataset("webdataset", root=str(tmp_path / "h"), train=["zzz-*.tar"], test=["liar.tar"],
                                num_classes=3, image_size=8).check()


def test_a_label_outside_the_classes_stops_the_run_in_one_line(tmp_path, write_recipe):
    rng = np.random.default_rng(2)
    hostile(tmp_path, [(f"{i}.png", png(rng)) if j == 0 else (f"{i}.cls", b"7") for i in range(4) for j in (0, 1)],
            "s.tar")
    path = write_recipe(RECIPE.format(data=f'name = "webdataset"\nroot = "{tmp_path}/h"\ntrain = ["s.tar"]\n'
                                           'test = ["s.tar"]\nnum_classes = 3\nimage_size = 8'))
    out = subprocess.run([sys.executable, "-m", "igdm_kit", "run", str(path), "--output", str(tmp_path / "o")],
                         check=False, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and "labels outside 0..2" in out.stderr and "Traceback" not in out.stderr


def test_imagenets_test_list_is_not_a_webdataset_option(twins):
    """It selects files of a val/ folder; shards have none, so it would be ignored: refused instead."""
    with pytest.raises(IgdmKitError, match=r"^data\.test_list: "):
        shard_dataset(twins, test_list="robustbench")


def test_class_names_come_from_their_file(twins, tmp_path):
    names = tmp_path / "classes.txt"
    names.write_text("cat\ndog\nemu\n")
    assert shard_dataset(twins, num_classes=None, class_names=str(names)).info().class_names == ("cat", "dog",
                                                                                                 "emu")
    names.write_text("cat\ncat\n")
    with pytest.raises(DataError, match="2 names .1 distinct"):
        shard_dataset(twins, num_classes=None, class_names=str(names)).info()


def test_shards_written_by_webdataset_read_back_as_its_own_reader_reads_them(tmp_path):
    wds = pytest.importorskip("webdataset", reason="pip install 'igdm-kit[webdataset]'")
    from PIL import Image

    from igdm_kit_plugins.datasets.imagenet import center_transform

    rng = np.random.default_rng(3)
    for k in range(2):
        with wds.TarWriter(str(tmp_path / f"part-{k:06d}.tar")) as sink:
            for i in range(7):
                size = (int(rng.integers(20, 40)), int(rng.integers(20, 40)))
                image = Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))
                sink.write({"__key__": f"s{k}{i:03d}", "jpg": image, "cls": int(rng.integers(0, 5))})
    pattern = str(tmp_path / "part-{000000..000001}.tar")
    theirs = list(wds.WebDataset(pattern, shardshuffle=False).decode("pil").to_tuple("jpg", "cls"))
    ours = igdm_kit.create_dataset("webdataset", root=str(tmp_path), train=["part-{000000..000001}.tar"],
                                   test=["part-000000.tar"], num_classes=5, image_size=16).source("train")
    assert len(ours) == len(theirs) == 14
    crop = center_transform(16, 0.875)
    for i, (image, label) in enumerate(theirs):
        expected = torch.from_numpy(np.asarray(crop(image.convert("RGB")), dtype=np.uint8).transpose(2, 0, 1).copy())
        assert int(ours.labels[i]) == label and torch.equal(ours.read(i), expected)


def test_recipe_check_warns_of_missing_shards_and_brace_patterns_name_their_extra(tmp_path, cli, monkeypatch):
    data = 'name = "webdataset"\nroot = "shards"\ntrain = ["train-*.tar"]\ntest = ["val-*.tar"]\nnum_classes = 10'
    path = tmp_path / "r.toml"
    path.write_text(RECIPE.format(data=data))
    r = cli("recipe", "check", str(path))
    assert r.code == 0 and "warning: WebDataset train shards ['train-*.tar'] match no file" in r.err
    monkeypatch.setitem(sys.modules, "braceexpand", None)  # as on a machine without the extra
    path.write_text(RECIPE.format(data=data.replace("train-*.tar", "train-{0..9}.tar")))
    r = cli("recipe", "check", str(path))
    assert r.code == 1 and "data.train" in r.err and "pip install 'igdm-kit[webdataset]'" in r.err
