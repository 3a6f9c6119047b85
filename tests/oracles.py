"""Independent numeric oracles shared by the tests: plain float64 loops, no torch.nn.functional.

They restate the spec's formulas (softmax, KL batchmean with temperature, CE) in the most literal way, so
a test compares the toolkit's vectorized torch code against a second, independent computation.
"""

from __future__ import annotations

import math

import numpy as np


def _rows(a) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def np_softmax(row) -> np.ndarray:
    row = _rows(row)
    m = max(row)
    e = [math.exp(v - m) for v in row]
    s = sum(e)
    return np.array([v / s for v in e])


def np_kl_row(a, b, tau: float = 1.0) -> float:
    """KL(p(a/τ) ‖ p(b/τ)) of one row, summed over classes."""
    p, q = np_softmax(_rows(a) / tau), np_softmax(_rows(b) / tau)
    return sum(p[c] * (math.log(p[c]) - math.log(q[c])) for c in range(len(p)))


def np_kl(target_logits, logits, tau: float = 1.0) -> float:
    """KL_τ(target ‖ logits) = τ²·KL(target/τ ‖ logits/τ), summed over classes, averaged over the batch."""
    a, b = _rows(target_logits), _rows(logits)
    return tau * tau * sum(np_kl_row(a[i], b[i], tau) for i in range(len(a))) / len(a)


def np_ce(logits, y) -> float:
    """Mean cross-entropy over the batch."""
    z = _rows(logits)
    y = [int(t) for t in y]
    return -sum(math.log(np_softmax(z[i])[y[i]]) for i in range(len(y))) / len(y)
