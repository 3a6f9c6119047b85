"""A user's explicit choice always wins or is refused, and a default that changes results is shown (issue 26):

* ``--set`` on a key a ``[sweep]`` table varies is an error naming both (it ran α = 0 and 6 for α = 20);
* ``--grid`` does what its help says (it replaces a key's sweep values, said so), and the README's sweep
  command keeps the α = 0 baseline the † marks compare against;
* a grid larger than a limit is refused before one variant is built, and the CLI expands it once;
* ``--resume`` on a folder that does not exist is an error, not a new run elsewhere;
* options with a range are checked at validation with the range in the message (seeds, severities);
* a flags file with 2-D (or otherwise malformed) flags is refused in one line;
* ``recipe show`` prints what the dataset decides (horizontal flips for image folders).
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from conftest import DIGITS_PGDAT, RECIPES, ROOT, TINY
from test_shift_files import ctx
from test_sweep import FAMILY

from igdm_kit._sweep import sweep as S
from igdm_kit.errors import IgdmKitError, RecipeError

QUICKSTART = RECIPES / "quickstart.toml"


# -- --set and [sweep] -------------------------------------------------------------------------------------
def test_set_on_a_key_the_sweep_varies_is_refused_naming_both():
    with pytest.raises(RecipeError) as exc:
        S.expand(QUICKSTART, overrides=["module.alpha=20"])
    assert "--set module.alpha=20" in exc.value.message and "module.alpha over [0, 6]" in exc.value.message
    assert "--grid module.alpha=" in exc.value.hint
    with pytest.raises(RecipeError, match="module.alpha"):  # a whole table holding the key, too
        S.expand(QUICKSTART, overrides=["module={name = \"igdm\", alpha = 20}"])
    # other keys, and the sweep itself, are the user's to set
    assert [v.recipe.model.train.epochs for v in S.expand(QUICKSTART, overrides=["train.epochs=2"])] == [2, 2]
    one = S.expand(QUICKSTART, overrides=["sweep={}", "module.alpha=20"])
    assert [v.recipe.components["module"].alpha for v in one] == [20]


def test_run_with_set_on_a_swept_key_fails_before_anything_runs(tmp_path, write_recipe, cli):
    p = write_recipe(FAMILY + '\n[sweep]\n"module.alpha" = [0.0, 2.0]\n')
    res = cli("run", p, "--set", "module.alpha=5", "--output", tmp_path / "out")
    assert res.code == 1 and "the sweep varies module.alpha over [0, 2]" in res.err
    assert not (tmp_path / "out").exists()


# -- --grid ----------------------------------------------------------------------------------------------
def test_grid_replaces_a_swept_key_s_values_and_says_so():
    notes: list[str] = []
    variants = S.expand(QUICKSTART, grid={"module.alpha": [1.0, 3.0]}, notes=notes)
    assert [v.recipe.components["module"].alpha for v in variants] == [1.0, 3.0]
    assert notes == ["--grid module.alpha: [1, 3] replaces the recipe's sweep values [0, 6]"]


def test_the_readme_sweep_command_keeps_the_alpha_0_baseline():
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    found = re.search(r"igdm-kit sweep recipes/quickstart\.toml --grid (\S+)", readme)
    variants = S.expand(QUICKSTART, grid=S.parse_grid([found.group(1)]))
    assert variants[0].recipe.components["module"].alpha == 0.0  # the baseline the † marks test against


def test_grid_help_says_it_replaces(cli):
    res = cli("sweep", "--help")
    assert "replacing the recipe's [sweep] values" in " ".join(res.out.split())


# -- the size of a grid ----------------------------------------------------------------------------------
def test_a_grid_past_the_limit_is_refused_before_a_variant_is_built():
    with pytest.raises(RecipeError) as exc:
        S.expand(QUICKSTART, grid={"train.seed": list(range(257))})
    assert "2 × 257 = 514 variants, more than 256" in exc.value.message and "--max-variants 514" in exc.value.hint
    keys = ["train.seed", "train.lr", "train.momentum", "train.weight_decay", "train.epochs", "train.batch_size",
            "train.lr_decay", "attack.steps", "attack.step_size", "data.random_state"]
    with pytest.raises(RecipeError, match="= 2,097,152 variants"):
        S.expand(QUICKSTART, grid={k: [1, 2, 3, 4] for k in keys})  # 2 × 4^10: refused at once
    assert len(S.expand(QUICKSTART, grid={"train.seed": [0, 1, 2]}, max_variants=6)) == 6
    with pytest.raises(RecipeError, match="2 × 3 = 6 variants, more than 5"):
        S.expand(QUICKSTART, grid={"train.seed": [0, 1, 2]}, max_variants=5)


def test_the_cli_refuses_a_large_grid_and_expands_a_sweep_once(tmp_path, write_recipe, cli, monkeypatch):
    p = write_recipe(FAMILY + '\n[sweep]\n"module.alpha" = [0.0, 2.0]\n')
    res = cli("sweep", p, "--grid", "train.seed=0,1,2", "--max-variants", "5", "--output", tmp_path / "x")
    assert res.code == 1 and "2 × 3 = 6 variants, more than 5" in res.err
    calls = []
    real = S.expand
    monkeypatch.setattr(S, "expand", lambda *a, **k: calls.append(1) or real(*a, **k))
    res = cli("sweep", p, "--output", tmp_path / "family")
    assert res.code == 0, res.err
    assert len(calls) == 1


# -- --resume --------------------------------------------------------------------------------------------
def test_resume_of_a_folder_that_does_not_exist_is_an_error(tmp_path, write_recipe, cli):
    res = cli("run", write_recipe(TINY), "--output", tmp_path / "tyop", "--resume")
    assert res.code == 1 and "does not exist, so there is nothing to resume" in res.err
    assert not (tmp_path / "tyop").exists()


def test_resume_reaches_a_teacher_run_in_progress(tmp_path, write_recipe):
    """Stopped while its teacher trained, a run's own folder does not exist yet: --resume continues."""
    from igdm_kit._recipe import load
    from igdm_kit._storage.run_folder import check_resumable

    write_recipe(TINY + f'\n[output]\ndir = "{tmp_path / "teacher"}"\n', "teacher.toml")
    student = write_recipe(DIGITS_PGDAT.replace('name = "pgd-at"', 'name = "ard"')
                           + '\n[teacher]\nrecipe = "teacher.toml"\n', "student.toml")
    r = load(student)
    with pytest.raises(IgdmKitError, match="nothing to resume"):
        check_resumable(r, tmp_path / "student")
    (tmp_path / "teacher").mkdir()
    check_resumable(r, tmp_path / "student")


