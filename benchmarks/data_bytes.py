"""The training set as uint8 against float32, side by side in one process: bytes held and batch time.

    python benchmarks/data_bytes.py [--images 50000] [--size 32] [--batch 128] [--steps 200]

Builds a CIFAR-shaped set of random 8-bit images (``synthetic``), then times the trainer's batch path — index,
random crop (padding size/8) and flip, convert — from the uint8 set (converted per batch: what a run does now)
and from the same set divided by 255 up front into float32 (what it did before), alternating the two so the
machine's state is shared. One CPU thread (``torch.set_num_threads(1)``): the host's share of a step. The
batches of the two paths are checked equal on the way.
"""

from __future__ import annotations

import argparse
import time

import torch

import igdm_kit
from igdm_kit._training.batches import augment, epoch_order
from igdm_kit.interfaces import DatasetInfo
from igdm_kit.nn import to_float_images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=50_000)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=200)
    a = ap.parse_args()
    torch.set_num_threads(1)
    pixels, _ = igdm_kit.create_dataset("synthetic", train_size=a.images, test_size=1,
                                        image_size=a.size).load("train")
    floats = pixels.to(torch.float32).div_(255.0)
    info = DatasetInfo(num_classes=100, in_channels=3, image_size=a.size, crop_padding=a.size // 8, hflip=True)
    mib = 2 ** 20
    print(f"training set {tuple(pixels.shape)}: uint8 {pixels.untyped_storage().nbytes() / mib:.1f} MiB, "
          f"float32 {floats.untyped_storage().nbytes() / mib:.1f} MiB")
    order, gen_u = epoch_order(a.images, 0, 1)
    _, gen_f = epoch_order(a.images, 0, 1)
    spent = {"uint8": 0.0, "float32": 0.0}
    for step in range(a.steps):
        idx = order[(step * a.batch) % a.images:][:a.batch]
        t0 = time.perf_counter()
        xu = to_float_images(augment(pixels[idx], info, gen_u))
        t1 = time.perf_counter()
        xf = augment(floats[idx], info, gen_f)
        t2 = time.perf_counter()
        spent["uint8"] += t1 - t0
        spent["float32"] += t2 - t1
        assert torch.equal(xu, xf)
    for k, v in spent.items():
        print(f"{k:8s} batch path: {1e3 * v / a.steps:.3f} ms per batch of {a.batch} "
              f"({a.steps * a.batch / v:,.0f} images/s, 1 thread)")


if __name__ == "__main__":
    main()
