"""End to end: the digits PGD-AT skeleton trains, writes its run folder, and its checkpoint reloads."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import DIGITS_PGDAT, RECIPES

import igdm_kit
from igdm_kit import _recipe as R
from igdm_kit._storage.io import read_jsonl
from igdm_kit._training.engine import run


@pytest.fixture(scope="module")
def skeleton_run(tmp_path_factory):
    """The README's skeleton recipe, exactly as shipped (15 epochs; ~30 s on 2 cores)."""
    out = tmp_path_factory.mktemp("skeleton")
    r = R.load(RECIPES / "digits_pgdat.toml", ["eval.attacks=[\"clean\", \"pgd20\"]"])
    return run(r, output_dir=out)


def test_skeleton_beats_85_percent_clean_and_is_robust(skeleton_run):
    metrics = skeleton_run.results["metrics"]
    assert metrics["clean"]["accuracy"] > 85.0
    # robust accuracy must be well above chance (10%) at eps 0.1: PGD-AT did something
    assert metrics["pgd20"]["accuracy"] > 50.0


def test_run_folder_contents(skeleton_run):
    out = skeleton_run.output_dir
    for name in ("manifest.json", "recipe.toml", "metrics.jsonl", "last.safetensors", "model.safetensors",
                 "train_state.safetensors", "results.json"):
        assert (out / name).is_file(), name
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == list(range(1, 16))
    assert all("adv_ce" in r and "loss" in r and "test_clean_acc" in r for r in rows)
    assert rows[0]["lr"] == 0.05 and rows[-1]["lr"] == pytest.approx(0.0005)  # milestones 10, 13
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe_digest"] == skeleton_run.recipe.digest()
    assert manifest["torch_version"] == torch.__version__
    # the resolved recipe written to the folder is itself a valid recipe with the same digest
    assert R.load(out / "recipe.toml").digest() == skeleton_run.recipe.digest()


def test_checkpoint_reloads_to_identical_outputs(skeleton_run):
    model = igdm_kit.load_model(skeleton_run.output_dir / "model.safetensors")
    from igdm_kit._training.engine import build_student, load_data

    info, _, (xte, _) = load_data(skeleton_run.recipe)
    fresh = build_student(skeleton_run.recipe, info)
    from safetensors.torch import load_file

    fresh.load_state_dict(load_file(str(skeleton_run.output_dir / "model.safetensors")))
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(model(xte[:64]), fresh(xte[:64]))
    assert model.igdm_kit_meta["dataset"]["name"] == "digits"
    assert model.igdm_kit_meta["epoch"] == 15


def test_finished_run_is_not_overwritten(skeleton_run, cli):
    out = skeleton_run.output_dir
    before = (out / "model.safetensors").read_bytes()
    res = cli("run", RECIPES / "digits_pgdat.toml", "--output", out)
    assert res.code == 1 and "finished run" in res.err and "--overwrite" in res.err
    assert (out / "model.safetensors").read_bytes() == before


def test_example_plugin_method_runs_from_a_recipe(tmp_path, write_recipe, cli):
    p = write_recipe(DIGITS_PGDAT.replace('name = "pgd-at"', 'name = "mart"\nbeta = 6.0'))
    res = cli("run", p, "--output", tmp_path / "mart", "--json")
    assert res.code == 0, res.err
    payload = json.loads(res.out)
    assert payload["command"] == "run"
    assert {"bce", "robust_kl"} <= set(payload["results"]["metrics"][0])


def test_unfinished_run_needs_resume_or_overwrite(tmp_path, write_recipe, cli):
    p = write_recipe(DIGITS_PGDAT)
    out = tmp_path / "run"
    run(R.load(p), output_dir=out)
    (out / "results.json").unlink()  # as if stopped before the end
    res = cli("run", p, "--output", out)
    assert res.code == 1 and "--resume" in res.err
    assert (out / "metrics.jsonl").exists()
