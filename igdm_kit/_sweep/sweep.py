"""Recipe families: run a grid of variants of one recipe and collect one results table.

The grid comes from the recipe's ``[sweep]`` table (dotted key → list of values) and/or ``--grid
module.alpha=20,40,60`` on the command line; variants are the Cartesian product. Every variant is
validated before the first one trains. Each runs in its own folder under the sweep's output folder, and a
variant whose folder already holds a finished run of the same recipe is reused, not trained again — so an
interrupted sweep picks up where it stopped, and the α tables of Appendix A.6 come from one command.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from igdm_kit import _recipe as recipe_mod
from igdm_kit._evaluation.report import EvalReport
from igdm_kit._recipe import Recipe
from igdm_kit._runtime.signals import StopFlag
from igdm_kit.errors import IgdmKitError, Interrupted, RecipeError


@dataclass
class Variant:
    label: str
    overrides: dict[str, Any]
    recipe: Recipe


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """``["module.alpha=20,40,60"]`` → {"module.alpha": [20, 40, 60]} (values parsed as TOML)."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise RecipeError(f"--grid {item!r} is not of the form dotted.key=v1,v2,...",
                              "e.g. --grid module.alpha=20,40,60")
        grid[key.strip()] = [recipe_mod.parse_override(f"v={v}")[1] for v in values.split(",")]
    return grid


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def expand(path: str | Path, overrides: list[str] | None = None, grid: dict[str, list[Any]] | None = None
           ) -> list[Variant]:
    """Every variant of the recipe, validated (a bad variant fails before anything runs)."""
    raw = recipe_mod.load_raw(path)
    recipe_mod.apply_overrides(raw, overrides or [])
    table = raw.pop("sweep", None) or {}
    if not isinstance(table, dict):
        raise RecipeError("sweep: must be a table of dotted keys to lists", "e.g. \"module.alpha\" = [20, 40]",
                          path="sweep")
    table = {**table, **(grid or {})}
    for key, values in table.items():
        if not isinstance(values, list) or not values:
            raise RecipeError(f"sweep.{key}: must be a non-empty list of values", "e.g. [20, 40, 60]",
                              path=f"sweep.{key}")
    keys = list(table)
    variants = []
    for combo in itertools.product(*(table[k] for k in keys)) if keys else [()]:
        sets = dict(zip(keys, combo, strict=True))
        variant_raw = copy.deepcopy(raw)
        recipe_mod.apply_overrides(variant_raw, [f"{k}={toml_value(v)}" for k, v in sets.items()])
        try:
            r = recipe_mod.validate(variant_raw, Path(path))
        except RecipeError as exc:
            where = ", ".join(f"{k}={_fmt(v)}" for k, v in sets.items())
            raise RecipeError(f"sweep variant {where}: {exc.message}", exc.hint, path=exc.path) from None
        label = ",".join(f"{k.split('.')[-1]}={_fmt(v)}" for k, v in sets.items()) or r.name
        variants.append(Variant(label, sets, r))
    return variants


def toml_value(v: Any) -> str:
    """A value as it is written after ``--set key=`` (TOML)."""
    return recipe_mod.to_toml({"v": v}).split("=", 1)[1].strip()


def run_sweep(path: str | Path, *, overrides: list[str] | None = None, grid: dict[str, list[Any]] | None = None,
              output_dir: str | Path | None = None, resume: bool = False, overwrite: bool = False,
              log: Callable[[str], None] = lambda s: None, progress: Any = None,
              resume_command: str | None = None) -> dict[str, Any]:
    """Run (or reuse) every variant one after another; return the collected rows.

    Finished variants are reused; ``resume`` continues an interrupted one; ``overwrite`` retrains all. A stop
    request (SIGINT/SIGTERM) is honoured in a variant's run and between two variants: ``Interrupted``, with
    the command that resumes the family.
    """
    from igdm_kit._training.engine import run

    variants = expand(path, overrides, grid)
    base = sweep_folder(variants, output_dir)
    hint = f"resume with: {resume_command or 'the same command with --resume'}"
    rows = []
    with StopFlag() as stop:  # between two variants' runs (each run has handlers of its own)
        for i, v in enumerate(variants):
            folder = variant_folder(base, v, len(variants))
            log(f"variant {v.label} → {folder}")
            stop.check(f"sweep stopped before variant {v.label} ({i} of {len(variants)} variants done)", hint)
            try:
                result = run(v.recipe, output_dir=folder, reuse_finished=not overwrite, resume=resume,
                             overwrite=overwrite, log=log, progress=progress)
            except Interrupted as exc:  # resume the family, not one variant in a folder of its own
                raise Interrupted(exc.message, hint, exc.exit_code) from None
            rows.append(row_of(v, result))
    return summarize(path, base, variants, rows)


