"""``cache_dir``: a decoded split as one memory-mapped uint8 file, written once, checked before use, shared.

Every file dataset is written in its real format (the writers of ``test_datasets``); a load through the cache
must give exactly the tensors of a load without it. That the images are the file's pages (so every process
on the machine shares them through the page cache) is read from ``/proc/self/maps``: the address of the
tensor's data lies in a mapping of the cache file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY
from test_datasets import FAKE

import igdm_kit
from igdm_kit import _recipe as R
from igdm_kit.errors import DataError

FILE_DATASETS = ["cifar10", "cifar100", "svhn", "tiny-imagenet", "image-folder", "mnist", "imagenet"]


def _make(name: str, tmp_path: Path) -> dict:
    return FAKE[name](tmp_path / "data")


def _mapped_from(t: torch.Tensor, path: Path) -> bool:
    """Whether the tensor's first byte lies in a mapping of ``path`` (Linux: /proc/self/maps)."""
    addr = t.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        lo, hi = (int(v, 16) for v in fields[0].split("-"))
        if lo <= addr < hi and len(fields) == 6 and fields[5] == str(path):
            return True
    return False


@pytest.mark.parametrize("name", FILE_DATASETS)
def test_the_cache_gives_the_same_tensors_mapped_from_one_file(name, tmp_path, monkeypatch):
    options = _make(name, tmp_path)
    cache = tmp_path / "cache"
    for split in ("train", "test"):
        x0, y0 = igdm_kit.create_dataset(name, **options).load(split)
        x1, y1 = igdm_kit.create_dataset(name, **options, cache_dir=str(cache)).load(split)  # writes it
        assert x1.dtype == torch.uint8 and torch.equal(x0, x1) and torch.equal(y0, y1) and y1.dtype == torch.long
    files = sorted(cache.glob("*.u8"))
    assert len(files) == 2 and not [p for p in cache.iterdir() if p.suffix not in (".u8", ".lock")]

    # the second load reads the file: nothing is decoded or written again
    from igdm_kit_plugins.datasets import cache as cache_mod

    reference = igdm_kit.create_dataset(name, **options).load("train")
    monkeypatch.setattr(cache_mod, "write_cache", _refuse)
    x2, y2 = igdm_kit.create_dataset(name, **options, cache_dir=str(cache)).load("train")
    assert torch.equal(x2, reference[0]) and torch.equal(y2, reference[1])
    train_file = next(p for p in files if "-train-" in p.name)
    assert _mapped_from(x2, train_file) and not _mapped_from(reference[0], train_file)


def _refuse(*args, **kwargs):
    raise AssertionError("the split was decoded and written again although its cache was there")


def test_changed_source_files_rebuild_the_cache(tmp_path):
    from test_datasets import save_image

    options = _make("image-folder", tmp_path)
    cache = tmp_path / "cache"
    x0, _ = igdm_kit.create_dataset("image-folder", **options, cache_dir=str(cache)).load("train")
    # a new image in a class folder: another set of source files
    save_image(tmp_path / "data" / "train" / "dog" / "9.png", np.full((16, 16, 3), 77, dtype=np.uint8))
    x1, y1 = igdm_kit.create_dataset("image-folder", **options, cache_dir=str(cache)).load("train")
    assert x1.shape[0] == x0.shape[0] + 1 and (x1 == 77).all(dim=(1, 2, 3)).sum() == 1
    # a file rewritten in place (same name): its size or time changes, the cache follows
    target = tmp_path / "data" / "train" / "dog" / "9.png"
    save_image(target, np.full((16, 16, 3), 5, dtype=np.uint8))
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))
    x2, _ = igdm_kit.create_dataset("image-folder", **options, cache_dir=str(cache)).load("train")
    assert (x2 == 5).all(dim=(1, 2, 3)).sum() == 1 and not (x2 == 77).all(dim=(1, 2, 3)).any()
    assert len(list(cache.glob("*-train-*.u8"))) == 1  # rebuilt in place, not beside


@pytest.mark.parametrize("damage, words", [
    (lambda p: p.write_bytes(p.read_bytes()[:-7]), "bytes, its header says"),  # truncated
    (lambda p: p.write_bytes(b"not a cache at all"), "does not start as an igdm-kit data cache"),
    (lambda p: _flip_last_image_byte(p), "checksum does not match"),
])
def test_a_damaged_cache_is_refused_with_one_line(damage, words, tmp_path):
    options = _make("cifar10", tmp_path)
    cache = tmp_path / "cache"
    igdm_kit.create_dataset("cifar10", **options, cache_dir=str(cache)).load("train")
    (path,) = cache.glob("*-train-*.u8")
    damage(path)
    with pytest.raises(DataError) as err:
        igdm_kit.create_dataset("cifar10", **options, cache_dir=str(cache)).load("train")
    line = str(err.value)
    assert words in line and str(path) in line and "\n" not in line
    assert "delete the file" in err.value.hint


def _flip_last_image_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    n_labels = 15  # write_cifar10: 5 batches of 3
    data[-8 * n_labels - 1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_run_with_a_damaged_cache_stops_with_one_line(tmp_path, write_recipe, cli):
    options = _make("cifar10", tmp_path)
    cache = tmp_path / "cache"
    igdm_kit.create_dataset("cifar10", **options, cache_dir=str(cache)).load("train")
    (path,) = cache.glob("*-train-*.u8")
    path.write_bytes(path.read_bytes()[:100])
    text = TINY.replace('name = "digits"\ntrain_limit = 256',
                        f'name = "cifar10"\nroot = "{options["root"]}"\ncache_dir = "{cache}"')
    res = cli("run", write_recipe(text), "--output", tmp_path / "run")
    assert res.code == 1
    assert res.err.strip().splitlines()[0].startswith("error: data cache") and "Traceback" not in res.err


def test_cache_dir_is_not_part_of_the_recipe_digest(tmp_path, write_recipe):
    plain = TINY.replace('name = "digits"\ntrain_limit = 256', 'name = "cifar10"\nroot = "d"')
    cached = plain.replace('root = "d"', 'root = "d"\ncache_dir = "/somewhere/else"')
    a, b = R.load(write_recipe(plain, "a.toml")), R.load(write_recipe(cached, "b.toml"))
    assert a.digest() == b.digest()
    assert b.components["data"].cache_dir == "/somewhere/else"


LOAD = """
import sys, igdm_kit
from igdm_kit_plugins.datasets import cache
real = cache.write_cache
cache.write_cache = lambda *a: (print("built", file=sys.stderr), real(*a))
x, y = igdm_kit.create_dataset("image-folder", root=sys.argv[1], image_size=16, cache_dir=sys.argv[2]).load("train")
print(int(x.sum()), y.tolist())
"""


def test_processes_started_together_build_it_once_and_agree(tmp_path):
    """Four processes (as four ranks) load at once: one writes (the lock), all read the same file."""
    options = _make("image-folder", tmp_path)
    cache = tmp_path / "cache"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", LOAD, options["root"], str(cache)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for _, e in outs]
    assert len({o for o, _ in outs}) == 1
    assert sum(e.count("built") for _, e in outs) == 1  # the others waited for it, then mapped it
    assert [p.suffix for p in cache.iterdir()].count(".u8") == 1
    assert not [p for p in cache.iterdir() if p.suffix not in (".u8", ".lock")]  # no temporaries left
