"""``igdm-kit eval`` and ``igdm-kit analyze``: tables, JSON envelopes, plots and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import igdm_kit._cli as cli_mod
from igdm_kit._cli import analyze as analyze_cmd
from igdm_kit._cli import eval as eval_cmd

LABELS = ("Clean", "FGSM", "PGD-20", "CW-∞", "AutoAttack")


@pytest.fixture(autouse=True)
def wired(monkeypatch):
    """Make sure ``main`` has the eval and analyze commands (whether or not cli/__init__ lists them yet)."""
    missing = tuple(g for g in (eval_cmd, analyze_cmd) if g not in cli_mod.GROUPS)
    monkeypatch.setattr(cli_mod, "GROUPS", tuple(cli_mod.GROUPS) + missing)


def _save(path, epoch=None, dataset=True, train_steps=0, seed=0, eval_eps=None):
    import torch
    import torch.nn.functional as F

    from igdm_kit._storage.checkpoint import save_model
    from igdm_kit.factories import create_dataset, create_model

    torch.manual_seed(seed)
    m = create_model("small-cnn", num_classes=10, in_channels=1, image_size=8, width=4)
    if train_steps:
        x, y = create_dataset("digits").load("train")
        opt = torch.optim.Adam(m.parameters(), lr=1e-2)
        for i in range(train_steps):
            idx = torch.randint(0, len(x), (64,))
            loss = F.cross_entropy(m(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    meta = {"model": "small-cnn", "model_options": {"width": 4}, "num_classes": 10, "in_channels": 1,
            "image_size": 8, "mean": None, "std": None}
    if dataset:
        meta["dataset"] = {"name": "digits", "options": {}}
    if epoch is not None:
        meta["epoch"] = epoch
    if eval_eps is not None:
        meta["eval_eps"] = eval_eps
    save_model(path, m.eval(), meta)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("ck") / "model.safetensors", train_steps=30)


def test_eval_prints_all_five_metrics(cli, ckpt):
    res = cli("eval", "--model", ckpt, "--limit", "8", "--device", "cpu", "--no-progress")
    assert res.code == 0, res.err
    for label in LABELS:
        assert label in res.out
    assert "/8" in res.out  # counts next to the percentages


def test_eval_json_envelope_on_stdout_only(cli, ckpt, tmp_path):
    res = cli("eval", "--model", ckpt, "--limit", "8", "--attacks", "clean,fgsm,pgd20,cw,autoattack",
              "--json", "--aa-state", tmp_path / "aa.json", "--device", "cpu")
    assert res.code == 0, res.err
    env = json.loads(res.out)
    assert env["command"] == "eval" and env["results"]["dataset"] == "digits"
    metrics = env["results"]["metrics"]
    assert list(metrics) == ["clean", "fgsm", "pgd20", "cw", "autoattack"]
    for m in metrics.values():
        assert m["total"] == 8 and m["accuracy"] == pytest.approx(100 * m["correct"] / 8)
        assert m["correct"] <= metrics["clean"]["correct"]
    assert isinstance(env["results"]["warnings"], list)
    assert (tmp_path / "aa.json").exists()
    # a second run resumes from the finished state and gives the same AutoAttack number
    again = cli("eval", "--model", ckpt, "--limit", "8", "--attacks", "autoattack", "--json",
                "--aa-state", tmp_path / "aa.json", "--device", "cpu")
    assert json.loads(again.out)["results"]["metrics"]["autoattack"] == metrics["autoattack"]


def test_eval_subset_and_dataset_option(cli, ckpt):
    res = cli("eval", "--model", ckpt, "--dataset", "digits", "--limit", "5", "--attacks", "clean,pgd20",
              "--json", "--eps", "0.1", "--device", "cpu")
    assert res.code == 0, res.err
    r = json.loads(res.out)["results"]
    assert list(r["metrics"]) == ["clean", "pgd20"] and r["eps"] == pytest.approx(0.1) and r["n"] == 5


@pytest.mark.parametrize("args, words", [
    (["--model", "nope.safetensors"], ["nope.safetensors", "does not exist"]),
    (["--attacks", "clean,pgdd"], ["unknown attack 'pgdd'"]),
    (["--eps", "eight"], ["--eps"]),
    (["--dataset", "digitz"], ["unknown dataset 'digitz'"]),
])
def test_eval_errors_are_one_line_and_exit_1(cli, ckpt, args, words):
    full = ["eval", "--model", ckpt, "--limit", "4", "--device", "cpu"] + args
    res = cli(*full)
    assert res.code == 1
    lines = res.err.strip().splitlines()
    assert lines[0].startswith("error: ") and all(w in res.err for w in words), res.err
    assert "Traceback" not in res.err and res.out == ""


def test_eval_without_recorded_dataset_asks_for_one(cli, tmp_path):
    p = _save(tmp_path / "bare.safetensors", dataset=False)
    res = cli("eval", "--model", p, "--limit", "4", "--attacks", "clean")
    assert res.code == 1 and "does not record its dataset" in res.err and "--dataset" in res.err
    ok = cli("eval", "--model", p, "--dataset", "digits", "--limit", "4", "--attacks", "clean", "--json")
    assert ok.code == 0 and json.loads(ok.out)["results"]["metrics"]["clean"]["total"] == 4


def test_analyze_linearity_keeps_the_order_given_and_plots(cli, tmp_path):
    paths = [_save(tmp_path / f"epoch_{e:03d}.safetensors", epoch=e, seed=e) for e in (3, 1, 2)]
    plot = tmp_path / "curve.png"
    res = cli("analyze", "linearity", "--model", *paths, "--limit", "20", "--json", "--plot", plot,
              "--device", "cpu", "--no-progress")
    assert res.code == 0, res.err
    env = json.loads(res.out)
    assert env["command"] == "analyze linearity"
    rows = env["results"]["checkpoints"]
    assert [r["epoch"] for r in rows] == [3, 1, 2] and env["results"]["n"] == 20
    assert all(r["n"] == 20 and 0 < r["mean"] and r["q05"] <= r["median"] <= r["q95"] for r in rows)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the same noise for every checkpoint: one file twice gives the same numbers
    twice = cli("analyze", "linearity", paths[0], paths[0], "--limit", "20", "--json", "--device", "cpu")
    a, b = json.loads(twice.out)["results"]["checkpoints"]
    assert a["mean"] == b["mean"]
    table = cli("analyze", "linearity", "--model", paths[0], "--limit", "20", "--device", "cpu")
    assert table.code == 0 and "epoch_003" in table.out and "mean" in table.out


def test_analyze_alignment_of_a_model_with_itself(cli, ckpt, tmp_path):
    res = cli("analyze", "alignment", "--student", ckpt, "--teacher", ckpt, "--limit", "10", "--json",
              "--plot", tmp_path / "a.png", "--device", "cpu")
    assert res.code == 0, res.err
    r = json.loads(res.out)["results"]
    assert r["gd"] == 0.0 and r["gc"] == pytest.approx(1.0, abs=1e-5) and r["n"] == 10
    assert (tmp_path / "a.png").exists()
    table = cli("analyze", "alignment", "--student", ckpt, "--teacher", ckpt, "--limit", "10")
    assert table.code == 0 and "GD" in table.out and "GC" in table.out


def test_analyze_pointwise(cli, ckpt, tmp_path):
    other = _save(tmp_path / "other.safetensors", seed=5)
    res = cli("analyze", "pointwise", "--student", ckpt, "--teacher", other, "--limit", "6", "--json",
              "--method", "pgd-at", "--device", "cpu")
    assert res.code == 0, res.err
    r = json.loads(res.out)["results"]
    assert r["uniform"]["n"] == 6 and r["adversarial"]["n"] == 6 and r["uniform"]["mean"] > 0
    same = cli("analyze", "pointwise", "--student", ckpt, "--teacher", ckpt, "--limit", "6", "--json")
    s = json.loads(same.out)["results"]
    assert s["uniform"]["mean"] == 0.0 and s["adversarial"]["mean"] == 0.0
    bad = cli("analyze", "pointwise", "--student", ckpt, "--teacher", ckpt, "--method", "pgd-att")
    assert bad.code == 1 and "unknown method 'pgd-att'" in bad.err and "pgd-at" in bad.err


def test_plot_without_matplotlib_is_a_clear_error(cli, ckpt, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    res = cli("analyze", "linearity", ckpt, "--limit", "4", "--plot", tmp_path / "x.png")
    assert res.code == 1 and "matplotlib" in res.err.splitlines()[0] and "pip install matplotlib" in res.err


def test_help_of_eval_and_analyze_does_not_import_torch():
    code = ("import sys\nimport igdm_kit._cli as c\nfrom igdm_kit._cli import eval as e, analyze as a\n"
            "c.GROUPS = tuple(c.GROUPS) + tuple(g for g in (e, a) if g not in c.GROUPS)\n"
            "for args in (['--help'], ['eval', '--help'], ['analyze', '--help'], ['analyze', 'linearity', '--help']):\n"
            "    try:\n        c.main(args)\n    except SystemExit:\n        pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "--aa-state" in out.stdout and "linearity" in out.stdout and "alignment" in out.stdout
    assert out.stdout.strip().endswith("NO-TORCH"), out.stdout[-300:] + out.stderr[-300:]


def test_paths_with_brackets_are_printed_verbatim(cli, tmp_path):
    p = _save(tmp_path / "run[exp]" / "epoch_[best].safetensors", epoch=2)
    res = cli("eval", "--model", p, "--limit", "4", "--attacks", "clean", "--no-progress")
    assert res.code == 0 and "run[exp]" in res.out.replace("\n", "")
    lin = cli("analyze", "linearity", p, "--limit", "4", "--no-progress")
    assert lin.code == 0 and "epoch_[best]" in lin.out  # (a narrow table may fold the rest of the name)


def test_analysis_defaults_to_the_radius_recorded_in_the_checkpoint(cli, tmp_path):
    """As `eval` does: a model trained and judged at 0.1 is analysed at 0.1, and tables say so."""
    a = _save(tmp_path / "a.safetensors", seed=1, eval_eps=0.1)
    b = _save(tmp_path / "b.safetensors", seed=2, eval_eps=0.1)
    res = cli("analyze", "linearity", a, b, "--limit", "6", "--json", "--device", "cpu")
    assert res.code == 0, res.err
    assert json.loads(res.out)["results"]["eps"] == 0.1 and "ε = 0.1" in res.err
    table = cli("analyze", "linearity", a, "--limit", "6", "--device", "cpu")
    assert "ε=0.1" in table.out and "n=6" in table.out and "digits test" in table.out
    res = cli("analyze", "pointwise", "--student", a, "--teacher", b, "--limit", "6", "--json", "--steps", "2")
    assert res.code == 0, res.err
    assert json.loads(res.out)["results"]["eps"] == 0.1
    res = cli("analyze", "linearity", a, b, "--limit", "6", "--json", "--eps", "8/255")
    assert json.loads(res.out)["results"]["eps"] == pytest.approx(8 / 255)
    other = _save(tmp_path / "c.safetensors", seed=3, eval_eps=8 / 255)
    res = cli("analyze", "linearity", a, other, "--limit", "6")
    assert res.code == 1 and "different ε (8/255, 0.1)" in res.err and "--eps" in res.err
    plain = _save(tmp_path / "d.safetensors", seed=4)  # nothing recorded: the paper's 8/255
    res = cli("analyze", "linearity", plain, "--limit", "6", "--json")
    assert json.loads(res.out)["results"]["eps"] == pytest.approx(8 / 255) and "no ε recorded" in res.err
    table = cli("analyze", "alignment", "--student", a, "--teacher", b, "--limit", "6")
    assert "digits test, n=6" in table.out

