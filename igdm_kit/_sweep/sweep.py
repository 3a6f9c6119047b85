"""Recipe families: run a grid of variants of one recipe and collect one results table.

The grid comes from the recipe's ``[sweep]`` table (dotted key → list of values) and/or ``--grid
module.alpha=20,40,60`` on the command line (which replaces the values of a key the table lists, said so);
variants are the Cartesian product, at most ``MAX_VARIANTS`` unless allowed. A ``--set`` on a key the grid
varies is refused: every variant would silently replace it. Every variant is
validated before the first one trains. Each runs in its own folder under the sweep's output folder, and a
variant whose folder already holds a finished run of the same recipe is reused, not trained again — so an
interrupted sweep picks up where it stopped, and the α tables of Appendix A.6 come from one command.

Seeds are an axis of their own (``--seeds 0-4``, ``[sweep] seeds``): every variant runs once per seed
(``train.seed``, in ``<variant>/seed=K``), and the table aggregates each variant over its seeds (mean ± sd,
the 95% t interval) and tests each against the first on paired seeds (``_evaluation.aggregate``).
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
from igdm_kit._evaluation.aggregate import worst_class_key
from igdm_kit._evaluation.report import EvalReport
from igdm_kit._recipe import Recipe
from igdm_kit._runtime.signals import StopFlag
from igdm_kit.errors import IgdmKitError, Interrupted, RecipeError

#: The ``[sweep]`` / ``--grid`` key of the seeds axis (a bare key: never a dotted recipe key).
SEEDS = "seeds"


@dataclass
class Variant:
    """One run of the family: ``label`` names it uniquely (``alpha=6/seed=2``); ``group`` is the variant
    it belongs to over the seeds (``alpha=6``, or the recipe's name), ``seed`` its seed on the seeds axis."""

    label: str
    overrides: dict[str, Any]
    recipe: Recipe
    seed: int | None = None
    group: str | None = None


def parse_seeds(value: Any, where: str = "--seeds") -> list[int]:
    """``"0-4"`` → [0, 1, 2, 3, 4]; ``"0,2,5"`` (or ``"0-2,7"``) and a list of integers as given; distinct."""
    hint = "e.g. --seeds 0-4, --seeds 0,2,5, or [sweep] seeds = [0, 1, 2]"
    if isinstance(value, list):
        items = value
    else:
        items = []
        for part in str(value).split(","):
            lo, dash, hi = part.strip().partition("-")
            try:
                items += list(range(int(lo), int(hi) + 1)) if dash else [int(lo)]
            except ValueError:
                raise RecipeError(f"{where}: {part.strip()!r} is not a seed or a range of seeds", hint,
                                  path="sweep.seeds") from None
    if not items or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in items):
        raise RecipeError(f"{where}: {value!r} is not a non-empty list of seeds (integers ≥ 0)", hint,
                          path="sweep.seeds")
    if len(set(items)) != len(items):
        raise RecipeError(f"{where}: a seed is listed twice in {value!r}", hint, path="sweep.seeds")
    return items


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


#: The most variants a sweep expands to unless ``max_variants`` (``--max-variants``) allows more.
MAX_VARIANTS = 256


def sweep_table(path: str | Path, overrides: list[str] | None = None, grid: dict[str, list[Any]] | None = None,
                notes: list[str] | None = None) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """(the recipe with ``--set`` applied and no ``[sweep]``, the grid: dotted key → values). ``--grid``
    replaces the values of a key the recipe's ``[sweep]`` lists (each replacement goes to ``notes``) and adds
    any other key; ``--set`` on a key the grid varies is refused (the grid would override it)."""
    raw = recipe_mod.load_raw(path)
    recipe_mod.apply_overrides(raw, overrides or [])
    table = raw.pop("sweep", None) or {}
    if not isinstance(table, dict):
        raise RecipeError("sweep: must be a table of dotted keys to lists", "e.g. \"module.alpha\" = [20, 40]",
                          path="sweep")
    for key, values in (grid or {}).items():
        if key in table and notes is not None:
            notes.append(f"--grid {key}: {_values(values)} replaces the recipe's sweep values {_values(table[key])}")
    table = {**table, **(grid or {})}
    seeds = table.pop(SEEDS, None)  # its own axis (``_seeds_axis``), written as a list or a range
    for key, values in table.items():
        if not isinstance(values, list) or not values:
            raise RecipeError(f"sweep.{key}: must be a non-empty list of values", "e.g. [20, 40, 60]",
                              path=f"sweep.{key}")
    _refuse_overridden(overrides or [], table)
    if seeds is not None:
        table[SEEDS] = seeds
    return raw, table


