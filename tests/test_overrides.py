"""`--set` speaks the rest of the CLI's language: comma lists as --grid takes them, quoted dotted keys, and
a wrong value's hint names the expected type with an example."""

from __future__ import annotations

import pytest
from conftest import DIGITS_PGDAT

from igdm_kit import _recipe as R
from igdm_kit.errors import RecipeError


@pytest.mark.parametrize("item, keys, value", [
    ("train.epochs=5", ["train", "epochs"], 5),
    ("eval.attacks=clean,pgd20", ["eval", "attacks"], ["clean", "pgd20"]),
    ("eval.attacks=clean,", ["eval", "attacks"], ["clean"]),
    ('eval.attacks=["clean"]', ["eval", "attacks"], ["clean"]),
    ("train.milestones=10,13", ["train", "milestones"], [10, 13]),
    ("attack.eps=8/255", ["attack", "eps"], "8/255"),
    ('sweep."module.alpha"=[6.0]', ["sweep", "module.alpha"], [6.0]),
    ("sweep.'module.alpha'=1,3", ["sweep", "module.alpha"], [1, 3]),
    ('data.root="a=b,c"', ["data", "root"], "a=b,c"),
])
def test_set_parses_like_grid(item, keys, value):
    assert R.parse_override(item) == (keys, value)


def test_set_and_grid_read_a_comma_list_alike():
    from igdm_kit._sweep.sweep import parse_grid

    assert parse_grid(["module.alpha=1,3.5,x"])["module.alpha"] == R.parse_override("k=1,3.5,x")[1]


def test_set_lists_reach_the_recipe(write_recipe):
    r = R.load(write_recipe(DIGITS_PGDAT), ["eval.attacks=clean,fgsm", "train.milestones=1,"])
    assert r.model.eval.attacks == ["clean", "fgsm"] and r.model.train.milestones == [1]


def test_a_quoted_dotted_sweep_key(write_recipe):
    from igdm_kit._sweep.sweep import expand

    p = write_recipe(DIGITS_PGDAT.replace('name = "pgd-at"', 'name = "pgd-at"\n[module]\nname = "trades-reg"'))
    variants = expand(p, ['sweep."module.alpha"=[0.5, 2.0]'])
    assert [v.recipe.components["module"].alpha for v in variants] == [0.5, 2.0]
    with pytest.raises(RecipeError, match=r"^sweep\.module\.alpha: must be a non-empty list"):
        expand(p, ['sweep."module.alpha"=[]'])


@pytest.mark.parametrize("item, message, hint", [
    ("train.epochs=x", "train.epochs: Input should be a valid integer", "expected integer > 0|e.g. train.epochs=200"),
    ("attack.eps=big", "attack.eps:", 'fraction such as "8/255", e.g. attack.eps='),
    ("attack.bn_mode=x", "attack.bn_mode:", 'expected "eval" or "train", e.g. attack.bn_mode=eval'),
    ("train.lr=-1", "train.lr:", "expected number > 0|e.g. train.lr=0.1"),
    ("eval.attacks=clean", "eval.attacks: Input should be a valid list", "one item: eval.attacks=clean,"),
    ("train.train_limit=3", "train.train_limit: unknown key", "did you mean 'data.train_limit'?"),
    ("student.width=wide", "student.width:", "expected integer > 0, ≤ 1024, e.g. student.width=32"),
])
def test_a_wrong_value_hint_shows_the_type_and_an_example(write_recipe, item, message, hint):
    with pytest.raises(RecipeError) as exc:
        R.load(write_recipe(DIGITS_PGDAT), [item])
    assert exc.value.message.startswith(message), exc.value.message
    assert all(part in exc.value.hint for part in hint.split("|")), exc.value.hint
    assert "recipe show" not in exc.value.hint


def test_a_bad_key_is_one_line(write_recipe):
    with pytest.raises(RecipeError, match="is not a dotted key"):
        R.load(write_recipe(DIGITS_PGDAT), ["train..epochs=3"])
    with pytest.raises(RecipeError, match="not of the form dotted.key=value"):
        R.load(write_recipe(DIGITS_PGDAT), ['train."epochs=3'])  # the quote never closes: no `=` outside it
