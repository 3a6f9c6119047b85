"""Recipe parsing and whole-recipe validation: dotted paths, close matches, extends, overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import DIGITS_PGDAT

from igdm_kit import _recipe as R
from igdm_kit.errors import RecipeError


def test_valid_recipe_resolves_defaults(write_recipe):
    r = R.load(write_recipe(DIGITS_PGDAT))
    res = r.resolved()
    assert res["attack"]["name"] == "pgd"  # the method's default attack
    assert res["attack"]["eps"] == 0.1 and res["attack"]["bn_mode"] == "eval"
    assert res["student"] == {"model": "small-cnn", "width": 8}
    assert res["train"]["momentum"] == 0.9 and res["train"]["weight_decay"] == 5e-4
    # the resolved recipe is itself a valid recipe with the same digest
    again = R.validate(R.tomllib.loads(R.to_toml(res)))
    assert again.digest() == r.digest()


@pytest.mark.parametrize("edit, path, words", [
    ("bogus = 1\n", "bogus", "unknown key"),
    ("[train]\nepochs = 'many'\n", "train.epochs", "integer"),
    ("[method]\nname = 'pgd-att'\n", "method.name", "did you mean 'pgd-at'"),
    ("[student]\nmodel = 'small-cnn'\nwidht = 3\n", "student.widht", "unknown key"),
    ("[attack]\neps = 'eight'\n", "attack.eps", "number"),
    ("[train]\nmilestones = [5, 3]\n", "train", "increasing"),
])
def test_bad_recipes_name_the_dotted_key(write_recipe, edit, path, words):
    base = R.tomllib.loads(DIGITS_PGDAT)
    raw = R.merge(base, R.tomllib.loads(edit))
    with pytest.raises(RecipeError) as exc:
        R.validate(raw)
    msg = str(exc.value)
    assert msg.startswith(path + ":") and words in msg


def test_missing_and_non_toml_files(tmp_path, write_recipe):
    with pytest.raises(RecipeError, match="does not exist"):
        R.load(tmp_path / "nope.toml")
    with pytest.raises(RecipeError, match="not valid TOML"):
        R.load(write_recipe("[data\nname = 1"))


def test_fraction_strings_for_radii(write_recipe):
    r = R.load(write_recipe(DIGITS_PGDAT), ["attack.eps=\"8/255\""])
    assert r.components["attack"].eps == pytest.approx(8 / 255)


def test_extends_merges_and_replaces_sections_that_change_component(write_recipe):
    write_recipe(DIGITS_PGDAT + "\n[module]\nname = 'trades-reg'\nalpha = 3\n", name="base.toml")
    child = write_recipe('extends = "base.toml"\n[train]\nepochs = 2\n[module]\nalpha = 7\n', name="c.toml")
    r = R.load(child)
    assert r.model.train.epochs == 2 and r.model.train.batch_size == 64
    assert r.components["module"].alpha == 7
    other = write_recipe('extends = "base.toml"\n[module]\nname = "igdm-trades-like"\n', name="d.toml")
    # another component: the parent's module options (alpha = 3) belong to trades-reg and are dropped
    assert R.load(other).components["module"].alpha == 0


def test_extends_cycle_is_an_error(write_recipe):
    write_recipe('extends = "b.toml"\n', name="a.toml")
    b = write_recipe('extends = "a.toml"\n', name="b.toml")
    with pytest.raises(RecipeError, match="deeper"):
        R.load(b)


def test_overrides_are_toml_values(write_recipe):
    r = R.load(write_recipe(DIGITS_PGDAT), ["train.epochs=3", "train.milestones=[1,2]", "output.dir=out"])
    assert r.model.train.epochs == 3 and r.model.train.milestones == [1, 2]
    assert r.default_output_dir() == Path.cwd() / "out"  # a --set path is relative to the working directory
    with pytest.raises(RecipeError, match="dotted.key=value"):
        R.parse_override("no-equals-sign")


def test_teacher_is_required_when_a_component_needs_one(write_recipe):
    text = DIGITS_PGDAT + "\n[module]\nname = 'igdm'\nalpha = 1\n"
    with pytest.raises(RecipeError) as exc:
        R.load(write_recipe(text))
    assert str(exc.value).startswith("teacher:") and "igdm" in str(exc.value)


def test_teacher_needs_exactly_one_source(write_recipe):
    text = DIGITS_PGDAT + "\n[teacher]\nmodel = 'small-cnn'\n"
    with pytest.raises(RecipeError, match="exactly one of"):
        R.load(write_recipe(text))


def test_digest_ignores_output_but_not_training(write_recipe):
    p = write_recipe(DIGITS_PGDAT)
    assert R.load(p).digest() == R.load(p, ["output.dir=elsewhere"]).digest()
    assert R.load(p).digest() != R.load(p, ["train.seed=1"]).digest()


@pytest.mark.parametrize("edit, message, hint", [
    ({"train": {"epochz": 3}}, "train.epochz: unknown key", "did you mean 'epochs'?"),
    ({"student": {"widht": 3}}, "student.widht: unknown key", "did you mean 'width'?"),
    ({"dat": {"name": "digits"}}, "dat: unknown key", "did you mean 'data'?"),
    ({"eval": {"attacks": "clean,pgd20"}}, "eval.attacks:", "TOML list"),
    ({"data": 3}, "data: must be a table", ""),
])
def test_validation_messages_point_at_the_fix(edit, message, hint):
    raw = R.merge(R.tomllib.loads(DIGITS_PGDAT), edit)
    with pytest.raises(RecipeError) as exc:
        R.validate(raw)
    assert exc.value.message.startswith(message) and hint in (exc.value.hint or "")
    assert "DataSection" not in str(exc.value)


def test_base_files_say_they_are_bases(tmp_path):
    base = tmp_path / "_base.toml"
    base.write_text('[data]\nname = "digits"\n')
    with pytest.raises(RecipeError) as exc:
        R.load(base)
    assert "bases for `extends`" in exc.value.hint


def test_show_lists_unset_keys_as_comments(write_recipe):
    text = R.to_toml(R.load(write_recipe(DIGITS_PGDAT + "\n[module]\nname = 'trades-reg'\n")).resolved())
    assert "# ramp_epochs = (not set)" in text and "# limit = (not set)" in text


#: digests of recipes as igdm-kit computed them before pgd's `start` option existed (main @ efa7c91); their
#: finished runs (teachers reused by many students, sweeps) must keep being found
DIGESTS_BEFORE_PGD_START = {
    "quickstart_teacher.toml": "37a5aa1c983f82c59372ad2a0dbbff8d5e45c2d0e0a6dbfe9a8cb7b069e5c521",
}


def test_an_option_added_later_leaves_the_digest_at_its_default(write_recipe):
    """#24: pgd gained `start` (uniform | gaussian); at "uniform" it is left out of the digest (AddedLater),
    so every pgd recipe written before keeps its digest; "gaussian" is another recipe."""
    recipes = Path(__file__).parent.parent / "recipes"
    r = R.load(recipes / "quickstart_teacher.toml")
    assert r.digest() == DIGESTS_BEFORE_PGD_START["quickstart_teacher.toml"]
    assert r.resolved()["attack"]["start"] == "uniform"  # still written to the run's recipe.toml
    explicit = R.load(recipes / "quickstart_teacher.toml", ["attack.start=uniform"])
    gaussian = R.load(recipes / "quickstart_teacher.toml", ["attack.start=gaussian"])
    assert explicit.digest() == r.digest() != gaussian.digest()