def _values(values: list[Any]) -> str:
    return "[" + ", ".join(_fmt(v) for v in values) + "]"


def _refuse_overridden(overrides: list[str], table: dict[str, list[Any]]) -> None:
    """A ``--set`` on a key the grid varies (or a table holding it) would be silently replaced in every
    variant: one line naming both."""
    for item in overrides:
        keys = recipe_mod.parse_override(item)[0]
        if keys[:1] == ["sweep"]:
            continue  # sets the sweep itself
        for key, values in table.items():
            parts = recipe_mod.parse_key(key, key)
            if parts[:len(keys)] == keys or keys[:len(parts)] == parts:
                raise RecipeError(f"--set {item}: the sweep varies {key} over {_values(values)}, which would "
                                  f"replace it in every variant",
                                  f"drop the --set, or sweep other values with --grid {key}=... (it replaces the "
                                  f"recipe's), or run one value with --set 'sweep={{}}' --set {item}", path=key)


def count_variants(table: dict[str, list[Any]]) -> int:
    return math.prod(len(v) for v in table.values())


def expand(path: str | Path, overrides: list[str] | None = None, grid: dict[str, list[Any]] | None = None, *,
           max_variants: int = MAX_VARIANTS, notes: list[str] | None = None) -> list[Variant]:
    """Every variant of the recipe, validated (a bad variant fails before anything runs); a grid of more than
    ``max_variants`` variants is refused before one is built."""
    raw, table = sweep_table(path, overrides, grid, notes)
    seeds = _seeds_axis(table, overrides or [])
    total = count_variants(table) * len(seeds or [None])
    if total > max_variants:
        sizes = " × ".join(str(len(v)) for v in table.values())
        raise RecipeError(f"sweep: the grid has {sizes} = {total:,} variants, more than {max_variants:,}",
                          f"sweep fewer values, or allow it with igdm-kit sweep --max-variants {total}")
    keys = list(table)
    variants = []
    for combo in itertools.product(*(table[k] for k in keys)) if keys else [()]:
        group = dict(zip(keys, combo, strict=True))
        for seed in seeds or [None]:
            sets = group if seed is None else {**group, "train.seed": seed}
            variant_raw = copy.deepcopy(raw)
            recipe_mod.apply_overrides(variant_raw, [f"{k}={toml_value(v)}" for k, v in sets.items()])
            try:
                r = recipe_mod.validate(variant_raw, Path(path))
            except RecipeError as exc:
                where = ", ".join(f"{k}={_fmt(v)}" for k, v in sets.items())
                raise RecipeError(f"sweep variant {where}: {exc.message}", exc.hint, path=exc.path) from None
            label = ",".join(f"{k.split('.')[-1]}={_fmt(v)}" for k, v in group.items()) or r.name
            if seed is not None:
                variants.append(Variant(f"{label}/seed={seed}" if group else f"seed={seed}", sets, r, seed, label))
            else:
                variants.append(Variant(label, sets, r))
    return variants