# -- ranges ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", ["-1", str(2**63)])
def test_seeds_out_of_range_are_refused_with_the_range(cli, seed):
    res = cli("eval", "--model", "missing.safetensors", "--seed", seed)
    assert res.code == 2 and "is not a seed from 0 to 9,223,372,036,854,775,807" in res.err


def test_numpy_seeds_are_checked_at_validation(write_recipe):
    from igdm_kit import _recipe as R

    with pytest.raises(RecipeError, match=r"data.random_state.*≥ 0, ≤ 4294967295"):
        R.load(write_recipe(DIGITS_PGDAT.replace('name = "digits"', 'name = "digits"\nrandom_state = -1', 1)))
    with pytest.raises(RecipeError, match="seed"):
        R.load(write_recipe(DIGITS_PGDAT.replace('attacks = ["clean"]', 'attacks = ["clean"]\n'
                                                 'shifts = [{ name = "corruptions", seed = 4294967296 }]')))


def test_an_evaluation_seed_numpy_cannot_take_is_one_line_for_corruptions():
    from igdm_kit._evaluation.shifts import Context
    from igdm_kit.factories import create_shift
    from igdm_kit.interfaces import DatasetInfo, Threat

    info = DatasetInfo(num_classes=10, in_channels=1, image_size=8)
    c = Context("digits", info, torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long), 2**40, Threat(), None, [])
    with pytest.raises(IgdmKitError, match="outside NumPy's 0 to 4294967295"):
        create_shift("corruptions", corruptions=["contrast"]).sets(c)


