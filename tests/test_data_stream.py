"""A training set streamed from a dataset's ``ImageSource`` through DataLoader workers (``[data] workers``).

On generated image folders: the streamed batches are the in-memory batches (same order, same bytes, same
crop/flip draws) for 0, 1 and 4 workers; a source that augments per image gets the same draws whatever the
number of workers (seeded from (seed, epoch, index)); a whole run streamed with workers ends with the
weights of the in-memory run; SIGINT or SIGKILL mid-epoch and ``--resume`` with workers end bit-identical;
hostile files give one line naming the file, from a worker too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY
from safetensors.torch import load_file

import igdm_kit
from igdm_kit import _recipe as R
from igdm_kit._training.batches import augment, epoch_order
from igdm_kit._training.engine import run
from igdm_kit._training.loader import MemorySet, StreamSet, image_seed
from igdm_kit.errors import DataError
from igdm_kit.interfaces import DatasetInfo, ImageSource


def write_folder(root: Path, classes: int = 3, per_class: int = 40, size: int = 10, seed: int = 0) -> Path:
    """root/train/<class>/*.png and root/test/<class>/*.png of random pixels (``size``×``size``, resized by
    the dataset to its image_size)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("test", 4)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("folder") / "data")


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # more workers than this machine's cores
@pytest.mark.parametrize("workers", [0, 1, 4])
def test_streamed_batches_are_the_in_memory_batches(folder, workers):
    ds = igdm_kit.create_dataset("image-folder", root=str(folder), image_size=8, stream=True)
    info = ds.info()
    assert info.crop_padding == 1 and info.hflip  # the batched augmentation runs on both paths
    memory = MemorySet(*igdm_kit.create_dataset("image-folder", root=str(folder), image_size=8).load("train"))
    stream = StreamSet(ds.source("train"), info, workers=workers)
    assert len(stream) == len(memory) == 120 and torch.equal(stream.labels, memory.labels)
    for epoch in (1, 2):
        order, gen_m = epoch_order(120, 5, epoch)
        _, gen_s = epoch_order(120, 5, epoch)
        a = list(memory.batches(order, 32, 1, 4, seed=5, epoch=epoch))  # from step 1: a resumed epoch
        b = list(stream.batches(order, 32, 1, 4, seed=5, epoch=epoch))
        assert [s for s, *_ in a] == [s for s, *_ in b] == [1, 2, 3]
        for (_, ia, xa, ya), (_, ib, xb, yb) in zip(a, b, strict=True):
            assert torch.equal(ia, ib) and torch.equal(ya, yb) and xb.dtype == torch.uint8
            assert torch.equal(augment(xa, info, gen_m), augment(xb, info, gen_s))


class NoisySource(ImageSource):
    """A source with a per-image transform: each pixel plus a draw of its generator (mod 256), then a flip
    decided by another draw — so the result shows every draw."""

    augments = True

    def __init__(self, n: int = 50) -> None:
        self.labels = torch.arange(n) % 10
        self.base = torch.arange(n * 3 * 4 * 4).reshape(n, 3, 4, 4).to(torch.uint8)

    def __len__(self) -> int:
        return self.base.shape[0]

    def read(self, index, generator=None):
        x = self.base[index].clone()
        if generator is not None:
            x = x + torch.randint(0, 256, x.shape, generator=generator, dtype=torch.uint8)
            if bool(torch.rand(1, generator=generator) < 0.5):
                x = x.flip(2)
        return x


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_a_per_image_transform_depends_on_seed_epoch_and_index_only():
    info = DatasetInfo(num_classes=10, in_channels=3, image_size=4)
    order, _ = epoch_order(50, 3, 1)
    runs = [[x for _, _, x, _ in StreamSet(NoisySource(), info, workers=w).batches(order, 8, 0, 7, seed=3, epoch=1)]
            for w in (0, 1, 4)]
    for other in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], other, strict=True))
    # the oracle: image i of epoch 1 is read with a generator seeded from (3, 1, i), wherever it falls
    src, first = NoisySource(), order[:8]
    expected = torch.stack([src.read(int(i), torch.Generator().manual_seed(image_seed(3, 1, int(i)))) for i in first])
    assert torch.equal(runs[0][0], expected)
    again = [x for _, _, x, _ in StreamSet(NoisySource(), info).batches(order, 8, 0, 1, seed=3, epoch=2)]
    assert not torch.equal(again[0], runs[0][0])  # another epoch, other draws
    assert len({image_seed(3, e, i) for e in (1, 2) for i in range(50)}) == 100


STREAM = TINY.replace('name = "digits"\ntrain_limit = 256', 'name = "image-folder"\nroot = "{root}"\nimage_size = 8'
                      '{extra}').replace(
    "batch_size = 64", "batch_size = 16")


def _recipe(tmp_path, root, extra="", epochs=1, name="r.toml") -> Path:
    text = STREAM.format(root=root, extra=extra).replace("epochs = 1", f"epochs = {epochs}")
    p = tmp_path / name
    p.write_text(text)
    return p


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_a_streamed_run_with_workers_equals_the_in_memory_run(folder, tmp_path):
    memory = run(R.load(_recipe(tmp_path, folder, name="m.toml")), output_dir=tmp_path / "memory")
    streamed_recipe = R.load(_recipe(tmp_path, folder, "\nstream = true\nworkers = 2", name="s.toml"))
    assert streamed_recipe.digest() == memory.recipe.digest()  # how the images are read is not what is trained
    streamed = run(streamed_recipe, output_dir=tmp_path / "stream")
    _same(load_file(str(memory.output_dir / "model.safetensors")),
          load_file(str(streamed.output_dir / "model.safetensors")))
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(memory.metrics) == strip(streamed.metrics)


def _start(recipe: Path, out: Path, trace: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "IGDM_KIT_TRACE_DATA": str(trace)}
    return subprocess.Popen([sys.executable, "-m", "igdm_kit", "run", str(recipe), "--output", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_steps(trace: Path, steps: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    t0 = time.time()
    path = Path(f"{trace}.rank0")
    while not (path.exists() and path.read_text().count("\n") >= steps):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() - t0 < timeout
        time.sleep(0.01)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_mid_epoch_with_workers_resumes_bit_identical(folder, tmp_path, sig):
    """8 steps an epoch, 3 epochs: stopped in epoch 2 (after step 11 started), resumed with 2 workers; the
    weights are those of the uninterrupted in-memory run. SIGINT saves mid-epoch (the resumed epoch starts
    at the next step); SIGKILL loses the partial epoch (it restarts at the start of epoch 2)."""
    ref = run(R.load(_recipe(tmp_path, folder, epochs=3, name="m.toml")), output_dir=tmp_path / "reference")
    recipe = _recipe(tmp_path, folder, "\nstream = true\nworkers = 2", epochs=3)
    out = tmp_path / "run"
    proc = _start(recipe, out, tmp_path / "trace")
    _wait_steps(tmp_path / "trace", 11, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert not (out / "results.json").exists()
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]
        assert "epoch 2, step" in err
    res = subprocess.run([sys.executable, "-m", "igdm_kit", "run", str(recipe), "--output", str(out), "--resume"],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    _same(load_file(str(ref.output_dir / "model.safetensors")), load_file(str(out / "model.safetensors")))


@pytest.mark.parametrize("damage, words", [
    (lambda p: p.write_bytes(p.read_bytes()[:40]), "cannot read image"),  # truncated
    (lambda p: p.write_text("just text, named like an image"), "UnidentifiedImageError"),
])
@pytest.mark.parametrize("workers", [0, 2])
def test_a_hostile_file_in_a_streamed_set_is_one_line_naming_it(tmp_path, damage, words, workers, cli):
    root = write_folder(tmp_path / "data", per_class=6)
    bad = root / "train" / "class1" / "003.png"
    damage(bad)
    res = cli("run", _recipe(tmp_path, root, f"\nstream = true\nworkers = {workers}"), "--output", tmp_path / "run")
    assert res.code == 1
    errors = [line for line in res.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: cannot read image") and str(bad) in errors[0]
    assert words in errors[0]
    assert "Traceback" not in res.err and "worker" not in res.err


def test_a_decompression_bomb_is_one_line(tmp_path, monkeypatch):
    from PIL import Image

    root = write_folder(tmp_path / "data", per_class=2)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40)  # 10×10 = 100 pixels: over twice the limit
    src = igdm_kit.create_dataset("image-folder", root=str(root), image_size=8, stream=True).source("train")
    with pytest.raises(DataError, match="DecompressionBombError"):
        StreamSet(src, DatasetInfo(num_classes=3, in_channels=3, image_size=8)).take(torch.tensor([0]))


def test_a_source_returning_the_wrong_image_is_one_line():
    class Floats(NoisySource):
        augments = False

        def read(self, index, generator=None):
            return super().read(index).float()

    info = DatasetInfo(num_classes=10, in_channels=3, image_size=4)
    order, _ = epoch_order(50, 0, 1)
    with pytest.raises(DataError, match=r"image \d+ of the streamed training set is torch.float32"):
        list(StreamSet(Floats(), info, workers=1).batches(order, 8, 0, 7, seed=0, epoch=1))


@pytest.mark.slow
def test_two_ranks_stream_disjoint_shards_and_match_the_in_memory_ranks(folder, tmp_path):
    """torchrun, 2 ranks (gloo), each streaming its shard with a worker: every epoch's images split between
    them (one wrap-around image at most twice), and the weights of the same two ranks holding the set."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    outs = {}
    for name, extra in (("memory", ""), ("stream", "\nstream = true\nworkers = 1")):
        recipe = _recipe(tmp_path, folder, extra, epochs=2, name=f"{name}.toml")
        trace = tmp_path / f"trace-{name}"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "igdm_kit", "run", str(recipe), "--output", str(tmp_path / name)]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                             env={**env, "IGDM_KIT_TRACE_DATA": str(trace)})
        assert res.returncode == 0, res.stderr[-3000:]
        outs[name] = load_file(str(tmp_path / name / "model.safetensors"))
        rows = [[list(map(int, r.split())) for r in Path(f"{trace}.rank{k}").read_text().splitlines()]
                for k in (0, 1)]
        assert len(rows[0]) == len(rows[1]) == 2 * 4  # 60 images a rank, batch 16: 4 steps, 2 epochs
        for epoch in range(2):
            a = {i for row in rows[0][epoch * 4:(epoch + 1) * 4] for i in row}
            b = {i for row in rows[1][epoch * 4:(epoch + 1) * 4] for i in row}
            assert not a & b and len(a | b) == 120
    _same(outs["memory"], outs["stream"])


def test_a_path_table_gives_back_every_path(tmp_path):
    """Paths held as one buffer (no Python object per file): the same paths back, non-ASCII names too."""
    from igdm_kit_plugins.datasets.common import PathTable

    paths = [tmp_path / "a" / "1.png", tmp_path / "ü ñ" / "日本.JPEG", tmp_path / "b" / "x" / "2.png"]
    table = PathTable(paths)
    assert len(table) == 3 and [table[i] for i in range(3)] == paths and table[-1] == paths[-1]
    assert isinstance(table.blob, np.ndarray) and isinstance(table.offsets, np.ndarray)  # two objects in all
    with pytest.raises(IndexError):
        table[3]
    assert len(PathTable([])) == 0
