"""``igdm-kit report``: finished runs as the paper's table — grouping, the refusal of runs that differ in
what the table does not show, the numbers against a hand computation, and the Markdown/LaTeX/CSV outputs."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import RECIPES, TINY
from scipy import stats as sps

from igdm_kit._evaluation.collect import Run, cost_of
from igdm_kit._evaluation.export import to_csv, to_latex, to_markdown
from igdm_kit._evaluation.grouping import build
from igdm_kit._evaluation.runner import load_flags
from igdm_kit.errors import IgdmKitError

LABELS = {"clean": "Clean", "pgd20": "PGD-20", "cw": "CW-∞", "autoattack": "AA"}


def fake(method: str, alpha: float | None, seed: int, correct: dict[str, int], n: int = 1000, **train) -> Run:
    """A finished run as ``collect`` reads it, without training one: its resolved recipe and results."""
    recipe = {"name": f"{method}-{alpha}", "data": {"name": "digits"}, "student": {"model": "small-cnn"},
              "method": {"name": method}, "attack": {"name": "trades" if method == "trades" else "pgd"},
              "train": {"epochs": 10, "seed": seed, **train}, "output": {"dir": f"runs/{method}/{alpha}"}}
    if alpha is not None:
        recipe["module"] = {"name": "igdm", "alpha": alpha}
    metrics = {k: {"correct": c, "total": n, "label": LABELS[k]} for k, c in correct.items()}
    results = {"n": n, "eps": 0.1, "threat": "Linf", "metrics": metrics}
    return Run(Path(f"/runs/{method}/{alpha}/seed={seed}"), recipe, seed, "last", results, None,
               {"seconds_per_epoch": 10.0 + seed})


ARD_BASE = [{"clean": 800 + s, "pgd20": 500 + 3 * s} for s in range(3)]
ARD_IGDM = [{"clean": c, "pgd20": 540 + s} for s, c in enumerate((803, 800, 803))]


def paper_runs() -> list[Run]:
    runs = [fake("ard", 0.0, s, c) for s, c in enumerate(ARD_BASE)]
    runs += [fake("ard", 6.0, s, c) for s, c in enumerate(ARD_IGDM)]
    runs += [fake("trades", None, s, {"clean": 780, "pgd20": 520 + s}) for s in range(3)]
    runs += [fake("trades", 5.0, s, {"clean": 781, "pgd20": 519 + 2 * s}) for s in range(3)]
    return runs


def test_the_paper_layout_equals_a_hand_computation():
    t = build(paper_runs())
    assert t.rows == ["ard", "trades"] and t.cols == ["base", "+igdm"]  # no module and α = 0 are both "base"
    assert [k for k, _ in t.metrics] == ["clean", "pgd20"] and dict(t.metrics)["pgd20"] == "PGD-20"
    base = [c["pgd20"] / 10 for c in ARD_BASE]
    igdm = [c["pgd20"] / 10 for c in ARD_IGDM]
    cell = t.cells[(0, 0)]
    assert cell.stats["pgd20"].mean == pytest.approx(np.mean(base))
    assert cell.stats["pgd20"].sd == pytest.approx(np.std(base, ddof=1))
    half = sps.t.ppf(0.975, 2) * np.std(base, ddof=1) / math.sqrt(3)
    assert cell.interval("pgd20") == pytest.approx([np.mean(base) - half, np.mean(base) + half])
    assert cell.cost["seconds_per_epoch"] == pytest.approx(11.0)  # the mean over the seeds' runs
    change = t.changes[(0, 1)]["pgd20"]
    assert change["difference"] == pytest.approx(np.mean(igdm) - np.mean(base))
    assert change["paired_t"]["p_value"] == pytest.approx(sps.ttest_rel(igdm, base).pvalue)
    assert change["paired_t"]["df"] == 2 and change["seeds"] == [0, 1, 2]
    assert "per_image_error" in change  # these runs kept no flags: only the test that applies decides


def test_runs_that_differ_outside_the_grouping_keys_are_refused():
    runs = paper_runs()
    runs[4].recipe["train"]["epochs"] = 20
    with pytest.raises(IgdmKitError) as exc:
        build(runs)
    assert "the runs differ in train.epochs (10 in" in exc.value.message and "20 in" in exc.value.message
    assert "--rows/--cols train.epochs" in exc.value.hint
    # grouping by it makes them legal again (as a column group), and names its values
    t = build(runs, ["method"], ["module", "train.epochs"])
    assert len(t.cols) == 3
    # two runs of one cell with the same seed
    dup = paper_runs() + [fake("ard", 0.0, 1, ARD_BASE[1])]
    with pytest.raises(IgdmKitError, match="two runs of one cell have seed 1"):
        build(dup)
    # the default layout takes each method's own α (named in the caption), but one α per method
    assert build(paper_runs()).context["options"] == {"ard": "alpha=6", "trades": "alpha=5"}
    more = paper_runs()[:6] + [fake("ard", 20.0, s, c) for s, c in enumerate(ARD_IGDM)]
    with pytest.raises(IgdmKitError, match="the runs differ in module.alpha"):
        build(more)
    assert build(more, ["method"], ["module.alpha"]).cols == ["0", "6", "20"]
    # --rows alone groups by exactly that key: the module's α must then be grouped too
    with pytest.raises(IgdmKitError, match="differ in module"):
        build(paper_runs()[:6], ["method.name"], None)
    with pytest.raises(IgdmKitError, match="--metrics fgsm"):
        build(paper_runs(), metrics=["fgsm"])


def test_latex_is_a_booktabs_table_with_bold_only_where_significant():
    t = build(paper_runs())
    tex = to_latex(t)
    lines = tex.splitlines()
    assert lines[0] == r"\begin{table}[t]" and lines[-1] == r"\end{table}" and lines[2].startswith(r"\caption{")
    assert [lines.count(r) for r in (r"\toprule", r"\bottomrule")] == [1, 1]
    begin = next(line for line in lines if line.startswith(r"\begin{tabular}"))
    n_cols = len(re.search(r"\{(l[rc]*)\}", begin).group(1))
    body = [line for line in lines[lines.index(r"\toprule") + 1:lines.index(r"\bottomrule")] if line != r"\midrule"]
    assert body[0].split(" & ")[:3] == ["method", "Clean", "PGD-20"]
    for row in body:
        assert row.endswith(r"\\") and row.count("&") == n_cols - 1
    # the paper's stacking: each method, its +igdm line and Δ; a rule between the methods
    assert [row.split(" & ")[0] for row in body[1:]] == ["ard", "+igdm", r"$\Delta$", "trades", "+igdm", r"$\Delta$"]
    assert lines.count(r"\midrule") == 2
    assert "±" not in tex and r"$\pm$" in tex  # every symbol in math
    # ARD's PGD-20 gain (+3.6 points, consistent over the seeds) is significant: its value bold, nothing else
    assert t.changes[(0, 1)]["pgd20"]["significant"] and not t.changes[(0, 1)]["clean"]["significant"]
    bold = [(k, row.split(" & ")[0]) for row in body[1:] for k, cell in zip(["clean", "pgd20", "s"],
                                                                          row.split(" & ")[1:], strict=True)
            if cell.startswith(r"\textbf")]
    assert bold == [("pgd20", "+igdm")]
    assert r"+3.60 \\" not in tex and "n.s." in tex  # Δ cells: the difference, n.s. where not significant


def test_csv_reads_back_to_the_same_numbers_and_markdown_has_one_cell_per_column():
    t = build(paper_runs())
    rows = list(csv.DictReader(io.StringIO(to_csv(t))))
    values = [r for r in rows if r["kind"] == "value"]
    assert len(values) == 4 * 2  # 2 rows × 2 groups × 2 metrics
    for r in values:
        i, j = t.rows.index(r["row"]), t.cols.index(r["col"])
        s = t.cells[(i, j)].stats[r["metric"]]
        assert (float(r["mean"]), float(r["sd"])) == (s.mean, s.sd)
        assert [float(r["ci_low"]), float(r["ci_high"])] == list(s.ci95)
    changes = [r for r in rows if r["kind"] == "change"]
    for r in changes:
        c = t.changes[(t.rows.index(r["row"]), 1)][r["metric"]]
        assert float(r["difference"]) == c["difference"]
        assert (float(r["t_p"]) if r["t_p"] else None) == c["paired_t"]["p_value"]  # none: identical differences
        assert r["significant"] == str(c["significant"])
    md = to_markdown(t).splitlines()
    width = md[0].count("|")
    assert all(line.count("|") == width for line in md[:4]) and md[1].startswith("|---|")


def test_cost_of_reads_metrics_jsonl_rows():
    rows = [{"epoch": 1, "seconds": 2.0, "passes_student": 6}, {"epoch": 2, "seconds": 4.0, "passes_student": 6,
                                                                "peak_memory_mib": 300}]
    assert cost_of(rows) == {"seconds_per_epoch": 3.0, "passes_student": 6.0, "peak_memory_mib": 300.0}
    assert cost_of([]) == {}


SEEDED = TINY.replace('name = "pgd-at"', 'name = "trades"').replace(
    'attacks = ["clean"]', 'attacks = ["clean", "fgsm"]').replace("epochs = 1", "epochs = 2") + """
