"""The recipes' digests do not change when the code adds options: a finished run is recognised as finished
(its manifest's digest) only while its recipe resolves to the same digest. ``data/recipe_digests.json`` holds
the digest of every recipe of ``recipes/`` as of 2026-12-04 (before the recent methods' options, the peer, the
teachers by role and SWA were added); the digest leaves out where files lie, so it is the same in any clone.
A change that must alter a digest updates the file in the same commit, saying why in the CHANGELOG."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import RECIPES

from igdm_kit import _recipe as R

GOLDEN = json.loads((Path(__file__).parent / "data" / "recipe_digests.json").read_text())


def test_the_golden_file_covers_the_recipes_of_its_day():
    assert len(GOLDEN) > 150 and "quickstart.toml" in GOLDEN


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_an_existing_recipe_keeps_its_digest(name):
    path = RECIPES / name
    if not path.is_file():
        pytest.skip(f"{name} was removed")
    assert R.load(path).digest() == GOLDEN[name]
