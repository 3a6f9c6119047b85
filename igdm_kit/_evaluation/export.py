"""A ``PaperTable`` as text: the cells every format shares, Markdown, LaTeX (booktabs) and CSV.

Lines as the paper's Tables 2–3 stack them: per row (base method) its first column group, each later
group (``+igdm``) and Δ of each against the first; a column per metric, then the cost columns (seconds per
epoch, passes per step, peak memory) where any run measured them. A value is ``mean ± sd (95% interval)``
(a single run: its value and Wilson interval); a change is the mean paired difference over the seeds with
each test's p, ``n.s.`` where a test that applies finds none. LaTeX keeps mean ± sd and Δ (n.s. marked),
and sets the better value in bold only where the difference is significant. The CSV is long (one line per
value, change and cost), numbers at full precision.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Any

from igdm_kit._evaluation.aggregate import ALIGNMENT
from igdm_kit._evaluation.grouping import LOWER_IS_BETTER, PaperTable
from igdm_kit._evaluation.stats import fmt_p

COSTS = {"seconds_per_epoch": "s/epoch", "passes_student": "passes S", "passes_teacher": "passes T",
         "peak_memory_mib": "MiB"}
COST_TEXT = {"seconds_per_epoch": "seconds per training epoch (mean over the epochs, then the seeds)",
             "passes_student": "forward + backward passes of the student in one training step",
             "passes_teacher": "forward + backward passes of the teacher in one training step",
             "peak_memory_mib": "peak CUDA memory allocated in an epoch"}


def value_cell(mean: float | None, sd: float | None, ci: list[float] | None, key: str) -> str:
    """``89.44 ± 0.52 (88.8–90.1)``; one seed: the value (and interval); GD/GC with three decimals."""
    if mean is None:
        return "—"
    if key in ALIGNMENT:
        return f"{mean:.3f}" + (f" ± {sd:.3f}" if sd is not None else "")
    text = f"{mean:.2f}" + (f" ± {sd:.2f}" if sd is not None else "")
    return text + (f" ({ci[0]:.1f}–{ci[1]:.1f})" if ci else "")


def change_cell(test: dict[str, Any] | None, key: str, p_values: bool = True) -> str:
    """``+1.20 n.s. (t p=0.31, CMH p=0.002)``: the mean paired difference and each test's p."""
    if not test:
        return "—"
    d = test["difference"]
    text = f"{d:+.3f}" if key in ALIGNMENT else f"{d:+.2f}"
    ps = []
    if "paired_t" in test:
        p = test["paired_t"]["p_value"]
        ps.append("t p=" + (fmt_p(p) if p is not None else "n/a"))
    if "per_image" in test:
        name = "McNemar" if test["per_image"]["strata"] == 1 else "CMH"
        ps.append(f"{name} p={fmt_p(test['per_image']['p_value'])}")
    if not ps:
        return text
    mark = "" if test["significant"] else " n.s."
    return f"{text}{mark}" + (f" ({', '.join(ps)})" if p_values else "")


@dataclass(frozen=True)
class Line:
    """One line of the laid-out table: a cell's values (``kind`` "value") or a change against the row's
    first column group (``kind`` "change"), for row ``i`` and column group ``j``."""

    kind: str
    i: int
    j: int
    label: str


def layout(t: PaperTable) -> list[Line]:
    """As the paper's Tables 2–3 stack them: per row the first group (the base method), each later group
    (``+igdm``), then Δ of each later group against the first."""
    out = []
    for i, row in enumerate(t.rows):
        for j, col in enumerate(t.cols):
            if (i, j) in t.cells:
                alone = len(t.cols) == 1 or col in ("base", "all runs")
                out.append(Line("value", i, j, row if j == 0 and alone else
                                f"{row} · {col}" if j == 0 or (i, 0) not in t.cells else f"  {col}"))
        for j, col in enumerate(t.cols):
            if (i, j) in t.changes:
                out.append(Line("change", i, j, "  Δ" if len(t.cols) == 2 else f"  Δ {col}"))
    return out


def cost_keys(t: PaperTable) -> list[str]:
    """The cost columns any run measured."""
    return [k for k in COSTS if any(k in c.cost for c in t.cells.values())]


def headers(t: PaperTable) -> list[str]:
    first = "method" if t.context.get("rows_by") == ["method"] else " · ".join(t.context.get("rows_by") or ["runs"])
    return [first] + [head for _, head in t.metrics] + [COSTS[k] for k in cost_keys(t)]


def bold(t: PaperTable, line: Line, key: str) -> bool:
    """Whether a value is the better side of a significant difference within its row."""
    if line.kind != "value":
        return False
    better = set()
    for j in range(1, len(t.cols)):
        test = t.changes.get((line.i, j), {}).get(key)
        if test and test["significant"]:
            up = (test["difference"] > 0) != (key in LOWER_IS_BETTER)
            better.add(j if up else 0)
    return line.j in better


def text(t: PaperTable, line: Line, key: str, latex: bool = False) -> str:
    """A metric's (or cost's) cell on one line (LaTeX: mean ± sd and Δ only, without the p-values)."""
    if line.kind == "change":
        return "" if key in COSTS else change_cell(t.changes[(line.i, line.j)].get(key), key, p_values=not latex)
    cell = t.cells[(line.i, line.j)]
    if key in COSTS:
        v = cell.cost.get(key)
        return "—" if v is None else f"{v:.3g}" if key == "seconds_per_epoch" else f"{v:.0f}"
    s = cell.stats.get(key)
    if s is None:
        return "—"
    return value_cell(s.mean, s.sd, None if latex else cell.interval(key), key)


