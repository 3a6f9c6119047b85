"""Uncertainty of accuracies: Wilson intervals, and McNemar's exact test for paired per-image flags.

On n test images an accuracy is k/n with binomial noise; two models judged on the *same* images differ
only on the images where exactly one of them is right, so their difference is tested on those discordant
pairs (McNemar's exact test: under "no difference" each discordant image is a fair coin). Both come from
SciPy (``scipy.stats.binomtest``; a scikit-learn dependency already installed), not reimplemented.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

#: The level of every interval and test igdm-kit reports.
CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE


def wilson(correct: int, total: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval of the accuracy correct/total, in percent."""
    from scipy.stats import binomtest

    if total <= 0:
        raise ValueError("an interval needs at least one image")
    ci = binomtest(int(correct), int(total)).proportion_ci(confidence_level=confidence, method="wilson")
    return 100.0 * float(ci.low), 100.0 * float(ci.high)


@dataclass(frozen=True)
class Paired:
    """Two models' flags on the same images: only A right (``a_only``), only B right (``b_only``)."""

    n: int
    a_correct: int
    b_correct: int
    a_only: int
    b_only: int
    p_value: float

    @property
    def difference(self) -> float:
        """B − A in percentage points."""
        return 100.0 * (self.b_correct - self.a_correct) / self.n

    @property
    def significant(self) -> bool:
        return self.p_value < ALPHA

    def to_json(self) -> dict:
        return {"n": self.n, "a_correct": self.a_correct, "b_correct": self.b_correct, "a_only": self.a_only,
                "b_only": self.b_only, "difference": self.difference, "p_value": self.p_value,
                "significant": self.significant}


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> Paired:
    """McNemar's exact (two-sided binomial) test of per-image flags of two models on the same images."""
    from scipy.stats import binomtest

    a, b = [bool(v) for v in a], [bool(v) for v in b]
    if len(a) != len(b) or not a:
        raise ValueError(f"paired flags need the same images: {len(a)} and {len(b)} flags")
    a_only = sum(x and not y for x, y in zip(a, b, strict=True))
    b_only = sum(y and not x for x, y in zip(a, b, strict=True))
    discordant = a_only + b_only
    p = 1.0 if discordant == 0 else float(binomtest(min(a_only, b_only), discordant, 0.5).pvalue)
    return Paired(len(a), sum(a), sum(b), a_only, b_only, min(1.0, p))


def fmt_p(p: float) -> str:
    """p-values as tables print them: 0.031, 2e-05, 1."""
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}".rstrip("0").rstrip(".") if p < 1 else "1"