def _seeds_axis(table: dict[str, Any], overrides: list[str]) -> list[int] | None:
    """The seeds axis taken out of the sweep table (``seeds``); refused beside another choice of the seed."""
    if SEEDS not in table:
        return None
    seeds = parse_seeds(table.pop(SEEDS), "sweep.seeds")
    given = [".".join(recipe_mod.parse_override(o)[0]) for o in overrides]
    if "train.seed" in table or "train.seed" in given:
        where = "a sweep key" if "train.seed" in table else "--set"
        raise RecipeError(f"train.seed is set both by {where} and by the seeds axis ({seeds})",
                          "keep one: the seeds axis (--seeds / [sweep] seeds) runs every variant once per seed",
                          path="sweep.seeds")
    return seeds


def toml_value(v: Any) -> str:
    """A value as it is written after ``--set key=`` (TOML)."""
    return recipe_mod.to_toml({"v": v}).split("=", 1)[1].strip()


def run_sweep(path: str | Path, *, overrides: list[str] | None = None, grid: dict[str, list[Any]] | None = None,
              output_dir: str | Path | None = None, resume: bool = False, overwrite: bool = False,
              log: Callable[[str], None] = lambda s: None, progress: Any = None,
              resume_command: str | None = None, variants: list[Variant] | None = None) -> dict[str, Any]:
    """Run (or reuse) every variant one after another; return the collected rows.

    Finished variants are reused; ``resume`` continues an interrupted one; ``overwrite`` retrains all.
    ``variants``: the family ``expand`` already made (else it is expanded here). A stop request (SIGINT/SIGTERM)
    is honoured in a variant's run and between two variants: ``Interrupted``, with the command that resumes
    the family.
    """
    from igdm_kit._training.engine import run

    variants = variants if variants is not None else expand(path, overrides, grid)
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
    """Each variant's run folder (a lone variant without overrides runs in ``base`` itself); a seed's run
    lies in ``<variant>/seed=K`` (``seed=K`` alone when the seed is the only axis)."""
    if v.seed is not None:
        return (base / _folder_name(v.group or "") if set(v.overrides) - {"train.seed"} else base) / f"seed={v.seed}"
    return base / _folder_name(v.label) if n_variants > 1 or v.overrides else base


def summarize(path: str | Path, base: Path, variants: list[Variant], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The sweep's results: one row per variant, the table's columns, correlations and tests. With seeds, a
    row aggregates the variant's seeds (``seeded``) and the tests pair them (``versus_first_seeded``)."""
    cols = columns(variants[0])
    if any(v.seed is not None for v in variants):
        from igdm_kit._sweep.seeds import seeded_rows, versus_first_seeded

        rows = seeded_rows(variants, rows, [k for k, _ in cols])
        return {"recipe": str(path), "output_dir": str(base), "rows": rows, "columns": cols,
                "seeds": sorted({v.seed for v in variants}), "correlation": correlations(rows),
                "versus_first": versus_first_seeded(rows)}
    return {"recipe": str(path), "output_dir": str(base), "rows": rows, "columns": cols,
            "correlation": correlations(rows), "versus_first": versus_first(rows)}


def columns(v: Variant) -> list[list[str]]:
    """[result key, short header] of the table: the recipe's evaluation attacks, then the worst case, then the
    worst class of the last (robust fairness: the class the model does worst on)."""
    cols = [[s.key, s.short] for s in v.recipe.eval_specs]
    cols = cols + [["worst", "worst"]] if len(cols) > 1 else cols
    return [*cols, [worst_class_key(cols[-1][0]), "worst cls"]]


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
    if v.seed is not None:
        row["seed"] = v.seed
    for key, a in (report.rows() if "worst" in res else report.attacks).items():
        row[key] = a.accuracy
        row["ci95"][key] = list(a.ci95)
    if "worst" in res:
        row["worst_over"] = list(report.over)  # the attacks this variant's worst case covers
    for key, found in (res.get("worst_class") or {}).items():
        row[worst_class_key(key)] = found["accuracy"]
        row["ci95"][worst_class_key(key)] = list(found["ci95"])
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
