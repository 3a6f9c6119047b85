"""The command line: help without torch, JSON listing, one-line errors with exit code 1."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import DIGITS_PGDAT, run_cli_subprocess


def test_help_does_not_import_torch():
    code = ("import sys\nfrom igdm_kit._cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "run" in out.stdout and "recipe" in out.stdout
    assert out.stdout.strip().endswith("NO-TORCH"), out.stdout[-300:]


def test_python_dash_m_works():
    res = run_cli_subprocess("--help")
    assert res.returncode == 0 and "igdm-kit" in res.stdout


def test_plugins_list_json_lists_builtins_and_example_plugin(cli):
    res = cli("plugins", "list", "--json")
    assert res.code == 0
    rows = json.loads(res.out)
    assert {"kind", "name", "plugin"} == set(rows[0])
    names = {(r["kind"], r["name"]) for r in rows}
    assert ("method", "pgd-at") in names and ("dataset", "digits") in names and ("attack", "pgd") in names
    mart = [r for r in rows if r["name"] == "mart"]
    assert mart == [{"kind": "method", "name": "mart", "plugin": "mart"}]


def test_recipe_check_and_show(cli, write_recipe):
    p = write_recipe(DIGITS_PGDAT)
    assert cli("recipe", "check", p).code == 0
    res = cli("recipe", "show", p, "--set", "train.seed=7")
    assert res.code == 0 and "seed = 7" in res.out and 'bn_mode = "eval"' in res.out


@pytest.mark.parametrize("mutate, words", [
    (lambda t: t + "\nunknown_top = 1\n", ["unknown_top", "unknown key"]),
    (lambda t: t.replace('name = "pgd-at"', 'name = "pgd-att"'), ["method.name", "pgd-at"]),
    (lambda t: t.replace("epochs = 1", "epochs = 'one'"), ["train.epochs"]),
    (lambda t: t + "\n[[[\n", ["not valid TOML"]),
])
def test_bad_recipes_exit_1_with_one_line(cli, write_recipe, mutate, words):
    p = write_recipe(mutate(DIGITS_PGDAT))
    res = cli("recipe", "check", p)
    assert res.code == 1
    first = res.err.strip().splitlines()[0]
    assert first.startswith("error: ") and all(w in res.err for w in words)
    assert "Traceback" not in res.err
    assert cli("run", p).code == 1  # run refuses the same recipe before anything trains


def test_missing_recipe_file(cli, tmp_path):
    res = cli("run", tmp_path / "nope.toml")
    assert res.code == 1 and "nope.toml" in res.err and "does not exist" in res.err


def test_debug_env_shows_traceback(write_recipe):
    p = write_recipe(DIGITS_PGDAT.replace('name = "pgd-at"', 'name = "nope"'))
    res = run_cli_subprocess("recipe", "check", p, env={"IGDM_KIT_DEBUG": "1"})
    assert res.returncode != 0 and "Traceback" in res.stderr
    res = run_cli_subprocess("recipe", "check", p)
    assert res.returncode == 1 and "Traceback" not in res.stderr


def test_checkpoint_labels_disambiguate_same_file_names():
    from igdm_kit._cli.analyze import _label

    paths = ["runs/a/model.safetensors", "runs/b/model.safetensors", "runs/x/epoch_003.safetensors"]
    assert [_label(p, paths) for p in paths] == ["a/model.safetensors", "b/model.safetensors",
                                                 "epoch_003.safetensors"]


def test_eval_defaults_to_the_radius_recorded_in_the_checkpoint(tmp_path, cli):
    from igdm_kit._cli.specs import eps_text
    from igdm_kit._storage.checkpoint import save_model
    from igdm_kit.factories import create_model

    meta = {"model": "small-cnn", "model_options": {"width": 4}, "num_classes": 10, "in_channels": 1,
            "image_size": 8, "mean": None, "std": None, "dataset": {"name": "digits", "options": {}},
            "eval_eps": 0.1}
    path = tmp_path / "m.safetensors"
    save_model(path, create_model("small-cnn", num_classes=10, in_channels=1, image_size=8, width=4), meta)
    res = cli("eval", "--model", path, "--attacks", "clean,fgsm", "--limit", "8", "--json", "--no-progress")
    assert res.code == 0, res.err
    assert json.loads(res.out)["results"]["eps"] == 0.1 and "ε = 0.1" in res.err
    res = cli("eval", "--model", path, "--attacks", "clean", "--limit", "8", "--eps", "8/255", "--json")
    assert json.loads(res.out)["results"]["eps"] == pytest.approx(8 / 255)
    assert eps_text(8 / 255) == "8/255" and eps_text(0.1) == "0.1" and eps_text(0.0) == "0"


def test_version(cli):
    import igdm_kit

    res = cli("--version")
    assert res.code == 0 and res.out.strip() == f"igdm-kit {igdm_kit.__version__}"


def test_recipe_check_warns_about_a_missing_teacher_file(cli, write_recipe, tmp_path):
    text = DIGITS_PGDAT.replace('name = "pgd-at"', 'name = "ard"') + \
        f'\n[teacher]\ncheckpoint = "{tmp_path / "later.pt"}"\nmodel = "small-cnn"\n'
    res = cli("recipe", "check", write_recipe(text))
    assert res.code == 0 and "ok" in res.out and "does not exist yet" in res.err
