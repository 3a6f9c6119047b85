"""Robustness under distribution and threat shifts (the paper's Table 9, OODRobustBench's protocol).

``[eval] shifts`` / ``igdm-kit eval --shifts`` name registered shifts (``register_shifts``,
``interfaces.Shift``) as ``[eval] attacks`` names attacks: ``"corruptions"``, ``{ name = "corruptions",
severities = [1, 3, 5] }``, on the command line ``corruptions:severities=[1,3,5]``. A shift gives
*dataset shifts* (shifted evaluation sets: corruptions, natural variants), on which the clean accuracy and
the robust accuracy under the model's own threat (the worst case over ``shift_attacks``) are measured, and
*threat shifts* (an attack under another threat model), on which the robust accuracy is measured on the
in-distribution test set (an image counts only if it is also classified correctly without attack).

The summary follows OODRobustBench: a corruption's accuracy is the mean over its severities, OOD_d the mean
over the dataset-shift units (each corruption, each natural set), OOD_t the mean over the threat shifts. Its
95% interval is the same mean of the rows' Wilson bounds — conservative (exact if the rows' errors were
perfectly correlated, as corrupted copies of the same images nearly are). Two models are compared row by
row with McNemar's exact test on the per-image flags, and on a summary by Wilcoxon's signed-rank test over
its units (does one model win consistently across shifts?). """

from __future__ import annotations

from typing import Any

from igdm_kit._recipe.specs import DEFAULT_SHIFT_ATTACKS, ShiftSpec, resolve_shifts
from igdm_kit.errors import DataError

SUMMARY = {"ood_d_clean": "OOD_d clean", "ood_d_robust": "OOD_d robust", "ood_t_robust": "OOD_t robust"}


class Context:
    """``interfaces.ShiftContext``."""

    def __init__(self, dataset: str, info, x, y, seed: int, threat, limit: int | None, warnings: list[str]):
        self.dataset, self.info, self.x, self.y, self.seed = dataset, info, x, y, seed
        self.threat, self.limit, self._warnings = threat, limit, warnings

    def warn(self, message: str) -> None:
        if message not in self._warnings:
            self._warnings.append(message)


def _plan(specs: list[ShiftSpec], ctx: Context, skip_missing: bool, warn) -> list[tuple[ShiftSpec, list, list]]:
    """Every shift's sets and threats, listed before anything is evaluated (missing files fail first)."""
    from igdm_kit.factories import create_shift

    plan = []
    for spec in specs:
        shift = create_shift(spec.name, spec.options)
        try:
            plan.append((spec, list(shift.sets(ctx)), list(shift.threats(ctx))))
        except DataError as exc:
            if not skip_missing:
                raise
            warn(f"shift {spec.key!r} skipped: {exc.message}")
    return plan


def evaluate_shifts(model, x, y, shifts: list[Any], **kwargs: Any) -> dict[str, Any]:
    """Clean and robust accuracy on the test set and on each shifted set, robust accuracy under each
    threat shift, and the Table 9 summary, for one model (``evaluate_models`` for several)."""
    return evaluate_models([model], x, y, shifts, **kwargs)[0]