@pytest.mark.parametrize("severities", [[-1], [0], [6], [1, 7]])
def test_corruption_file_severities_out_of_1_to_5_are_refused(tmp_path, severities):
    """-1 read the fourth block and labelled it "-1"; 0 and 6 read nothing ("evaluation data is empty")."""
    from igdm_kit.factories import create_shift

    base = tmp_path / "CIFAR-10-C"
    base.mkdir()
    np.save(base / "fog.npy", np.zeros((10, 32, 32, 3), np.uint8))
    np.save(base / "labels.npy", np.zeros(10, np.int64))
    with pytest.raises(IgdmKitError, match="severities are integers 1 to 5") as exc:
        create_shift("corruption-files", root=str(tmp_path), corruptions=["fog"], severities=severities).sets(ctx())
    assert "\n" not in str(exc.value)


def test_corruption_file_severities_are_refused_in_a_recipe(write_recipe):
    from igdm_kit import _recipe as R

    with pytest.raises(RecipeError, match="severities are integers 1 to 5, not -1"):
        R.load(write_recipe(DIGITS_PGDAT.replace('attacks = ["clean"]', 'attacks = ["clean"]\nshifts = '
                                                 '[{ name = "corruption-files", severities = [-1] }]')))


# -- flags files -----------------------------------------------------------------------------------------
def _flags_file(path, flags: dict[str, torch.Tensor], n: int = 4):
    from safetensors.torch import save_file

    from igdm_kit._evaluation.runner import FLAGS_FORMAT

    meta = {"format": FLAGS_FORMAT, "n": n, "eps": 0.1, "threat": "Linf", "seed": 0,
            "labels": {k: k for k in flags}, "images_sha256": "0" * 64}
    save_file({k: v.to(torch.uint8).contiguous() for k, v in flags.items()}, str(path),
              metadata={"igdm_kit_flags": json.dumps(meta)})
    return path


@pytest.mark.parametrize(("flags", "match"), [
    ({"clean": torch.ones(2, 2), "worst": torch.ones(2, 2)}, r"clean has flags of shape \[2, 2\]"),
    ({"clean": torch.ones(3), "worst": torch.ones(3)}, "not one per image"),
    ({"clean": torch.tensor([1, 2, 0, 1]), "worst": torch.tensor([1, 1, 0, 1])}, "neither 0 nor 1"),
    ({"clean": torch.tensor([1, 0, 0, 1]), "worst": torch.tensor([1, 1, 0, 1])}, "worst case is not"),
])
def test_a_malformed_flags_file_is_refused_in_one_line(tmp_path, cli, flags, match):
    from igdm_kit._evaluation.runner import load_flags

    bad = _flags_file(tmp_path / "bad.safetensors", flags)
    with pytest.raises(IgdmKitError, match=match) as exc:
        load_flags(bad)
    assert "\n" not in exc.value.message
    good = _flags_file(tmp_path / "good.safetensors", {"clean": torch.ones(4), "worst": torch.ones(4)})
    res = cli("compare", good, bad)
    assert res.code == 1 and "is not a valid igdm-kit flags file" in res.err


# -- recipe show -----------------------------------------------------------------------------------------
def test_recipe_show_prints_what_the_dataset_decides(tmp_path, write_recipe, cli):
    from igdm_kit import _recipe as R

    for split in ("train", "test"):
        (tmp_path / "imgs" / split / "cat").mkdir(parents=True)
    p = write_recipe(f'[data]\nname = "image-folder"\nroot = "{tmp_path / "imgs"}"\n[student]\nmodel = "small-cnn"\n'
                     '[method]\nname = "pgd-at"\n')
    res = cli("recipe", "show", p)
    assert res.code == 0, res.err
    assert "# hflip = true (the image-folder dataset's default)" in res.out
    assert "# crop_padding = 4 (the image-folder dataset's default)" in res.out
    assert "# checkpoints = [\"last\"] (the default: results.json and model.safetensors are the last epoch)" \
        in res.out
    assert "(not set)" not in res.out.split("[student]")[0]
    # the comments are only comments: the shown recipe is the same recipe
    shown = write_recipe(res.out, "shown.toml")
    assert R.load(shown).digest() == R.load(p).digest()
    as_json = json.loads(cli("recipe", "show", p, "--json").out)["results"]
    assert as_json["effective_defaults"]["data"]["hflip"] == {"value": True,
                                                              "from": "the image-folder dataset's default"}


