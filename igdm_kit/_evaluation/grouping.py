"""Finished runs laid out as a paper's table: rows and columns by recipe keys, seeds aggregated per cell.

A grouping key is a dotted key of the resolved recipe (``method.name``, ``module.alpha``) or a whole table
(``method``: every ``method.*`` key). Runs that share every grouping key's value form one *cell*, which
aggregates them over their seeds (``aggregate``). The default is the paper's layout: rows by the base
method (``method``, the whole table; its inner ``attack`` goes with it), columns by the module
(``module``: the base method alone — no module, or a zero-weight one, which is not computed — then the
method with the module, by its name; its options, such as α, may differ from row to row as the paper
tunes them per method, and are named in the caption), each later column against the first with Δ.

Everything else must be the same in every run: a key outside the grouping keys and the seed that differs
between two runs (or inside one cell) refuses the table, naming the key — a table never silently averages
or sets side by side runs that differ in something it does not show.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from igdm_kit._evaluation.aggregate import ALIGNMENT, WORST_CLASS, compare_cells, spreads
from igdm_kit._evaluation.collect import Run
from igdm_kit._evaluation.report import EvalReport
from igdm_kit._evaluation.stats import Spread, t_interval
from igdm_kit.errors import IgdmKitError

#: What does not change a run's result (where it was written, how it is named, logged, threaded).
IGNORED = ("name", "description", "extends", "output", "sweep", "log", "train.threads", "train.seed",
           "train.save_every_epoch", "eval.checkpoints")
MODULE = "module"
DEFAULT_ROWS = ("method",)
DEFAULT_FOLLOW = ("attack",)  # grouping by the whole ``method`` table: each method's own inner attack
DEFAULT_COLS = (MODULE,)
#: The paper's Tables 2 and 3: Clean, PGD-20, CW-∞, AutoAttack.
PAPER_METRICS = ("clean", "pgd20", "cw", "autoattack")
OTHER_HEADERS = {"worst": "worst", "gd": "GD ↓", "gc": "GC ↑"}
LOWER_IS_BETTER = frozenset({"gd"})


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Dotted key → the value as JSON text (so lists and tables compare by value)."""
    out: dict[str, str] = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v, sort_keys=True, default=str)
    return out


def covers(group: str, key: str) -> bool:
    return key == group or key.startswith(group + ".")


def module_off(flat: dict[str, str]) -> bool:
    """No module, or one of weight zero (not computed at all: the base method alone)."""
    return "module.name" not in flat or json.loads(flat.get("module.alpha", "null")) == 0


def group_value(flat: dict[str, str], group: str) -> tuple[tuple[str, str], ...]:
    """The value a run has for one grouping key; ``module``: none (off) or the module's name."""
    if group == MODULE:
        return () if module_off(flat) else (("module.name", flat["module.name"]),)
    return tuple(sorted((k, v) for k, v in flat.items() if covers(group, k)))


def _fmt(text: str) -> str:
    v = json.loads(text)
    return f"{v:g}" if isinstance(v, float) else "—" if v is None else str(v)


def labels(values: list[tuple], group: str) -> dict[tuple, str]:
    """A short label per distinct value of one grouping key: the value of a plain key; a table's ``name``
    with the options that differ between its values; ``base`` / ``+igdm`` for the module table."""
    distinct = list(dict.fromkeys(values))
    keys = sorted({k for v in distinct for k, _ in v})
    differ = [k for k in keys if len({dict(v).get(k) for v in distinct if v}) > 1 and k != f"{group}.name"]
    out = {}
    for v in distinct:
        d = dict(v)
        if not d:
            out[v] = "base" if group == MODULE else "—"
        elif set(d) == {group}:
            out[v] = _fmt(d[group])
        else:
            name = _fmt(d[f"{group}.name"]) if f"{group}.name" in d else group
            extra = [f"{k[len(group) + 1:]}={_fmt(d[k])}" for k in differ if k in d]
            out[v] = ("+" if group == MODULE else "") + name + (f" ({', '.join(extra)})" if extra else "")
    return out


