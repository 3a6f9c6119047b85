"""Paths and names are text, never Rich markup (#27): square brackets in a run folder or a recipe's name
print as they are, and never end a run with Rich's ``MarkupError`` — on a terminal (Rich's bars) or not."""

from __future__ import annotations

import pytest
from conftest import TINY, run_cli_subprocess


@pytest.mark.parametrize("terminal", [False, True], ids=["lines", "rich-bars"])
def test_brackets_in_the_name_and_the_folder_print_as_text(tmp_path, write_recipe, terminal):
    recipe = write_recipe(TINY.replace('name = "t"', 'name = "[/]"').replace("epochs = 1", "epochs = 2"))
    out = tmp_path / "runs" / "[bold]x"
    env = {"FORCE_COLOR": "1", "COLUMNS": "200"} if terminal else {"IGDM_KIT_PROGRESS_INTERVAL": "0"}
    res = run_cli_subprocess("run", recipe, "--output", out, env=env)
    assert res.returncode == 0, res.stderr
    assert "MarkupError" not in res.stderr and "Traceback" not in res.stderr
    assert "[bold]x" in res.stderr + res.stdout  # the folder as it is, not "runs/x" in bold


def test_a_run_in_a_bracketed_folder_resumes(tmp_path, write_recipe):
    """The red team's case: a run in ``--output 'r[/]s'`` could never be resumed (MarkupError at the
    "resuming" line)."""
    recipe = write_recipe(TINY.replace("epochs = 1", "epochs = 2"))
    out = tmp_path / "r[/]s"
    assert run_cli_subprocess("run", recipe, "--output", out).returncode == 0
    (out / "results.json").unlink()  # as if stopped in the final evaluation
    res = run_cli_subprocess("run", recipe, "--output", out, "--resume")
    assert res.returncode == 0, res.stderr
    assert "MarkupError" not in res.stderr and str(out) in res.stderr
