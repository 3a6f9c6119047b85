"""A sweep's seeds axis in its table: one row per variant over its seeds, and the paired tests.

Each variant's row keeps the sweep's row layout (a metric key → its value, here the mean over the seeds;
``ci95`` → the 95% t interval of that mean, ``sd`` → the seeds' sample sd) and adds ``seeds`` and
``runs`` (the per-seed rows as an unseeded sweep writes them). ``versus_first_seeded`` compares every
variant with the first on the seeds both ran (``_evaluation.aggregate.compare_cells``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from igdm_kit._evaluation.aggregate import ALIGNMENT, SeedRun, compare_cells, flags_of, spreads

if TYPE_CHECKING:
    from igdm_kit._sweep.sweep import Variant


def seed_run(row: dict[str, Any], keys: list[str]) -> SeedRun:
    """One seed's row of the sweep as the aggregation reads it (its flags file from its run folder)."""
    values = {k: float(row[k]) for k in [*keys, *ALIGNMENT] if isinstance(row.get(k), (int, float))}
    return SeedRun(row.get("seed"), row["output_dir"], values, flags_of(row["output_dir"]), row.get("n"))


def seeded_rows(variants: list[Variant], rows: list[dict[str, Any]], keys: list[str]) -> list[dict[str, Any]]:
    """The per-seed rows grouped into one row per variant, in the sweep's order."""
    groups: dict[str, list[tuple[Variant, dict[str, Any]]]] = {}
    for v, row in zip(variants, rows, strict=True):
        groups.setdefault(v.group or v.label, []).append((v, row))
    out = []
    for label, members in groups.items():
        runs = [row for _, row in members]
        stats = spreads([seed_run(r, keys) for r in runs])
        first = runs[0]
        row: dict[str, Any] = {
            "variant": label, "overrides": {k: x for k, x in members[0][0].overrides.items() if k != "train.seed"},
            "seeds": [r.get("seed") for r in runs], "output_dir": str(_common_parent([r["output_dir"] for r in runs])),
            "reused": all(r.get("reused") for r in runs), "n": first.get("n"), "dataset": first.get("dataset"),
            "eps": first.get("eps"), "interval": "t", "ci95": {}, "sd": {}, "runs": runs}
        for k, s in stats.items():
            row[k] = s.mean
            row["sd"][k] = s.sd
            row["ci95"][k] = list(s.ci95) if s.ci95 else None
        out.append(row)
    return out


def versus_first_seeded(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each variant after the first against the first, seed by seed: the mean paired difference, the paired
    t-test across seeds, the per-image test pooled over the seeds (``compare_cells``)."""
    if not rows:
        return []
    keys = [k for k in rows[0] if k in rows[0]["sd"]]
    first = [seed_run(r, keys) for r in rows[0]["runs"]]
    return [{"variant": r["variant"], "against": rows[0]["variant"],
             "rows": compare_cells(first, [seed_run(x, keys) for x in r["runs"]])} for r in rows[1:]]


def _common_parent(folders: list[str]):
    from pathlib import Path

    parents = {Path(f).parent for f in folders}
    return parents.pop() if len(parents) == 1 else Path(folders[0]).parent