def test_an_linf_eps_above_the_pixel_range_is_refused_before_anything_loads(cli):
    res = cli("eval", "--model", "missing.safetensors", "--eps", "8")
    assert res.code == 1 and "exceeds the pixel range [0, 1]" in res.err and "8/255" in res.err
    res = cli("eval", "--model", "missing.safetensors", "--eps", "8", "--threat", "L2")  # an L2 radius may be 8
    assert res.code == 1 and "does not exist" in res.err


def test_recipe_show_prints_what_a_component_decides_itself(write_recipe, cli):
    """A plugin's own resolved default (``Options.effective_defaults``): a WRN's parameter layout follows its
    activation unless given."""
    p = write_recipe('[data]\nname = "digits"\n[student]\nmodel = "wrn-28-10"\nactivation = "silu"\n'
                     '[method]\nname = "pgd-at"\n')
    out = cli("recipe", "show", p).out
    assert '# layout = "deepmind" (the default for activation silu)' in out
    out = cli("recipe", "show", p, "--set", 'student.layout="trades"').out
    assert "# layout" not in out and 'layout = "trades"' in out


# -- defaults read from a checkpoint ----------------------------------------------------------------------
def test_an_l2_run_s_radius_is_not_taken_for_an_linf_one(tmp_path, cli):
    """A run evaluated at L2 ε = 0.5 recorded ``eval_eps = 0.5``; ``eval`` (L∞ by default) judged it at an L∞ ε
    of 0.5 — every pixel anywhere — instead of 8/255."""
    from igdm_kit._storage.checkpoint import save_model
    from igdm_kit.factories import create_model

    meta = {"model": "small-cnn", "model_options": {"width": 4}, "num_classes": 10, "in_channels": 1,
            "image_size": 8, "mean": None, "std": None, "dataset": {"name": "digits", "options": {}},
            "eval_eps": 0.5, "eval_threat": "L2"}
    path = save_model(tmp_path / "m.safetensors", create_model("small-cnn", num_classes=10, in_channels=1,
                                                                image_size=8, width=4), meta)
    res = cli("eval", "--model", path, "--attacks", "clean", "--limit", "4", "--no-progress")
    assert res.code == 0, res.err
    assert "Linf ε = 8/255" in res.err
    res = cli("eval", "--model", path, "--attacks", "clean", "--limit", "4", "--threat", "L2", "--no-progress")
    assert "L2 ε = 0.5" in res.err


def test_a_limit_that_keeps_only_some_classes_says_so(tmp_path, write_recipe, cli):
    """Image folders are read class by class: the first 40 digits of folders 0…9 are all zeros."""
    from test_teacher_data import export_digits

    export_digits(tmp_path / "imgs", [str(d) for d in range(10)])
    p = write_recipe(TINY.replace('name = "digits"\ntrain_limit = 256',
                                  f'name = "image-folder"\nroot = "{tmp_path / "imgs"}"\nimage_size = 8\n'
                                  'grayscale = true\ntrain_limit = 256\ntest_limit = 40'))
    res = cli("run", p, "--output", tmp_path / "run")
    assert res.code == 0, res.err
    text = " ".join(res.err.split())
    assert "data.train_limit = 256 keeps the first images only, which hold 2 of the 10 classes" in text
    assert "data.test_limit = 40 keeps the first images only, which hold 2 of the 10 classes" in text
    assert "data: crop_padding = 1, hflip = true (the image-folder dataset's augmentation defaults" in text
    res = cli("eval", "--model", tmp_path / "run" / "model.safetensors", "--attacks", "clean", "--limit", "40",
              "--no-progress")
    assert "--limit 40 keeps the first test images only, which hold 2 of the 10 classes" in " ".join(res.err.split())
