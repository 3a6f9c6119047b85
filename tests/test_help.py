"""Help a new user can read: flags shown as flags, 80 columns used well, defaults whole; `plugins list`
within 100 columns; `plugins show NAME` prints a component's description and options."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def _help(*args: str) -> str:
    env = {**os.environ, "COLUMNS": "80"}
    out = subprocess.run([sys.executable, "-m", "igdm_kit", *args, "--help"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize("command", [("run",), ("eval",), ("sweep",), ("analyze", "linearity"), ()])
def test_help_at_80_columns(command):
    text = _help(*command)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "<bool>" not in text and "--help" in text
    if command == ("eval",):
        assert "clean,fgsm,pgd20,cw,autoattack" in text  # the default, whole
        assert "--json " in text and "--progress / --no-progress" in text
    if command == ():
        assert "--threads N" in text and "IGDM_KIT_THREADS" in text


def test_plugins_list_fits_100_columns(cli):
    res = cli("plugins", "list")
    assert res.code == 0
    assert max(len(line) for line in res.out.splitlines()) <= 100
    assert "plugins show NAME" in res.out


def test_plugins_show_prints_the_options_of_a_component(cli):
    from igdm_kit._plugins.manager import registry

    res = cli("plugins", "show", "ard", "--json")
    assert res.code == 0, res.err
    (shown,) = json.loads(res.out)["results"]
    fields = registry("method").get("ard").Options.model_fields  # oracle: the Options model itself
    assert [o["name"] for o in shown["options"]] == list(fields)
    by_name = {o["name"]: o for o in shown["options"]}
    assert by_name["temperature"]["default"] == str(fields["temperature"].default).rstrip("0").rstrip(".")
    assert by_name["temperature"]["type"] == "number > 0"
    assert by_name["alpha_ard"]["description"] == fields["alpha_ard"].description
    assert shown["facts"] == {"default attack": "pgd", "needs a teacher": "yes",
                              "weights the module's samples": "no"}
    text = cli("plugins", "show", "ard").out
    assert "alpha_ard" in text and "temperature" in text and '[method] name = "ard"' in text


def test_plugins_show_a_name_of_two_kinds_and_an_unknown_name(cli):
    res = cli("plugins", "show", "adaad", "--json")
    assert [e["kind"] for e in json.loads(res.out)["results"]] == ["method", "attack"]
    res = cli("plugins", "show", "adaad", "--kind", "attack", "--json")
    (attack,) = json.loads(res.out)["results"]
    eps = next(o for o in attack["options"] if o["name"] == "eps")
    assert eps["default"] == '"8/255"' and "fraction" in eps["type"]
    res = cli("plugins", "show", "ardd")
    assert res.code == 1 and "did you mean 'ard'" in res.err
    res = cli("plugins", "show", "mart")  # a third party's component, through its Options alone
    assert res.code == 0 and "beta" in res.out and "plugin: mart" not in res.out and "(mart;" in res.out


def test_plugins_show_works_for_every_registered_component(cli):
    """Every kind, built-in or third party: exit 0 and every option of its Options model listed."""
    from igdm_kit._plugins.manager import all_entries

    for e in all_entries():
        res = cli("plugins", "show", e.name, "--kind", e.kind, "--json")
        assert res.code == 0, (e.kind, e.name, res.err)
        (shown,) = json.loads(res.out)["results"]
        assert [o["name"] for o in shown["options"]] == list(e.options_model.model_fields), (e.kind, e.name)
        assert all("Annotated" not in o["type"] and o["type"] for o in shown["options"]), shown["options"]
    text = cli("plugins", "show", "pgd20").out
    assert '[eval] attacks = ["pgd20", ...]' in text and "threat models: Linf" in text
