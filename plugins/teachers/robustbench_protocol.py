"""RobustBench's evaluation protocol for the models of its zoo (Croce et al., *RobustBench: a standardized
adversarial robustness benchmark*, NeurIPS Datasets and Benchmarks 2021; robustbench 1.1.1's ``eval.py`` and
``data.py``), so that ``igdm-kit eval`` of a zoo model gives a number comparable with its leaderboard.

==========  ========  ==========  =============================================================================
dataset     threat    ε           test images and preprocessing
==========  ========  ==========  =============================================================================
cifar10/100 L∞        8/255       the whole test split (10,000), as they are
cifar10     L2        0.5         the same
imagenet    L∞        4/255       its 5,000 listed validation images (``test_list = "robustbench"``), each by the
                                  model's ``preprocessing``: ``Res256Crop224`` (resize 256, bilinear; crop 224),
                                  ``BicubicRes256Crop224`` (the same, bicubic), ``Res224`` (resize to 224×224),
                                  ``Crop288`` (centre crop 288, no resize)
==========  ========  ==========  =============================================================================

The attack is AutoAttack ``standard`` in every case. A model whose preprocessing is not named in the zoo
(RobustBench then asks timm's configuration of the model) is evaluated with ``Res256Crop224`` and the
protocol says so (its ``caveat``). The corruptions leaderboards have no ε and no protocol here.
"""

from __future__ import annotations

from igdm_kit.interfaces import EvalProtocol

#: RobustBench's ImageNet preprocessing → the ``imagenet`` dataset's options that are it exactly
IMAGENET_TRANSFORMS = {
    "Res256Crop224": {"image_size": 224, "test_crop": 0.875, "test_transform": "resize-crop"},
    "BicubicRes256Crop224": {"image_size": 224, "test_crop": 0.875, "test_transform": "bicubic-resize-crop"},
    "Res224": {"image_size": 224, "test_transform": "resize"},
    "Crop288": {"image_size": 288, "test_transform": "crop"},
}
_EPS = {("Linf", "cifar10"): (8 / 255, "8/255"), ("Linf", "cifar100"): (8 / 255, "8/255"),
        ("L2", "cifar10"): (0.5, "0.5"), ("Linf", "imagenet"): (4 / 255, "4/255")}
_THREAT_TEXT = {"Linf": "L∞", "L2": "L2"}
_DATASET_TEXT = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "imagenet": "ImageNet"}


def robustbench_protocol(name: str, dataset: str, threat: str, preprocessing: str | None) -> EvalProtocol | None:
    """The protocol of RobustBench's ``dataset``/``threat`` leaderboard for model ``name``, whose zoo entry
    names ``preprocessing``; None where RobustBench has no Lp leaderboard for it."""
    if (threat, dataset) not in _EPS:
        return None
    eps, eps_text = _EPS[(threat, dataset)]
    title = f"RobustBench's {_DATASET_TEXT[dataset]} {_THREAT_TEXT[threat]} protocol"
    if dataset != "imagenet":
        return EvalProtocol(title, threat, eps, eps_text)
    caveat = None
    if preprocessing not in IMAGENET_TRANSFORMS:
        caveat = (f"RobustBench takes {name}'s preprocessing from timm's configuration of the model, which "
                  "igdm-kit does not read: its images are resized to 256 and cropped to 224 (bilinear) here, "
                  "which may not be the leaderboard's")
        preprocessing = "Res256Crop224"
    options = {"test_list": "robustbench", **IMAGENET_TRANSFORMS[preprocessing]}
    return EvalProtocol(f"{title} ({preprocessing})", threat, eps, eps_text, options, caveat=caveat)
