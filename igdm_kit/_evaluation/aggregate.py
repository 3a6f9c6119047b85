"""Finished runs over training seeds: the numbers a paper's table reports, and the tests behind its bold.

A *cell* is the runs of one configuration that differ only in ``train.seed``. Per metric (the accuracy
under each attack and the worst case, in %; GD and GC) a cell gets the mean over its seeds, their sample
sd and the 95% t interval of the mean (``stats.t_interval``). Two cells are compared seed by seed (seed k
of one against seed k of the other, the seeds both have): the mean paired difference with the paired
t-test across seeds, and for accuracies the per-image test pooled over the seeds on the same images — the
stratified McNemar / Cochran–Mantel–Haenszel test of ``stats.stratified_mcnemar`` (with a single seed,
McNemar's exact test, as ``igdm-kit compare``). A difference is *significant* only when every test that
applies says so (p < 0.05): a gain the images show but the seeds do not is training noise, not a result.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from igdm_kit._evaluation.report import WORST, EvalReport
from igdm_kit._evaluation.stats import Spread, paired_t, stratified_mcnemar, t_interval

#: Metrics that are not accuracies: no per-image flags, three decimals.
ALIGNMENT = ("gd", "gc")


@dataclass(frozen=True)
class SeedRun:
    """One finished run as a table sees it: its seed, folder, metric values and per-image flags file."""

    seed: int | None
    folder: str
    values: dict[str, float]
    flags: str | None = None
    n: int | None = None


def run_values(results: dict[str, Any]) -> dict[str, float]:
    """Metric key → value of one evaluation (``results.json`` or one of its ``checkpoints``): every
    attack's accuracy (%), the worst case when the evaluation has one, GD/GC when measured."""
    report = EvalReport.from_json(results)
    rows = report.rows() if WORST in results else report.attacks
    order = {k: i for i, k in enumerate([*report.over, WORST])}  # the evaluation's order (the file sorts keys)
    values = {k: rows[k].accuracy for k in sorted(rows, key=lambda k: order.get(k, len(order)))}
    for k, found in (results.get("worst_class") or {}).items():  # robust fairness: each attack's worst class
        if isinstance(found, dict) and isinstance(found.get("accuracy"), (int, float)):
            values[worst_class_key(k)] = float(found["accuracy"])
    for g in ALIGNMENT:
        v = (results.get("alignment") or {}).get(g)
        if isinstance(v, (int, float)):
            values[g] = float(v)
    return values


#: the metric key of an attack's worst-class accuracy (robust fairness: Fair-ARD, ABSLD report it)
WORST_CLASS = "worst-class:"


def worst_class_key(key: str) -> str:
    return WORST_CLASS + key


def spreads(runs: list[SeedRun]) -> dict[str, Spread]:
    """Per metric every run of the cell has: mean, sd and 95% t interval over the seeds (an accuracy's
    interval within 0–100 %, where the mean lies)."""
    keys = [k for k in runs[0].values if all(k in r.values for r in runs)]
    out = {k: t_interval([r.values[k] for r in runs]) for k in keys}
    return {k: s if k in ALIGNMENT or s.ci95 is None else
            replace(s, ci95=(max(0.0, s.ci95[0]), min(100.0, s.ci95[1]))) for k, s in out.items()}


def paired_seeds(a: list[SeedRun], b: list[SeedRun]) -> list[tuple[SeedRun, SeedRun]]:
    """The runs of two cells paired by seed (the seeds both have, in order)."""
    by_seed = {r.seed: r for r in b}
    return [(r, by_seed[r.seed]) for r in sorted(a, key=lambda r: (r.seed is None, r.seed or 0))
            if r.seed in by_seed]


def compare_cells(a: list[SeedRun], b: list[SeedRun]) -> dict[str, dict[str, Any]]:
    """Per metric both cells have: B − A as the mean paired difference over the common seeds, the paired t
    test (two or more seeds) and for accuracies the per-image test pooled over the seeds."""
    pairs = paired_seeds(a, b)
    if not pairs:
        return {}
    keys = [k for k in pairs[0][0].values if all(k in x.values and k in y.values for x, y in pairs)]
    per_image = _per_image(pairs, [k for k in keys if k not in ALIGNMENT])
    out: dict[str, dict[str, Any]] = {}
    for k in keys:
        t = paired_t([x.values[k] for x, _ in pairs], [y.values[k] for _, y in pairs])
        row: dict[str, Any] = {"difference": t.difference, "seeds": [x.seed for x, _ in pairs]}
        tests = []
        if t.n >= 2:
            row["paired_t"] = t.to_json()
            tests.append(t.p_value)
        if k in per_image:
            row["per_image"] = per_image[k]
            tests.append(per_image[k]["p_value"])
        elif k not in ALIGNMENT and "error" in per_image:
            row["per_image_error"] = per_image["error"]
        row["tested"] = bool(tests)
        row["significant"] = bool(tests) and all(p is not None and p < 0.05 for p in tests)
        out[k] = row
    return out


def _per_image(pairs: list[tuple[SeedRun, SeedRun]], keys: list[str]) -> dict[str, Any]:
    """Key → the pooled per-image test's JSON (McNemar's exact test for one seed, CMH over several); or
    ``{"error": why}`` when a run kept no flags or a pair was judged on different images."""
    from igdm_kit._evaluation.compare import compare
    from igdm_kit.errors import IgdmKitError

    if not keys:
        return {}
    if any(x.flags is None or y.flags is None for x, y in pairs):
        return {"error": "a run kept no per-image flags"}
    try:
        per_seed = [compare(x.flags, y.flags)["rows"] for x, y in pairs]
    except IgdmKitError as exc:
        return {"error": exc.message}
    out: dict[str, Any] = {}
    for k in keys:
        if not all(k in rows for rows in per_seed):
            continue
        if len(per_seed) == 1:
            m = per_seed[0][k]
            out[k] = {"test": "McNemar exact", "strata": 1, "n": m["n"], "a_only": m["a_only"],
                      "b_only": m["b_only"], "p_value": m["p_value"], "significant": m["significant"]}
        else:
            out[k] = stratified_mcnemar([(rows[k]["n"], rows[k]["a_only"], rows[k]["b_only"])
                                         for rows in per_seed]).to_json()
    return out


def flags_of(folder: str | Path, suffix: str = "") -> str | None:
    """A run folder's per-image flags file (``eval_flags{suffix}.safetensors``), None when it kept none."""
    path = Path(folder) / f"eval_flags{suffix}.safetensors"
    return str(path) if path.is_file() else None
