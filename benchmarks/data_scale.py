"""Memory and speed of the data path as the training set grows (issue 22).

    python benchmarks/data_scale.py                                    # 10k, 50k, 200k JPEGs at 224×224
    python benchmarks/data_scale.py --sizes 500,2000 --image-size 64 --steps 20 --cifar 5000   # minutes → seconds

1. For each size N it builds an ImageNet-layout folder of synthetic JPEGs (``<root>/<N>/train/<class>/*.JPEG``,
   100 classes, smooth random images so they compress and decode like photographs; kept for the next run),
   then measures
   * the loader alone: ``[data] workers`` DataLoader processes decoding batches (``_training.loader``),
     images/s in all and per worker;
   * a training run streaming the folder (``stream = true``, ``--steps`` steps of small-cnn): peak memory of
     all its processes, workers included (the sum of their PSS: shared pages counted once), and step
     images/s — so the loader's headroom over the step is a number.
2. On a CIFAR-sized set held in memory (fake CIFAR-100 files, 3×32×32, ``--cifar`` training images, with
   ``cache_dir``) it runs 1 and 2 ranks (torchrun, gloo, CPU) and prints the peak memory of each, in all and of
   the data file alone (the memory-mapped cache every rank shares).

Memory is read from ``/proc`` (Linux), every 0.1 s, over the process tree of the run.
"""

from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

RECIPE = """
name = "data-scale"
[data]
name = "{data}"
root = "{root}"
{extra}
[student]
model = "small-cnn"
width = 8
[method]
name = "pgd-at"
[attack]
eps = 0.03
step_size = 0.01
steps = 1
[train]
epochs = 1
batch_size = {batch}
milestones = []
[eval]
attacks = ["clean"]
"""


def write_folder(root: Path, n: int, size: int, classes: int = 100, seed: int = 0) -> Path:
    from PIL import Image

    done = root / ".complete"
    if done.exists():
        return root
    rng = np.random.default_rng(seed)
    for split, count in (("train", n), ("test", classes)):
        for i in range(count):
            c = i % classes
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            low = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)  # upsampled: smooth, like a photograph
            img = Image.fromarray(low).resize((size, size), Image.BICUBIC)
            img.save(folder / f"{split}_{i:07d}.JPEG", quality=90)
    done.write_text("")
    return root


