"""Uncertainty of accuracies: Wilson intervals, and McNemar's exact test for paired per-image flags.

On n test images an accuracy is k/n with binomial noise; two models judged on the *same* images differ
only on the images where exactly one of them is right, so their difference is tested on those discordant
pairs (McNemar's exact test: under "no difference" each discordant image is a fair coin). Both come from
SciPy (``scipy.stats.binomtest``; a scikit-learn dependency already installed), not reimplemented.

Across training seeds (a sweep's ``--seeds``, ``igdm-kit report``) the mean over seeds gets Student's t
interval, two methods' per-seed values the paired t-test (``scipy.stats.ttest_rel``), and the per-image
flags of every seed one pooled test: the Cochran–Mantel–Haenszel test with each (seed, image) pair as a
stratum (``stratified_mcnemar``, written from its formula below).
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


@dataclass(frozen=True)
class Spread:
    """Values over seeds: their mean, sample sd (n − 1) and the 95% t interval of the mean (None for one)."""

    n: int
    mean: float
    sd: float | None
    ci95: tuple[float, float] | None

    def to_json(self) -> dict:
        return {"n": self.n, "mean": self.mean, "sd": self.sd, "ci95": list(self.ci95) if self.ci95 else None}


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Spread:
    """Mean ± t(1 − α/2, n − 1) · sd / √n: the interval of the mean over seeds (none for a single seed)."""
    import math

    from scipy.stats import t

    v = [float(x) for x in values]
    if not v:
        raise ValueError("a mean needs at least one value")
    n, mean = len(v), math.fsum(v) / len(v)
    if n == 1:
        return Spread(1, mean, None, None)
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in v) / (n - 1))
    half = float(t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return Spread(n, mean, sd, (mean - half, mean + half))


@dataclass(frozen=True)
class PairedT:
    """The paired t-test of B − A over ``n`` seeds (the same seed is a pair): mean difference, t, df, p.
    ``p_value`` is None when the test is undefined (one seed, or every difference the same)."""

    n: int
    difference: float
    sd: float | None
    t: float | None
    p_value: float | None

    @property
    def significant(self) -> bool:
        return self.p_value is not None and self.p_value < ALPHA

    def to_json(self) -> dict:
        return {"test": "paired t", "n": self.n, "df": self.n - 1, "difference": self.difference, "sd": self.sd,
                "t": self.t, "p_value": self.p_value, "significant": self.significant}


def paired_t(a: Sequence[float], b: Sequence[float]) -> PairedT:
    """Student's paired t-test (two-sided) of B − A, seed by seed (``scipy.stats.ttest_rel``)."""
    from scipy.stats import ttest_rel

    if len(a) != len(b) or not a:
        raise ValueError(f"a paired test needs the same seeds: {len(a)} and {len(b)} values")
    d = t_interval([y - x for x, y in zip(a, b, strict=True)])
    if d.n < 2 or not d.sd:  # one pair, or identical differences: t is undefined, not "significant"
        return PairedT(d.n, d.mean, d.sd, None, None)
    res = ttest_rel(list(b), list(a))
    return PairedT(d.n, d.mean, d.sd, float(res.statistic), float(res.pvalue))


@dataclass(frozen=True)
class Pooled:
    """The stratified McNemar (Cochran–Mantel–Haenszel) test over ``strata`` seeds: per-image pairs of A and
    B on the same images, pooled over the seeds; ``a_only``/``b_only`` summed over them."""

    strata: int
    n: int
    a_only: int
    b_only: int
    statistic: float
    p_value: float

    @property
    def significant(self) -> bool:
        return self.p_value < ALPHA

    def to_json(self) -> dict:
        return {"test": "Cochran–Mantel–Haenszel", "strata": self.strata, "n": self.n, "a_only": self.a_only,
                "b_only": self.b_only, "chi2": self.statistic, "p_value": self.p_value,
                "significant": self.significant}


def stratified_mcnemar(strata: Sequence[tuple[int, int, int]]) -> Pooled:
    """The CMH test of per-image flags pooled over seeds; ``strata`` holds (images, a_only, b_only) per seed.

    Each (seed, image) pair is a 2×2 stratum (model A/B × right/wrong, one image each). CMH's statistic is
    (Σ (a_k − E a_k))² / Σ Var a_k with E a_k = m1·n1/N and Var a_k = m1·m0·n1·n0 / (N²(N − 1)) for the
    stratum's margins (N = 2). A concordant pair has a margin of 0 (no variance, no term); a discordant one
    has E = ½ and Var = ¼, with a_k − E = +½ when only A is right and −½ when only B is. Summed over every
    pair: (Σ a_only − Σ b_only)² / (Σ a_only + Σ b_only), χ² with 1 df (no continuity correction). With one
    seed it is McNemar's asymptotic test.
    """
    from scipy.stats import chi2

    if not strata:
        raise ValueError("a pooled test needs at least one seed")
    n = sum(int(s[0]) for s in strata)
    a_only, b_only = sum(int(s[1]) for s in strata), sum(int(s[2]) for s in strata)
    discordant = a_only + b_only
    if discordant == 0:
        return Pooled(len(strata), n, 0, 0, 0.0, 1.0)
    stat = (a_only - b_only) ** 2 / discordant
    return Pooled(len(strata), n, a_only, b_only, float(stat), float(chi2.sf(stat, 1)))