def rows_of(t: PaperTable, latex: bool = False) -> list[list[tuple[str, bool]]]:
    """Every line's cells as (text, bold), its label first."""
    keys = [k for k, _ in t.metrics] + cost_keys(t)
    return [[(line.label, False)] + [(text(t, line, k, latex), bold(t, line, k)) for k in keys]
            for line in layout(t)]


def caption(t: PaperTable) -> str:
    n_seeds = len(t.seeds())
    where = f"{t.context.get('dataset')} test, n = {t.context.get('n')}, {t.context.get('threat')} ε = " \
            f"{t.context.get('eps'):.4g}" if t.context.get("eps") is not None else "test split"
    spread = (f"mean ± sd over {n_seeds} seeds (95% t interval)" if n_seeds > 1 else
              "accuracy (95% Wilson interval)")
    tests = ("Δ: later − first group, the mean paired difference over the seeds both ran; t = paired t-test "
             "across the seeds, CMH = Cochran–Mantel–Haenszel test of the per-image flags pooled over the seeds; "
             if n_seeds > 1 else "Δ: later − first group; McNemar's exact test on the same images; ")
    options = t.context.get("options") or {}
    per_row = ("; the module's options per row: " + "; ".join(f"{row} {o}" for row, o in options.items())
               if options else "")
    costs = "".join(f"; {COSTS[k]}: {COST_TEXT[k]}" for k in cost_keys(t))
    return (f"Accuracy (%) on {where}, checkpoint {t.context.get('checkpoint')}: {spread}; {tests}"
            f"bold = the better side of a significant difference; n.s. = not significant "
            f"(p ≥ 0.05 in a test that applies){per_row}{costs}")


def to_markdown(t: PaperTable) -> str:
    head = headers(t)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for row in rows_of(t):
        lines.append("| " + " | ".join(f"**{s}**" if b else s for s, b in row) + " |")
    return "\n".join(lines) + f"\n\n{caption(t)}\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_LATEX_UNICODE = {"±": r"$\pm$", "–": "--", "—": "---", "−": "$-$", "∞": r"$\infty$", "↓": r"$\downarrow$",
                  "↑": r"$\uparrow$", "Δ": r"$\Delta$", "·": r"$\cdot$", "ε": r"$\varepsilon$", "α": r"$\alpha$",
                  "≥": r"$\geq$", "×": r"$\times$"}


def latex_escape(s: str) -> str:
    """Text as LaTeX: its special characters escaped, the symbols igdm-kit prints as math."""
    out = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in s)
    return "".join(_LATEX_UNICODE.get(ch, ch) for ch in out)


def to_latex(t: PaperTable) -> str:
    """A booktabs ``table`` stacked as the paper's Tables 2–3 (the base method, ``+module``, Δ), a rule
    between methods, the better value in bold only where the difference is significant."""
    head = headers(t)
    lines = [r"\begin{table}[t]", r"\centering", r"\caption{" + latex_escape(caption(t)) + "}",
             r"\begin{tabular}{l" + "r" * (len(head) - 1) + "}", r"\toprule",
             " & ".join(latex_escape(h) for h in head) + r" \\", r"\midrule"]
    previous = None
    for line, row in zip(layout(t), rows_of(t, latex=True), strict=True):
        if previous is not None and line.i != previous:
            lines.append(r"\midrule")
        previous = line.i
        cells = [latex_escape(row[0][0].strip())] + [rf"\textbf{{{latex_escape(s)}}}" if b else latex_escape(s)
                                                     for s, b in row[1:]]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


CSV_FIELDS = ["kind", "row", "col", "metric", "seeds", "n_seeds", "mean", "sd", "ci_low", "ci_high", "difference",
              "t_p", "per_image_test", "per_image_p", "significant"]


def to_csv(t: PaperTable) -> str:
    """One line per value (a metric of a cell), change (a later group against the first) and cost; numbers
    at full precision, empty where none applies."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for (i, j), cell in sorted(t.cells.items()):
        base = {"row": t.rows[i], "col": t.cols[j], "seeds": " ".join(str(s) for s in cell.seeds),
                "n_seeds": len(cell.runs)}
        for key, _ in t.metrics:
            s = cell.stats.get(key)
            if s is not None:
                ci = cell.interval(key) or [None, None]
                w.writerow({**base, "kind": "value", "metric": key, "mean": s.mean, "sd": s.sd,
                            "ci_low": ci[0], "ci_high": ci[1]})
        for key, v in cell.cost.items():
            w.writerow({**base, "kind": "cost", "metric": key, "mean": v})
    for (i, j), changes in sorted(t.changes.items()):
        for key, _ in t.metrics:
            c = changes.get(key)
            if c is None:
                continue
            w.writerow({"kind": "change", "row": t.rows[i], "col": f"{t.cols[j]} vs {t.cols[0]}", "metric": key,
                        "seeds": " ".join(str(s) for s in c["seeds"]), "n_seeds": len(c["seeds"]),
                        "difference": c["difference"], "t_p": (c.get("paired_t") or {}).get("p_value"),
                        "per_image_test": (c.get("per_image") or {}).get("test"),
                        "per_image_p": (c.get("per_image") or {}).get("p_value"), "significant": c["significant"]})
    return buf.getvalue()