[module]
name = "trades-reg"
alpha = 1.0
[sweep]
"module.alpha" = [0.0, 2.0]
"""


@pytest.mark.slow
def test_report_on_a_seeded_sweep_equals_its_files(tmp_path, write_recipe, cli):
    out = tmp_path / "family"
    assert cli("sweep", write_recipe(SEEDED), "--seeds", "0-2", "--output", out).code == 0
    res = cli("report", out, "--metrics", "all", "--json")
    assert res.code == 0, res.err
    rep = json.loads(res.out)["results"]
    assert rep["rows"] == ["trades"] and rep["cols"] == ["base", "+trades-reg"]
    folders = {a: [out / f"alpha={a}" / f"seed={s}" for s in range(3)] for a in (0, 2)}
    acc = {a: [json.loads((f / "results.json").read_text())["metrics"]["fgsm"]["accuracy"] for f in fs]
           for a, fs in folders.items()}
    base = rep["cells"][0]["metrics"]["fgsm"]
    assert base["mean"] == pytest.approx(np.mean(acc[0])) and base["sd"] == pytest.approx(np.std(acc[0], ddof=1))
    change = rep["changes"][0]["metrics"]["fgsm"]
    assert change["difference"] == pytest.approx(np.mean(acc[2]) - np.mean(acc[0]))
    if np.std(np.subtract(acc[2], acc[0])) > 0:
        assert change["paired_t"]["p_value"] == pytest.approx(sps.ttest_rel(acc[2], acc[0]).pvalue)
    only = [0, 0]
    for fa, fb in zip(folders[0], folders[2], strict=True):
        ga = load_flags(fa / "eval_flags.safetensors")[0]["fgsm"]
        gb = load_flags(fb / "eval_flags.safetensors")[0]["fgsm"]
        only = [only[0] + int((ga & ~gb).sum()), only[1] + int((gb & ~ga).sum())]
    assert [change["per_image"]["a_only"], change["per_image"]["b_only"]] == only
    assert change["per_image"]["test"] == "Cochran–Mantel–Haenszel" and change["per_image"]["strata"] == 3
    assert rep["cells"][0]["cost"]["passes_student"] > 0  # measured by every run
    # one row per variant of the sweep
    res = cli("report", out, "--rows", "module.alpha")
    assert res.code == 0 and re.search(r"│ 0\s+│", res.out) and re.search(r"│ 2\s+│", res.out)
    assert "3 seeds" in res.out
    # a folder with an unfinished run beside them: skipped and named; a missing checkpoint: one line
    assert cli("report", out / "alpha=0" / "seed=0", "--checkpoint", "best").code == 1
    err = cli("report", out / "alpha=0" / "seed=0", "--checkpoint", "best").err
    assert "has no evaluation of its 'best' checkpoint" in err and "Traceback" not in err


@pytest.fixture
def quickstart(tmp_path, monkeypatch):
    """The quickstart family and its teacher, 1 epoch each and without AutoAttack (cwd: tmp_path)."""
    for name in ("quickstart.toml", "quickstart_teacher.toml"):
        text = (RECIPES / name).read_text().replace("epochs = 15", "epochs = 1") \
            .replace("milestones = [10, 13]", "milestones = []") \
            .replace('attacks = ["clean", "fgsm", "pgd20", "cw", "autoattack"]',
                     'attacks = ["clean", "fgsm", "pgd20"]') \
            .replace('attacks = ["clean", "pgd20"]', 'attacks = ["clean"]')
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "quickstart.toml"


@pytest.mark.slow
def test_report_on_the_quickstart_reproduces_its_table(quickstart, cli):
    res = cli("run", quickstart, "--output", "runs/quickstart", "--json")
    assert res.code == 0, res.err
    sweep = json.loads(res.out)["results"]
    first, second = sweep["rows"]
    tests = sweep["versus_first"][0]["rows"]
    rep = cli("report", "runs/quickstart", "--metrics", "all", "--format", "csv")
    assert rep.code == 0, rep.err
    lines = list(csv.DictReader(io.StringIO(rep.out)))
    value = {(r["col"], r["metric"]): float(r["mean"]) for r in lines if r["kind"] == "value"}
    for key in ("clean", "fgsm", "pgd20", "worst", "gd", "gc", "worst-class:worst"):
        assert value[("base", key)] == pytest.approx(first[key])  # alpha=0: ARD alone
        assert value[("+igdm", key)] == pytest.approx(second[key])
    change = {r["metric"]: r for r in lines if r["kind"] == "change"}
    for key in ("clean", "fgsm", "pgd20", "worst"):
        assert float(change[key]["difference"]) == pytest.approx(tests[key]["difference"])
        assert float(change[key]["per_image_p"]) == pytest.approx(tests[key]["p_value"])
        assert change[key]["per_image_test"] == "McNemar exact"
    # the default Rich table: ARD's line, its +igdm line and Δ, the paper's four columns where run
    table = cli("report", "runs/quickstart").out
    assert re.search(r"│ ard +│", table) and re.search(r"│ +\+igdm +│", table)
    assert re.search(r"│ +Δ +│", table)
    assert "PGD-20" in table and "FGSM" not in table and "McNemar p=" in table


def test_a_run_records_its_passes_per_step(tmp_path, write_recipe, cli):
    """PGD-AT with 2 attack steps: per step 2 × (forward + input-gradient backward) for the attack, then
    the loss's forward and backward = 6 student passes; no teacher. Peak memory: CUDA only, absent here."""
    out = tmp_path / "run"
    assert cli("run", write_recipe(TINY), "--output", out).code == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["passes_student"] for r in rows] == [6] and not any("passes_teacher" in r for r in rows)
    assert not any("peak_memory_mib" in r for r in rows)
    table = out.parent / "t.md"
    res = cli("report", out, "--format", "markdown", "--output", table)
    assert res.code == 0 and res.out == "" and "| passes S |" in table.read_text()
    assert "| t |" not in table.read_text() and "| pgd-at |" in table.read_text()
    bad = cli("report", out, "--output", table)
    assert bad.code == 1 and "--format markdown|latex|csv" in bad.err


def test_checkpoint_chooses_the_evaluation_and_its_flags(tmp_path, write_recipe, cli):
    recipe = TINY.replace('[eval]\nattacks = ["clean"]', '[train.ema]\ndecay = 0.5\n[eval]\n'
                          'attacks = ["clean", "fgsm"]\ncheckpoints = ["last", "ema"]')
    out = tmp_path / "run"
    assert cli("run", write_recipe(recipe), "--output", out).code == 0
    results = json.loads((out / "results.json").read_text())
    for name in ("last", "ema"):
        rep = json.loads(cli("report", out, "--checkpoint", name, "--metrics", "all", "--json").out)["results"]
        want = results["checkpoints"][name]["metrics"]["fgsm"]["accuracy"]
        assert rep["checkpoint"] == name and rep["cells"][0]["metrics"]["fgsm"]["mean"] == pytest.approx(want)
    from igdm_kit._evaluation.collect import read_run

    assert read_run(out, "ema").flags == str(out / "eval_flags.ema.safetensors")
    assert read_run(out, None).flags == str(out / "eval_flags.safetensors") and read_run(out, None).checkpoint == "last"
