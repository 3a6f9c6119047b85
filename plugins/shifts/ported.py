"""Three common corruptions of ``imagecorruptions`` 1.1.2 (Michaelis et al., 2019, after Hendrycks &
Dietterich, ICLR 2019), ported line by line: ``glass_blur`` and ``fog`` no longer run with current
libraries (scikit-image ≥ 0.19 renamed ``gaussian(multichannel=True)`` to ``channel_axis=-1``; NumPy 2
removed ``np.float_``) — same constants, same calls to ``np.random`` in the same order, so with one seed the
output is the package's own (``tests/test_shifts.py`` checks it against the package run with a shim);
``impulse_noise`` runs, but scikit-image ≥ 0.19's ``random_noise`` draws from its own unseeded generator,
so here it gets a seed drawn from ``np.random`` (the same formula: salt and pepper on a fraction c).

Each takes a PIL image (H×W×3) and a severity 1–5 and returns a float array in [0, 255], as the package.
"""

from __future__ import annotations

import numpy as np


def glass_blur(x, severity: int = 1) -> np.ndarray:
    """Gaussian blur σ, then ``iterations`` passes of local pixel swaps within ``max_delta``, blur again."""
    from skimage.filters import gaussian

    sigma, max_delta, iterations = [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)][severity - 1]
    x = np.uint8(gaussian(np.array(x) / 255., sigma=sigma, channel_axis=-1) * 255)
    shape = x.shape
    for _ in range(iterations):  # locally shuffle pixels
        for h in range(shape[0] - max_delta, max_delta, -1):
            for w in range(shape[1] - max_delta, max_delta, -1):
                dx, dy = np.random.randint(-max_delta, max_delta, size=(2,))
                hp, wp = h + dy, w + dx
                x[h, w], x[hp, wp] = x[hp, wp], x[h, w]
    return np.clip(gaussian(x / 255., sigma=sigma, channel_axis=-1), 0, 1) * 255


def impulse_noise(x, severity: int = 1) -> np.ndarray:
    """Salt-and-pepper noise on a fraction c of the pixel values (scikit-image's ``random_noise``)."""
    from skimage.util import random_noise

    c = [.03, .06, .09, 0.17, 0.27][severity - 1]
    x = random_noise(np.array(x) / 255., mode="s&p", amount=c, rng=int(np.random.randint(2 ** 31)))
    return np.clip(x, 0, 1) * 255


def plasma_fractal(mapsize: int = 256, wibbledecay: float = 3) -> np.ndarray:
    """A (mapsize × mapsize) height map in [0, 1] by the diamond-square algorithm (mapsize a power of 2)."""
    assert mapsize & (mapsize - 1) == 0
    maparray = np.empty((mapsize, mapsize), dtype=np.float64)
    maparray[0, 0] = 0
    stepsize, wibble = mapsize, 100.0

    def wibbledmean(array):
        return array / 4 + wibble * np.random.uniform(-wibble, wibble, array.shape)

    while stepsize >= 2:
        half = stepsize // 2
        corners = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]  # squares
        square = corners + np.roll(corners, shift=-1, axis=0)
        square += np.roll(square, shift=-1, axis=1)
        maparray[half:mapsize:stepsize, half:mapsize:stepsize] = wibbledmean(square)
        dr = maparray[half:mapsize:stepsize, half:mapsize:stepsize]  # diamonds
        ul = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        lt = (dr + np.roll(dr, 1, axis=0)) + (ul + np.roll(ul, -1, axis=1))
        maparray[0:mapsize:stepsize, half:mapsize:stepsize] = wibbledmean(lt)
        tt = (dr + np.roll(dr, 1, axis=1)) + (ul + np.roll(ul, -1, axis=0))
        maparray[half:mapsize:stepsize, 0:mapsize:stepsize] = wibbledmean(tt)
        stepsize //= 2
        wibble /= wibbledecay
    maparray -= maparray.min()
    return maparray / maparray.max()


def fog(x, severity: int = 1) -> np.ndarray:
    """x + c₀·plasma fractal (decay c₁), rescaled by max/(max + c₀)."""
    c = [(1.5, 2), (2., 2), (2.5, 1.7), (2.5, 1.5), (3., 1.4)][severity - 1]
    shape = np.array(x).shape
    map_size = 1 if max(shape) == 0 else 2 ** (int(max(shape)) - 1).bit_length()
    x = np.array(x) / 255.
    max_val = x.max()
    x += c[0] * plasma_fractal(mapsize=map_size, wibbledecay=c[1])[:shape[0], :shape[1]][..., np.newaxis]
    return np.clip(x * max_val / (max_val + c[0]), 0, 1) * 255
