"""The 15 common corruptions at 5 severities (Hendrycks & Dietterich, "Benchmarking neural network
robustness to common corruptions and perturbations", ICLR 2019), computed from the test set with the
``imagecorruptions`` package (Michaelis et al., 2019; the ``corruptions`` extra), ``glass_blur``, ``fog``
and (seeded) ``impulse_noise`` from its formulas ported in ``ported.py``.

Each image is quantized to 8 bits (round(255·x)), corrupted as ``imagecorruptions.corrupt`` does (a grey
image as three equal channels; ``np.uint8`` of the result) and divided by 255, so the corrupted set stays in
[0, 1] and keeps its labels; a grey image comes back as the package's ``rgb2gray`` of the result. The
package's constants are ImageNet-C's; the published CIFAR-10-C / CIFAR-100-C files (``corruption-files``)
used other constants for 32×32 images. ``corrupt()`` refuses images under 32 pixels; the functions are
called directly here, so small images (8×8 digits) work, with kernels that then cover much of the image.
Random corruptions draw from NumPy's global RNG seeded with ``seed`` per (corruption, severity), on a
saved-and-restored state, in image order: the same seed gives the same sets.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from igdm_kit.errors import IgdmKitError
from igdm_kit.interfaces import Options, Shift, ShiftedSet

COMMON = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
          "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
          "jpeg_compression")
Name = Literal["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
               "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
               "jpeg_compression"]
GREY = (0.2989, 0.5870, 0.1140)  # the package's rgb2gray weights
PORTED = ("glass_blur", "fog", "impulse_noise")
#: NumPy's global RNG takes seeds 0 to 2³² − 1.
MAX_NUMPY_SEED = 2**32 - 1


def function(name: str):
    """The corruption ``f(PIL image, severity)`` of that name: the package's, or the port."""
    from . import ported

    if name in PORTED:
        return getattr(ported, name)
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its pkg_resources and scipy.ndimage.interpolation imports
            from imagecorruptions import corruption_dict
    except ImportError:
        raise IgdmKitError("computed corruptions need the imagecorruptions package, which is not installed",
                           "pip install 'igdm-kit[corruptions]'") from None
    return corruption_dict[name]


def corrupt(x, name: str, severity: int, seed: int = 0):
    """Images (N, C, H, W) in [0, 1], C = 1 or 3 → the same images under corruption ``name`` at
    ``severity``, quantized to 8 bits as the package's output."""
    import torch
    from PIL import Image

    f = function(name)
    imgs = np.rint(x.detach().cpu().clamp(0, 1).numpy() * 255).astype(np.uint8).transpose(0, 2, 3, 1)
    grey = imgs.shape[-1] == 1
    out = np.empty(imgs.shape, dtype=np.uint8)
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        for i, img in enumerate(imgs):
            rgb = np.repeat(img, 3, axis=-1) if grey else img
            res = np.uint8(f(Image.fromarray(rgb), severity))
            out[i] = np.uint8(np.dot(res[..., :3], GREY))[..., None] if grey else res
    finally:
        np.random.set_state(state)
    return torch.from_numpy(out.transpose(0, 3, 1, 2).copy()).float().div_(255.0)


class Corruptions(Shift):
    description = "15 common corruptions × 5 severities computed from the test set (imagecorruptions)"
    requires = ("imagecorruptions",)
    install = "pip install 'igdm-kit[corruptions]'"

    class Options(Options):
        corruptions: list[Name] = Field(default_factory=lambda: list(COMMON), min_length=1,
                                        description="which of the 15 (default: all)")
        severities: list[int] = Field(default_factory=lambda: [1, 2, 3, 4, 5], min_length=1,
                                      description="severities 1–5")
        seed: int | None = Field(None, ge=0, le=MAX_NUMPY_SEED, description="seed of the random corruptions, 0 to "
                                 "2³² − 1, NumPy's range (default: the eval seed)")

        @field_validator("severities")
        @classmethod
        def _severities(cls, v):
            if any(s not in (1, 2, 3, 4, 5) for s in v):
                raise ValueError("severities are integers 1 to 5")
            return v

    def sets(self, ctx):
        if ctx.info.in_channels not in (1, 3):
            raise IgdmKitError(f"corruptions need grey or RGB images, not {ctx.info.in_channels} channels",
                               "drop 'corruptions' from the shifts")
        seed = ctx.seed if self.options.seed is None else self.options.seed
        if not 0 <= seed <= MAX_NUMPY_SEED:
            raise IgdmKitError(f"corruptions: the evaluation's seed {seed} is outside NumPy's 0 to {MAX_NUMPY_SEED}",
                               "pass a smaller --seed, or give the shift its own: corruptions:seed=0")
        function("contrast")  # a missing package fails here, before anything runs
        x = ctx.x
        return [ShiftedSet(key=f"{name}-{s}", label=f"{name.replace('_', ' ')} {s}", group="corruption",
                           family=name, severity=s,
                           load=lambda name=name, s=s: (corrupt(x, name, s, seed), ctx.y))
                for name in self.options.corruptions for s in sorted(set(self.options.severities))]
