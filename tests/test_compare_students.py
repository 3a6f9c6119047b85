"""``analyze alignment|pointwise`` with several students against one teacher: each student's numbers are
its own (the same as judged alone, on the same images and noise), a line per student, one overlaid figure."""

from __future__ import annotations

import json

import pytest
from test_cli_eval import _save


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("students")
    return [_save(folder / name / "model.safetensors", train_steps=steps, seed=seed)
            for name, steps, seed in (("teacher", 40, 0), ("a", 10, 1), ("b", 20, 2))]


@pytest.mark.parametrize("analysis", ["alignment", "pointwise"])
def test_several_students_are_each_judged_as_alone(models, cli, tmp_path, analysis):
    teacher, a, b = models
    extra = ["--steps", "2"] if analysis == "pointwise" else []
    both = cli("analyze", analysis, "-s", a, "-s", b, "-t", teacher, "--limit", "30", "--json", "--no-progress",
               "--plot", tmp_path / "both.png", *extra)
    assert both.code == 0, both.err
    out = json.loads(both.out)["results"]
    alone = [json.loads(cli("analyze", analysis, "-s", s, "-t", teacher, "--limit", "30", "--json", "--no-progress",
                            *extra).out)["results"] for s in (a, b)]
    assert [s["student"] for s in out["students"]] == [str(a), str(b)]
    keys = ("gd", "gc", "distance", "cosine") if analysis == "alignment" else ("uniform", "adversarial")
    for got, want in zip(out["students"], alone, strict=True):
        assert {k: got[k] for k in keys} == {k: want[k] for k in keys}
    assert {k: out[k] for k in keys} == {k: alone[0][k] for k in keys}  # the first at the top level, as alone
    assert "students" not in alone[0] and (tmp_path / "both.png").read_bytes()[:4] == b"\x89PNG"
    table = cli("analyze", analysis, "-s", a, "-s", b, "-t", teacher, "--limit", "30", "--no-progress", *extra)
    assert table.code == 0 and "a/model.safetensors" in table.out and "b/model.safetensors" in table.out
