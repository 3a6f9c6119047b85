"""Validation during training: the held-out split, per-epoch robust accuracy on it, the best checkpoint
chosen on it (never on the test set), and the final evaluation of both last and best."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
import torch
from conftest import DIGITS_PGDAT
from safetensors.torch import load_file

from igdm_kit import _recipe as R
from igdm_kit._storage.io import read_jsonl
from igdm_kit.errors import DataError, RecipeError

# the last epoch at lr 5 (0.5, × 10 at milestone 3) wrecks the model: the best epoch on the validation split is
# not the last, whatever the platform's rounding (lr = 1.0 alone left that to chance: on torch 2.14's PyPI build
# the robust accuracy rose every epoch)
VALIDATED = DIGITS_PGDAT.replace("epochs = 1", "epochs = 4\nlr = 0.5\nlr_decay = 10.0\nsave_every_epoch = true") \
    .replace("milestones = []", "milestones = [3]") \
    .replace("[data]\nname = \"digits\"", "[data]\nname = \"digits\"\nval_size = 0.2") \
    .replace('[eval]\nattacks = ["clean"]',
             '[train.validate]\nevery = 1\n[eval]\nattacks = ["clean", "pgd20"]\neps = 0.1\n'
             'checkpoints = ["last", "best"]')


def _labels():
    from igdm_kit.factories import create_dataset

    _, y = create_dataset("digits").load("train")
    return y


def test_split_is_stratified_disjoint_and_the_same_for_one_seed():
    from igdm_kit._training.split import split_validation

    y = _labels()
    keep, held = split_validation(y, 0.2, seed=3)
    keep2, held2 = split_validation(y, 0.2, seed=3)
    assert torch.equal(keep, keep2) and torch.equal(held, held2)  # the same seed, the same split
    k, h = set(keep.tolist()), set(held.tolist())
    assert not k & h and k | h == set(range(len(y)))  # disjoint, and together the whole training set
    assert len(h) == math.ceil(0.2 * len(y))  # a fraction rounds up, as scikit-learn does
    # stratified: each class is held out in proportion to its size (within one image)
    total, out = Counter(y.tolist()), Counter(y[held].tolist())
    assert all(abs(out[c] - 0.2 * total[c]) <= 1 for c in total)
    _, other = split_validation(y, 0.2, seed=4)
    assert set(other.tolist()) != h  # another seed, another split
    _, counted = split_validation(y, 100, seed=3)
    assert len(counted) == 100  # a count, not a fraction


def test_a_split_that_leaves_a_class_empty_is_one_line_error():
    from igdm_kit._training.split import split_validation

    with pytest.raises(DataError, match="val_size"):
        split_validation(torch.tensor([0, 0, 0, 1]), 0.5, seed=0)


@pytest.mark.parametrize("text, words", [
    (VALIDATED.replace("val_size = 0.2", ""), ["data.val_size", "test set"]),
    (VALIDATED.replace("val_size = 0.2", "val_size = 1.5"), ["val_size", "fraction"]),
    (VALIDATED.replace("every = 1", "every = 1\nmetric = \"pgd20\""), ["train.validate.metric", "robust"]),
    (VALIDATED.replace("[train.validate]\nevery = 1\n", ""), ["eval.checkpoints", "[train.validate]"]),
    (VALIDATED.replace('"last", "best"', '"last", "ema"'), ["eval.checkpoints", "[train.ema]"]),
])
def test_bad_validation_settings_are_refused_before_training(write_recipe, text, words):
    with pytest.raises(RecipeError) as exc:
        R.load(write_recipe(text))
    assert all(w in str(exc.value) for w in words), str(exc.value)


@pytest.fixture(scope="module")
def validated_run(tmp_path_factory):
    """A digits run validated every epoch, judged on last and best, through the CLI (in-process)."""
    from igdm_kit._cli import main

    d = tmp_path_factory.mktemp("validated")
    (d / "r.toml").write_text(VALIDATED)
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        main(["run", str(d / "r.toml"), "--output", str(d / "run")])
    assert done.value.code in (0, None)
    return d / "run", out.getvalue()


def test_best_is_the_epoch_a_hand_computation_over_the_metrics_picks(validated_run):
    run, _ = validated_run
    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert all({"val_clean", "val_pgd(steps=10)", "val_robust"} <= r.keys() for r in rows)
    scores = [r["val_robust"] for r in rows]
    expected = scores.index(max(scores)) + 1  # the first epoch with the highest robust accuracy
    assert expected != 4, scores  # (this recipe overfits: the selection is not the last epoch)
    best = load_file(str(run / "best.safetensors"))
    that_epoch = load_file(str(run / "checkpoints" / f"epoch_{expected:03d}.safetensors"))
    assert best.keys() == that_epoch.keys() and all(torch.equal(best[k], that_epoch[k]) for k in best)
    from igdm_kit._storage.checkpoint import read_metadata

    meta = read_metadata(run / "best.safetensors")
    assert meta["epoch"] == expected and meta["selected_by"]["metric"] == "val_robust"
    assert meta["selected_by"]["value"] == pytest.approx(max(scores))
    # the resolved recipe in the run folder is itself a recipe with the same digest
    assert R.load(run / "recipe.toml").digest() == R.load(run.parent / "r.toml").digest()
    results = json.loads((run / "results.json").read_text())
    assert results["checkpoints"]["best"]["epoch"] == expected and results["checkpoints"]["last"]["epoch"] == 4
    assert results["checkpoint"] == "last" and results["metrics"] == results["checkpoints"]["last"]["metrics"]


def test_validation_uses_the_held_out_images_recorded_in_the_manifest(validated_run):
    from igdm_kit._evaluation.runner import evaluate
    from igdm_kit._training.split import split_validation
    from igdm_kit.factories import create_dataset

    run, _ = validated_run
    manifest = json.loads((run / "manifest.json").read_text())
    split = manifest["validation_split"]
    y = _labels()
    _, held = split_validation(y, 0.2, seed=0)
    assert split["indices"] == held.tolist() and split["images"] == len(held)
    assert split["train_images"] == len(y) - len(held)
    # the last epoch's val_robust is PGD-10 at the training ε on exactly those images
    x, _ = create_dataset("digits").load("train")
    import igdm_kit

    model = igdm_kit.load_model(run / "model.safetensors")
    rep = evaluate(model, x[held], y[held], attacks=[{"name": "pgd", "steps": 10}, "clean"], eps=0.1)
    assert read_jsonl(run / "metrics.jsonl")[-1]["val_robust"] == pytest.approx(rep["worst"]["accuracy"])


def test_the_cli_shows_robust_accuracy_per_epoch_and_judges_last_and_best(validated_run):
    run, out = validated_run
    rows = read_jsonl(run / "metrics.jsonl")
    assert "validation split" in out and "robust" in out
    for r in rows:  # every epoch's robust accuracy on the validation split is in the printed table
        assert f"{r['val_robust']:.2f}" in out
    assert "★" in out
    best = json.loads((run / "results.json").read_text())["checkpoints"]["best"]
    assert f"best (epoch {best['epoch']}): test PGD-20 acc (%)" in out
    assert "last (epoch 4): test PGD-20 acc (%)" in out
    assert (run / "eval_flags.best.safetensors").is_file()