def evaluate_models(models: list, x, y, shifts: list[Any], *, dataset: str, info, attacks: list[Any] | None = None,
                    eps: float, threat: str = "Linf", batch_size: int = 256, device=None, seed: int = 0,
                    limit: int | None = None, progress=None, skip_missing: bool = False,
                    keep_flags: bool = False) -> list[dict[str, Any]]:
    """``evaluate_shifts`` for several models on the same sets, each set made once. ``attacks``: those run
    on every set (default ``DEFAULT_SHIFT_ATTACKS``; clean is always among them). ``skip_missing``: a shift
    whose files are missing is skipped with a warning instead of failing. With ``keep_flags`` each row keeps
    its per-image flags (``"flags": {"clean": ..., "robust": ...}``) for paired comparisons."""
    from igdm_kit._recipe.specs import resolve
    from igdm_kit.attacks import resolve_device
    from igdm_kit.interfaces import Threat

    items = list(attacks or DEFAULT_SHIFT_ATTACKS)
    if "clean" not in items:
        items.insert(0, "clean")
    specs, attack_specs = resolve_shifts(shifts), resolve(items, threat, "eval.shift_attacks")
    x, y = (x[:limit], y[:limit]) if limit else (x, y)
    warnings: list[str] = []
    ctx = Context(dataset, info, x, y, seed, Threat(threat, eps), limit, warnings)
    plan = _plan(specs, ctx, skip_missing, ctx.warn)
    run = dict(batch_size=batch_size, device=resolve_device(device, models[0]), seed=seed, progress=progress)
    idents = [_row(m, x, y, attack_specs, eps, threat, run, key="test", label="test set (in-distribution)",
                   group="id") for m in models]
    rows: list[dict[str, dict[str, Any]]] = [{} for _ in models]
    for spec, sets, threats in plan:
        for s in sets:
            xs, ys = s.load()
            xs, ys = (xs[:limit], ys[:limit]) if limit else (xs, ys)
            _check_set(xs, ys, x, s.key)
            key = _unique(rows[0], s.key, spec.key)
            for m, r in zip(models, rows):
                r[key] = _row(m, xs, ys, attack_specs, eps, threat, run, key=s.key, label=s.label, group=s.group,
                              family=s.family or s.key, severity=s.severity, shift=spec.key)
        for t in threats:
            specs_t = resolve([t.attack], t.threat.norm, f"{spec.key}.attack")
            key = _unique(rows[0], t.key, spec.key)
            for m, r, ident in zip(models, rows, idents):
                r[key] = _row(m, x, y, specs_t, t.threat.eps, t.threat.norm, run, key=t.key, label=t.label,
                              group="threat", family=t.key, shift=spec.key, clean=ident["flags"]["clean"])
                r[key].update(threat=t.threat.norm, eps=t.threat.eps)
    head = {"dataset": dataset, "n": int(x.shape[0]), "threat": threat, "eps": eps, "seed": seed,
            "attacks": [s.key for s in attack_specs], "shifts": [s.key for s in specs]}
    results = [{**head, "test": ident, "rows": r, "summary": summarize(ident, r), "warnings": warnings}
               for ident, r in zip(idents, rows)]
    return results if keep_flags else [drop_flags(r) for r in results]


def _unique(rows: dict, key: str, prefix: str) -> str:
    return key if key not in rows else f"{prefix}:{key}"


def _check_set(xs, ys, x, key: str) -> None:
    if xs.ndim != 4 or tuple(xs.shape[1:]) != tuple(x.shape[1:]) or ys.shape[0] != xs.shape[0]:
        raise DataError(f"shifted set {key!r} has images of shape {tuple(xs.shape[1:])} for {ys.shape[0]} labels, "
                        f"the test set {tuple(x.shape[1:])}", "a shift returns images of the dataset's shape")
    if xs.shape[0] and (xs.min() < 0 or xs.max() > 1):
        raise DataError(f"shifted set {key!r} lies outside [0, 1]", "a shift returns [0, 1] images")


def _row(model, x, y, specs, eps, threat, run, *, key, label, group, family=None, severity=None, shift=None,
         clean=None) -> dict[str, Any]:
    """One set's evaluation: clean flags (given, or the set's own) and the worst case over ``specs``."""
    from igdm_kit._evaluation.runner import accuracy, evaluate_report, images_digest

    r = evaluate_report(model, x, y, attacks=specs, eps=eps, threat=threat, where="eval.attacks", **run)
    flags = r.flags
    clean_flags = clean if clean is not None else flags["clean"]
    robust = flags["worst"] & clean_flags
    n = int(x.shape[0])
    return {"key": key, "label": label, "group": group, "family": family or key, "severity": severity,
            "shift": shift, "n": n, "images_sha256": images_digest(x, y),
            "clean": accuracy(int(clean_flags.sum()), n), "robust": accuracy(int(robust.sum()), n),
            "attacks": {k: a.accuracy for k, a in r.attacks.items()}, "seconds": sum(r.seconds.values()),
            "flags": {"clean": clean_flags, "robust": robust}}