def sweep_folder(variants: list[Variant], output_dir: str | Path | None) -> Path:
    """The folder of the sweep's runs: ``--output``, else the recipe's own output folder."""
    return Path(output_dir) if output_dir else variants[0].recipe.default_output_dir()


def variant_folder(base: Path, v: Variant, n_variants: int) -> Path:
    """Each variant's run folder (a lone variant without overrides runs in ``base`` itself)."""
    return base / _folder_name(v.label) if n_variants > 1 or v.overrides else base


def summarize(path: str | Path, base: Path, variants: list[Variant], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The sweep's results: one row per variant, the table's columns, correlations and tests."""
    return {"recipe": str(path), "output_dir": str(base), "rows": rows, "columns": columns(variants[0]),
            "correlation": correlations(rows), "versus_first": versus_first(rows)}


def columns(v: Variant) -> list[list[str]]:
    """[result key, short header] of the table: the recipe's evaluation attacks, then the worst case."""
    cols = [[s.key, s.short] for s in v.recipe.eval_specs]
    return cols + [["worst", "worst"]] if len(cols) > 1 else cols


def versus_first(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each variant after the first against the first, on the same images: McNemar's test per attack."""
    from igdm_kit._evaluation.compare import compare

    out = []
    for r in rows[1:]:
        try:
            out.append({"variant": r["variant"], **compare(rows[0]["output_dir"], r["output_dir"])})
        except IgdmKitError as exc:  # e.g. a run evaluated before per-image flags were kept
            out.append({"variant": r["variant"], "error": exc.message})
    return out


def _folder_name(label: str) -> str:
    return "".join(c if c.isalnum() or c in "=.,-_" else "_" for c in label)


def row_of(v: Variant, result) -> dict[str, Any]:
    res = result.results
    report = EvalReport.from_json(res)
    row: dict[str, Any] = {"variant": v.label, "overrides": v.overrides, "output_dir": str(result.output_dir),
                           "reused": result.reused, "n": res.get("n"), "ci95": {},
                           "dataset": v.recipe.model.data.name, "eps": res.get("eps")}
    for key, a in (report.rows() if "worst" in res else report.attacks).items():
        row[key] = a.accuracy
        row["ci95"][key] = list(a.ci95)
    for key in ("gd", "gc"):
        if key in (result.results.get("alignment") or {}):
            row[key] = result.results["alignment"][key]
    return row


def pearson(xs: list[float], ys: list[float]) -> float | None:
    if len(xs) < 3:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxy = sum((a - mx) * (b - my) for a, b in zip(xs, ys, strict=True))
    sxx = sum((a - mx) ** 2 for a in xs)
    syy = sum((b - my) ** 2 for b in ys)
    return None if sxx == 0 or syy == 0 else sxy / math.sqrt(sxx * syy)


def robust_key(rows: list[dict[str, Any]]) -> str | None:
    for key in ("autoattack", "pgd20", "cw", "fgsm"):
        if rows and all(key in r for r in rows):
            return key
    return None


def correlations(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Pearson correlation of GD and GC with robust accuracy across the variants (Figure 3)."""
    key = robust_key(rows)
    out: dict[str, Any] = {"against": key}
    for g in ("gd", "gc"):
        if key and all(g in r for r in rows):
            out[g] = pearson([r[g] for r in rows], [r[key] for r in rows])
    return out
