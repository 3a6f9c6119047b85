"""The `synthetic` dataset: CIFAR-100's shapes by default, 8-bit uniform pixels, uniform labels, seeded.

Oracles: CIFAR-100's published shapes (50,000 / 10,000 images, 3×32×32, 100 classes, padding 4 + flips as
the CIFAR plugin reports them), the moments of the discrete uniform distribution on {0, 1/255, …, 1}
(mean 1/2, variance (256² − 1) / (12·255²)), and binomial bounds on the class counts.
"""

from __future__ import annotations

import math

import pytest
import torch

import igdm_kit
from igdm_kit import _recipe as R
from igdm_kit.errors import IgdmKitError, RecipeError
from igdm_kit.nn import to_float_images


def test_defaults_are_cifar100_shaped():
    ds = igdm_kit.create_dataset("synthetic")
    info = ds.info()
    assert (info.num_classes, info.in_channels, info.image_size) == (100, 3, 32)
    assert (info.crop_padding, info.hflip, info.mean, info.std) == (4, True, None, None)
    assert (ds.options.train_size, ds.options.test_size) == (50_000, 10_000)


def test_pixels_are_uniform_8_bit_values_and_labels_uniform_classes():
    ds = igdm_kit.create_dataset("synthetic", train_size=4000, test_size=10, num_classes=10, image_size=8)
    pixels, y = ds.load("train")
    assert pixels.shape == (4000, 3, 8, 8) and pixels.dtype == torch.uint8 and y.dtype == torch.int64
    x = to_float_images(pixels)  # k/255, as decoded image files give
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0  # 768k draws reach both ends
    n = x.numel()
    var = (256 ** 2 - 1) / (12 * 255 ** 2)
    assert abs(float(x.double().mean()) - 0.5) < 5 * math.sqrt(var / n)
    assert float(x.double().var()) == pytest.approx(var, rel=0.01)
    counts = torch.bincount(y, minlength=10)
    sd = math.sqrt(4000 * 0.1 * 0.9)  # binomial(4000, 1/10): mean 400
    assert counts.numel() == 10 and int((counts - 400).abs().max()) < 5 * sd


def test_seeded_per_split_and_reproducible():
    a = igdm_kit.create_dataset("synthetic", train_size=16, test_size=16, seed=3)
    b = igdm_kit.create_dataset("synthetic", train_size=16, test_size=16, seed=3)
    c = igdm_kit.create_dataset("synthetic", train_size=16, test_size=16, seed=4)
    xa, ya = a.load("train")
    xb, yb = b.load("train")
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(xa, c.load("train")[0])
    assert not torch.equal(xa, a.load("test")[0])  # the test split is another stream
    assert a.load("test")[0].shape == (16, 3, 32, 32)


def test_shape_and_augmentation_options():
    ds = igdm_kit.create_dataset("synthetic", in_channels=1, image_size=64, num_classes=200,
                                 train_size=2, test_size=3, hflip=False)
    info = ds.info()
    assert (info.in_channels, info.image_size, info.num_classes) == (1, 64, 200)
    assert (info.crop_padding, info.hflip) == (8, False)  # image_size / 8, as Tiny-ImageNet's 8 for 64×64
    assert ds.load("test")[0].shape == (3, 1, 64, 64)
    assert igdm_kit.create_dataset("synthetic", crop_padding=0).info().crop_padding == 0


@pytest.mark.parametrize(("options", "key"), [({"train_size": 0}, "train_size"),
                                              ({"in_channels": 2}, "in_channels"),
                                              ({"num_classes": 1}, "num_classes"), ({"sizes": 3}, "sizes")])
def test_bad_options_name_the_key(options, key):
    with pytest.raises(IgdmKitError) as exc:
        igdm_kit.create_dataset("synthetic", **options)
    assert key in str(exc.value) and "\n" not in str(exc.value)


def test_a_recipe_reports_the_dotted_path(write_recipe):
    text = ('[data]\nname = "synthetic"\ntrain_size = -5\n[student]\nmodel = "small-cnn"\n'
            '[method]\nname = "pgd-at"\n')
    with pytest.raises(RecipeError) as exc:
        R.load(write_recipe(text))
    assert "data.train_size" in str(exc.value)