def drop_flags(result: dict[str, Any]) -> dict[str, Any]:
    """The result without per-image flags (JSON-able)."""
    def strip(row):
        return {k: v for k, v in row.items() if k != "flags"}

    return {**result, "test": strip(result["test"]), "rows": {k: strip(r) for k, r in result["rows"].items()}}


def _units(rows: dict[str, dict[str, Any]], groups: tuple[str, ...], metric: str) -> dict[str, list[dict]]:
    """The rows of ``groups`` by unit (family): a corruption's severities are one unit."""
    units: dict[str, list[dict]] = {}
    for row in rows.values():
        if row["group"] in groups:
            units.setdefault(row["family"], []).append(row[metric])
    return units


def _mean(units: dict[str, list[dict]]) -> dict[str, Any] | None:
    """Mean over units of (mean over a unit's rows) of the accuracy and of its Wilson bounds."""
    if not units:
        return None

    def avg(f):
        return sum(sum(f(m) for m in ms) / len(ms) for ms in units.values()) / len(units)

    return {"accuracy": avg(lambda m: m["accuracy"]), "ci95": [avg(lambda m: m["ci95"][0]), avg(lambda m: m["ci95"][1])],
            "units": len(units), "rows": sum(len(ms) for ms in units.values()),
            "per_unit": {u: sum(m["accuracy"] for m in ms) / len(ms) for u, ms in units.items()}}


def summarize(test: dict[str, Any], rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Table 9's columns (and the corruption / natural parts of OOD_d) as means over units; None when the
    evaluation had no row of that kind."""
    dataset = ("corruption", "natural")
    out = {"id_clean": test["clean"], "id_robust": test["robust"],
           "ood_d_clean": _mean(_units(rows, dataset, "clean")),
           "ood_d_robust": _mean(_units(rows, dataset, "robust")),
           "ood_t_robust": _mean(_units(rows, ("threat",), "robust"))}
    for g in dataset:
        out[f"{g}_clean"] = _mean(_units(rows, (g,), "clean"))
        out[f"{g}_robust"] = _mean(_units(rows, (g,), "robust"))
    return out


def compare_shifts(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """B against A (both evaluated with ``keep_flags``): per row, McNemar's exact test on the clean and
    robust flags; per summary column, B − A and Wilcoxon's signed-rank test over the units."""
    from igdm_kit._evaluation.stats import mcnemar

    rows = {}
    for key, ra in {"test": a["test"], **a["rows"]}.items():
        rb = b["test"] if key == "test" else b["rows"].get(key)
        if rb is None or ra["images_sha256"] != rb["images_sha256"]:
            continue  # not evaluated on the same images: no paired test
        rows[key] = {m: mcnemar(ra["flags"][m].tolist(), rb["flags"][m].tolist()).to_json()
                     for m in ("clean", "robust")}
    summary = {}
    for col in SUMMARY:
        sa, sb = a["summary"].get(col), b["summary"].get(col)
        if sa and sb:
            summary[col] = {"difference": sb["accuracy"] - sa["accuracy"], **_wilcoxon(sa["per_unit"], sb["per_unit"])}
    return {"rows": rows, "summary": summary}


def _wilcoxon(a: dict[str, float], b: dict[str, float]) -> dict[str, Any]:
    units = [u for u in a if u in b]
    diffs = [b[u] - a[u] for u in units]
    wins, losses = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    p = 1.0
    if any(diffs):
        from scipy.stats import wilcoxon

        p = float(wilcoxon(diffs, zero_method="zsplit").pvalue)
    return {"units": len(units), "b_better": wins, "a_better": losses, "p_value": p, "significant": p < 0.05}