def check_same(runs: list[Run], flats: list[dict[str, str]], grouping: list[str]) -> None:
    """Refuse runs that differ in a key no grouping key covers (the seed and ``IGNORED`` aside)."""
    keys = sorted({k for f in flats for k in f})
    for k in keys:
        if any(covers(i, k) for i in IGNORED) or any(covers(g, k) for g in grouping):
            continue
        seen: dict[str | None, Run] = {}
        for run, flat in zip(runs, flats, strict=True):
            seen.setdefault(flat.get(k), run)
        if len(seen) > 1:
            (va, a), (vb, b) = list(seen.items())[:2]
            raise IgdmKitError(f"the runs differ in {k} ({_fmt(va) if va else 'unset'} in {str(a.folder)!r}, "
                               f"{_fmt(vb) if vb else 'unset'} in {str(b.folder)!r}), which the table does not "
                               "group by", f"group by it (--rows/--cols {k}), or pass runs that share it")


def check_cell(runs: list[Run], flats: list[dict[str, str]]) -> None:
    """Runs of one cell: the same configuration (but the seed), each seed once."""
    check_same(runs, flats, [])
    seeds: dict[int | None, Run] = {}
    for r in runs:
        if r.seed in seeds:
            raise IgdmKitError(f"two runs of one cell have seed {r.seed}: {str(seeds[r.seed].folder)!r} and "
                               f"{str(r.folder)!r}", "pass one of them")
        seeds[r.seed] = r


@dataclass
class Cell:
    """The runs of one configuration over their seeds."""

    runs: list[Run]
    stats: dict[str, Spread]
    cost: dict[str, float] = field(default_factory=dict)

    @property
    def seeds(self) -> list[int | None]:
        return [r.seed for r in self.runs]

    def interval(self, key: str) -> list[float] | None:
        """The 95% t interval over seeds; for a single run its Wilson interval (accuracies)."""
        s = self.stats[key]
        if s.ci95 is not None:
            return list(s.ci95)
        if key.startswith(WORST_CLASS):  # the worst class's Wilson interval, over its own images
            found = (self.runs[0].results.get("worst_class") or {}).get(key[len(WORST_CLASS):]) or {}
            return list(found["ci95"]) if "ci95" in found else None
        acc = EvalReport.from_json(self.runs[0].results).rows().get(key)
        return list(acc.ci95) if acc is not None and key not in ALIGNMENT else None

    def to_json(self) -> dict[str, Any]:
        return {"seeds": self.seeds, "folders": [str(r.folder) for r in self.runs], "cost": self.cost,
                "metrics": {k: {**s.to_json(), "interval": self.interval(k)} for k, s in self.stats.items()}}


@dataclass
class PaperTable:
    """Rows × columns of cells; ``changes[(i, j)]``: column j against column 0 in row i, per metric."""

    rows: list[str]
    cols: list[str]
    metrics: list[tuple[str, str]]
    cells: dict[tuple[int, int], Cell]
    changes: dict[tuple[int, int], dict[str, dict[str, Any]]]
    context: dict[str, Any]

    def seeds(self) -> list[Any]:
        return sorted({s for c in self.cells.values() for s in c.seeds if s is not None})

    def to_json(self) -> dict[str, Any]:
        return {**self.context, "rows": self.rows, "cols": self.cols, "metrics": dict(self.metrics),
                "cells": [{"row": self.rows[i], "col": self.cols[j], **c.to_json()}
                          for (i, j), c in sorted(self.cells.items())],
                "changes": [{"row": self.rows[i], "col": self.cols[j], "against": self.cols[0], "metrics": ch}
                            for (i, j), ch in sorted(self.changes.items())]}


