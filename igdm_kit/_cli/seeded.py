"""The sweep table with a seeds axis (``sweep --seeds``): mean ± sd with the 95% t interval per variant, and
a change row per later variant with its tests named and ``n.s.`` where a test that applies finds none
(the cells as ``igdm-kit report`` writes them, ``_evaluation.export``)."""

from __future__ import annotations

from typing import Any

from igdm_kit._evaluation.export import change_cell, value_cell


def tests_text(n_seeds: int) -> str:
    """How the change cells are tested, for a caption."""
    if n_seeds < 2:
        return "McNemar = McNemar's exact test of the per-image flags on the same images; n.s. = not " \
               "significant (p ≥ 0.05)"
    return (f"t = Student's paired t-test across the {n_seeds} seeds ({n_seeds - 1} df); CMH = the "
            "Cochran–Mantel–Haenszel (stratified McNemar) test of the per-image flags pooled over the seeds on "
            "the same images; n.s. = not significant (p ≥ 0.05 in either test)")


def seeds_text(seeds: list[Any]) -> str:
    """``5 seeds (0–4)`` / ``3 seeds (0, 2, 5)`` / ``seed 0``."""
    s = sorted(x for x in seeds if x is not None)
    if len(s) == 1:
        return f"seed {s[0]}"
    if s and s == list(range(s[0], s[-1] + 1)):
        return f"{len(s)} seeds ({s[0]}–{s[-1]})"
    return f"{len(s)} seeds ({', '.join(map(str, s))})"


def print_seeded_table(summary: dict[str, Any]) -> None:
    """A sweep with seeds: one row per variant (mean ± sd over its seeds, 95% t interval), then one change
    row per later variant against the first (mean paired difference, paired t and pooled per-image tests)."""
    from rich.markup import escape
    from rich.table import Table

    from igdm_kit._cli.console import out_console

    rows = summary["rows"]
    cols = [(k, label) for k, label in summary.get("columns", []) if any(k in r for r in rows)]
    cols += [(k, label) for k, label in (("gd", "GD ↓"), ("gc", "GC ↑")) if any(k in r for r in rows)]
    n = {r.get("n") for r in rows}
    where = f"{n.pop()} test images" if len(n) == 1 and None not in n else "the test split"
    table = Table(title=escape(f"{summary['recipe']} — accuracy (%) on {where}, {seeds_text(summary['seeds'])}"),
                  caption="mean ± sd over the seeds (95% t interval of the mean); worst = the worst case per "
                          "image over every attack; change: later − first variant, the mean paired difference "
                          f"over the seeds both ran, in points; {tests_text(len(summary['seeds']))}")
    table.add_column("variant")
    for _, label in cols:
        table.add_column(label, justify="right")
    for r in rows:
        table.add_row(escape(r["variant"]), *[value_cell(r.get(k), r["sd"].get(k), r["ci95"].get(k), k)
                                              for k, _ in cols])
    for c in summary.get("versus_first", []):
        label = "change" if len(rows) == 2 else f"{c['variant']} − {c['against']}"
        table.add_row(escape(label), *[change_cell(c["rows"].get(k), k) for k, _ in cols], style="bold")
    out_console.print(table)
