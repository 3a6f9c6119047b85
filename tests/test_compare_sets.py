"""``igdm-kit compare`` (and every paired table) compares only attacks both sides ran, says which attacks each
worst case covers, and refuses a worst-case comparison over different attack sets unless asked.

Before: A's worst case included AutoAttack and B's did not, and the table compared them as one measurement
(here B looked 33 points more robust only because it was never attacked by AutoAttack), and AutoAttack,
run by A alone, was dropped without a word. Oracle: flags written by hand, counts worked out by hand.
"""

from __future__ import annotations

import pytest
import torch

from igdm_kit._evaluation.compare import compare
from igdm_kit._evaluation.runner import save_flags
from igdm_kit.errors import IgdmKitError

N = 12
X, Y = torch.zeros(N, 1, 2, 2), torch.zeros(N, dtype=torch.long)
LABELS = {"clean": "Clean", "pgd20": "PGD-20", "autoattack": "AutoAttack"}


def ones(k: int) -> torch.Tensor:
    return torch.tensor([True] * k + [False] * (N - k))


def write(path, flags: dict[str, torch.Tensor]):
    worst = torch.stack(list(flags.values())).all(dim=0)
    save_flags(path, {"n": N, "eps": 0.1, "threat": "Linf", "seed": 0,
                      "metrics": {k: {"label": LABELS[k]} for k in flags}, "flags": {**flags, "worst": worst}}, X, Y)
    return path


@pytest.fixture
def pair(tmp_path):
    """A ran clean (10/12), PGD-20 (8/12) and AutoAttack (5/12): worst 5; B ran clean (11/12) and PGD-20 (9/12):
    worst 9. Over the attacks both ran, A's worst is 8."""
    a = write(tmp_path / "a.safetensors", {"clean": ones(10), "pgd20": ones(8), "autoattack": ones(5)})
    b = write(tmp_path / "b.safetensors", {"clean": ones(11), "pgd20": ones(9)})
    return a, b


def test_worst_cases_over_different_attacks_are_refused(pair):
    a, b = pair
    with pytest.raises(IgdmKitError, match="cover different attacks") as exc:
        compare(a, b)
    assert "A: clean, pgd20, autoattack; B: clean, pgd20" in exc.value.message and "--worst common" in exc.value.hint


def test_common_recomputes_both_worst_cases_over_the_shared_attacks(pair):
    a, b = pair
    out = compare(a, b, worst="common")
    assert list(out["rows"]) == ["clean", "pgd20", "worst"]
    w = out["rows"]["worst"]
    assert (w["a_correct"], w["b_correct"]) == (8, 9)
    assert w["over"] == {"a": ["clean", "pgd20"], "b": ["clean", "pgd20"]}
    assert w["label"] == "worst case over clean, pgd20"
    assert out["only_a"] == ["autoattack"] and out["only_b"] == []


def test_each_compares_each_side_s_own_worst_case_and_says_so(pair):
    a, b = pair
    w = compare(a, b, worst="each")["rows"]["worst"]
    assert (w["a_correct"], w["b_correct"]) == (5, 9)
    assert w["label"] == "worst case (A: clean, pgd20, autoattack; B: clean, pgd20)"


def test_same_attacks_compare_as_before_and_name_what_the_worst_case_covers(tmp_path):
    a = write(tmp_path / "a.safetensors", {"clean": ones(10), "pgd20": ones(8)})
    b = write(tmp_path / "b.safetensors", {"pgd20": ones(9), "clean": ones(11)})  # another order, same set
    out = compare(a, b)
    assert out["rows"]["worst"]["over"] == {"a": ["clean", "pgd20"], "b": ["pgd20", "clean"]}
    assert (out["rows"]["worst"]["a_correct"], out["rows"]["worst"]["b_correct"]) == (8, 9)
    assert out["only_a"] == out["only_b"] == []


def test_the_cli_refuses_in_one_line_and_lists_what_it_did_not_compare(pair, cli):
    a, b = pair
    res = cli("compare", a, b)
    assert res.code == 1 and "cover different attacks" in res.err and "--worst" in res.err
    res = cli("compare", a, b, "--worst", "common")
    assert res.code == 0, res.err
    assert "worst case over clean, pgd20" in res.out
    assert "not compared (only A ran them): autoattack" in res.out
    res = cli("compare", a, b, "--worst", "most")
    assert res.code == 1 and "same, common or each" in res.err


def test_a_sweep_table_whose_variants_ran_different_attacks_does_not_compare_their_worst(capsys):
    """The sweep's change row: variant b's worst case covers fewer attacks than a's; its "+30" is not a change."""
    from igdm_kit._cli.sweep import print_table

    rows = [{"variant": "a", "n": 10, "ci95": {}, "clean": 90.0, "worst": 50.0, "worst_over": ["clean", "autoattack"]},
            {"variant": "b", "n": 10, "ci95": {}, "clean": 90.0, "worst": 80.0, "worst_over": ["clean"]}]
    print_table({"recipe": "r", "rows": rows, "columns": [["clean", "Clean"], ["worst", "worst"]],
                 "versus_first": [{"variant": "b", "error": "cover different attacks"}]})
    out = capsys.readouterr().out
    change = next(line for line in out.splitlines() if "change" in line)
    assert "+30" not in change and "—" in change
    assert "own attacks" in out and "each worst case covers its own" in " ".join(out.split())