def build(runs: list[Run], rows_by: list[str] | None = None, cols_by: list[str] | None = None,
          metrics: list[str] | None = None) -> PaperTable:
    """The table of ``runs`` grouped by ``rows_by`` × ``cols_by``: both None, the paper's layout; one of them
    given, the other groups nothing (one row, or one column group)."""
    default = rows_by is None and cols_by is None
    rows_by = list(DEFAULT_ROWS) if default else list(rows_by or [])
    cols_by = list(DEFAULT_COLS) if default else list(cols_by or [])
    flats = [flatten(r.recipe) for r in runs]
    follow = list(DEFAULT_FOLLOW) if "method" in rows_by + cols_by else []  # a method's own inner attack
    check_same(runs, flats, rows_by + cols_by + follow)  # "module" covers its options too
    row_of = [tuple(group_value(f, g) for g in rows_by) for f in flats]
    col_of = [tuple(group_value(f, g) for g in cols_by) for f in flats]
    rows, cols = list(dict.fromkeys(row_of)), sorted(dict.fromkeys(col_of), key=lambda c: bool(any(c)))
    cells: dict[tuple[int, int], Cell] = {}
    for i, rv in enumerate(rows):
        for j, cv in enumerate(cols):
            members = [k for k in range(len(runs)) if row_of[k] == rv and col_of[k] == cv]
            if members:
                check_cell([runs[k] for k in members], [flats[k] for k in members])
                cells[(i, j)] = _cell(sorted((runs[k] for k in members), key=lambda r: (r.seed is None, r.seed)))
    keys = choose_metrics(runs, metrics)
    changes = {(i, j): compare_cells([r.seed_run() for r in cells[(i, 0)].runs],
                                     [r.seed_run() for r in cells[(i, j)].runs])
               for (i, j) in cells if j > 0 and (i, 0) in cells}
    row_labels = _joined(rows, rows_by)
    context = {**_context(runs, rows_by, cols_by), "options": _module_options(cells, row_labels, flats, runs)
               if MODULE in cols_by else {}}
    return PaperTable(row_labels, _joined(cols, cols_by), [(k, header(runs, k)) for k in keys], cells, changes,
                      context)


def _module_options(cells: dict[tuple[int, int], Cell], rows: list[str], flats: list[dict[str, str]],
                    runs: list[Run]) -> dict[str, str]:
    """Row label → the module's options that differ between the rows (``alpha=100``), for the caption."""
    flat_of = {id(r): f for r, f in zip(runs, flats, strict=True)}
    per_row = {rows[i]: {k[len(MODULE) + 1:]: v for k, v in flat_of[id(c.runs[0])].items()
                         if covers(MODULE, k) and k != "module.name"}
               for (i, j), c in sorted(cells.items()) if j > 0}
    keys = sorted({k for o in per_row.values() for k in o})
    differ = [k for k in keys if len({o.get(k) for o in per_row.values()}) > 1]
    if not differ:
        return {}
    return {row: ", ".join(f"{k}={_fmt(o[k])}" for k in differ if k in o) for row, o in per_row.items()}


def _cell(runs: list[Run]) -> Cell:
    costs = {k for r in runs for k in r.cost}
    cost = {k: t_interval([r.cost[k] for r in runs if k in r.cost]).mean for k in sorted(costs)}
    return Cell(runs, spreads([r.seed_run() for r in runs]), cost)


def _joined(values: list[tuple], keys: list[str]) -> list[str]:
    per_key = [labels([v[i] for v in values], g) for i, g in enumerate(keys)]
    return [" · ".join(per_key[i][v[i]] for i in range(len(keys))) or "all runs" for v in values]


def choose_metrics(runs: list[Run], wanted: list[str] | None) -> list[str]:
    """``wanted`` (each in every run, or a one-line error), ``["all"]``: every metric all runs have; None:
    the paper's four where the runs have them, else all."""
    per_run = [r.seed_run().values for r in runs]
    common = [k for k in per_run[0] if all(k in v for v in per_run)]
    if wanted is None:
        return [k for k in PAPER_METRICS if k in common] or common
    if wanted == ["all"]:
        return common
    for k in wanted:
        missing = next((r for r, v in zip(runs, per_run, strict=True) if k not in v), None)
        if missing is not None:
            raise IgdmKitError(f"--metrics {k}: {str(missing.folder)!r} has no {k!r}",
                               "choose among: " + ", ".join(common) + " (or all)")
    return list(wanted)


def header(runs: list[Run], key: str) -> str:
    """A metric's column header: the attack's own label (``PGD-20``), else ``worst``/``GD ↓``/``GC ↑``."""
    if key in OTHER_HEADERS:
        return OTHER_HEADERS[key]
    if key.startswith(WORST_CLASS):
        return header(runs, key[len(WORST_CLASS):]) + " worst class"
    acc = EvalReport.from_json(runs[0].results).attacks.get(key)
    return acc.label if acc is not None and acc.label else key


def _context(runs: list[Run], rows_by: list[str], cols_by: list[str]) -> dict[str, Any]:
    first = runs[0].results
    data = (runs[0].recipe.get("data") or {}).get("name")
    return {"checkpoint": runs[0].checkpoint, "dataset": data, "n": first.get("n"), "eps": first.get("eps"),
            "threat": first.get("threat", "Linf"), "rows_by": rows_by, "cols_by": cols_by, "runs": len(runs)}