def pss_tree(pid: int, under: Path | None = None) -> tuple[int, int]:
    """(PSS in bytes summed over ``pid`` and its descendants, the part of it in mappings of files under
    ``under``): PSS splits a shared page between the processes mapping it, so a file every rank maps counts
    once per machine."""
    total, data, stack = 0, 0, [pid]
    prefix = str(under.resolve()) if under is not None else None
    while stack:
        p = stack.pop()
        try:
            mapped = None
            for line in Path(f"/proc/{p}/smaps").read_text().splitlines():
                head = line.split(maxsplit=5)
                if len(head) >= 5 and "-" in head[0] and ":" in head[3]:  # a mapping's header line
                    mapped = head[5] if len(head) == 6 else ""
                elif line.startswith("Pss:"):
                    kb = int(line.split()[1]) * 1024
                    total += kb
                    if prefix and mapped and mapped.startswith(prefix):
                        data += kb
            for task in Path(f"/proc/{p}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total, data


def run_measured(cmd: list[str], env: dict, under: Path | None = None) -> tuple[int, int, str, str]:
    """Run ``cmd``; (peak PSS of its process tree, peak PSS of its mappings of files under ``under``, stdout,
    stderr)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak = [0, 0]

    def sample() -> None:
        while proc.poll() is None:
            total, data = pss_tree(proc.pid, under)
            peak[0], peak[1] = max(peak[0], total), max(peak[1], data)
            time.sleep(0.1)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out, err = proc.communicate()
    t.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    return peak[0], peak[1], out, err


def loader_speed(root: Path, size: int, workers: int, batch: int, batches: int) -> float:
    import torch

    import igdm_kit
    from igdm_kit._training.loader import StreamSet

    ds = igdm_kit.create_dataset("image-folder", root=str(root), image_size=size, stream=True)
    s = StreamSet(ds.source("train"), ds.info(), workers=workers)
    order = torch.randperm(len(s), generator=torch.Generator().manual_seed(0))
    steps = min(batches, len(s) // batch)
    it = s.batches(order, batch, 0, steps, seed=0, epoch=1)
    next(it)  # the workers' start is not decoding
    t0 = time.perf_counter()
    n = sum(x.shape[0] for _, _, x, _ in it)
    return n / (time.perf_counter() - t0)


def folder_runs(a, base: Path, env: dict) -> None:
    print(f"{'images':>8} {'loader img/s':>13} {'per worker':>11} {'step img/s':>11} {'peak MiB (all processes)':>25}")
    for n in a.sizes:
        root = write_folder(base / f"folder-{n}-{a.image_size}", n, a.image_size)
        speed = loader_speed(root, a.image_size, a.workers, a.batch, a.loader_batches)
        recipe = base / f"run-{n}.toml"
        recipe.write_text(RECIPE.format(data="image-folder", root=root, batch=a.batch, extra=(
            f"image_size = {a.image_size}\nstream = true\nworkers = {a.workers}\n"
            f"train_limit = {a.steps * a.batch}")))
        out = base / f"run-{n}"
        peak, _, _, _ = run_measured([sys.executable, "-m", "igdm_kit", "run", str(recipe), "--output", str(out),
                                      "--overwrite"], env)
        import json

        seconds = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["seconds"]
        print(f"{n:>8,} {speed:>13,.0f} {speed / max(1, a.workers):>11,.0f} "
              f"{a.steps * a.batch / seconds:>11,.0f} {peak / 2**20:>25,.0f}")


def write_cifar100(root: Path, n: int) -> Path:
    base = root / "cifar-100-python"
    if (base / "meta").exists():
        return root
    base.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, count in (("train", n), ("test", 1000)):
        entry = {"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
                 "fine_labels": rng.integers(0, 100, count).tolist(), "coarse_labels": [0] * count,
                 "filenames": [""] * count, "batch_label": name}
        with open(base / name, "wb") as fh:
            pickle.dump(entry, fh, protocol=4)
    with open(base / "meta", "wb") as fh:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, fh)
    return root


def rank_runs(a, base: Path, env: dict) -> None:
    root = write_cifar100(base / f"cifar-{a.cifar}", a.cifar)
    recipe = base / "cifar.toml"
    # the whole set is mapped (and read once, its checksum); the run trains --steps steps of it
    recipe.write_text(RECIPE.format(data="cifar100", root=root, batch=a.batch, extra=(
        f'cache_dir = "{base / "cache"}"\ntrain_limit = {a.steps * a.batch}')))
    peaks = {}
    for ranks in (1, 2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
               "-m", "igdm_kit", "run", str(recipe), "--output", str(base / f"cifar-{ranks}"), "--overwrite"]
        peaks[ranks] = run_measured(cmd, env, under=base / "cache")[:2]
        total, data = peaks[ranks]
        print(f"CIFAR-sized set ({a.cifar:,} train images, cache_dir), {ranks} rank(s): peak {total / 2**20:,.0f} "
              f"MiB (all processes), of which the data file {data / 2**20:,.0f} MiB")
    print(f"2 ranks / 1 rank: {peaks[2][0] / peaks[1][0]:.2f}× in all, {peaks[2][1] / max(1, peaks[1][1]):.2f}× "
          "for the data (the rest is each process's own torch and model)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,50000,200000", type=lambda s: [int(v) for v in s.split(",")])
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--loader-batches", type=int, default=50)
    ap.add_argument("--cifar", type=int, default=50_000, help="training images of the CIFAR-sized set (0: skip)")
    ap.add_argument("--root", type=Path, default=None, help="where the folders are built (default: a temporary)")
    a = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with tempfile.TemporaryDirectory() as tmp:
        base = a.root or Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        folder_runs(a, base, env)
        if a.cifar:
            rank_runs(a, base, env)


if __name__ == "__main__":
    main()
