"""One rule for paths: a path a recipe file writes is relative to that file (an `extends` base keeps its
own folder); a --set path is relative to the working directory; a default stays as written. `recipe check`
warns about missing data; a failed download leaves nothing behind."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import DIGITS_PGDAT

from igdm_kit import _recipe as R
from igdm_kit.errors import DataError

FOLDER_RECIPE = """
name = "own"
[data]
name = "image-folder"
root = "imgs"
[student]
model = "small-cnn"
[method]
name = "ard"
[teacher]
checkpoint = "../teachers/t.safetensors"
[output]
dir = "out"
"""


def test_paths_are_relative_to_the_file_that_writes_them(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b" / "bases"
    a.mkdir()
    b.mkdir(parents=True)
    (a / "r.toml").write_text(FOLDER_RECIPE)
    monkeypatch.chdir(tmp_path / "b")  # the working directory plays no part
    r = R.load(a / "r.toml")
    assert r.components["data"].root == str(a / "imgs")
    assert r.model.teacher.checkpoint == str(tmp_path / "teachers" / "t.safetensors")
    assert r.default_output_dir() == a / "out"
    # a base in another folder keeps its own folder for what it writes; the child's own keys keep theirs
    (b / "_base.toml").write_text(FOLDER_RECIPE.replace('root = "imgs"', 'root = "base-imgs"'))
    (a / "child.toml").write_text('extends = "../b/bases/_base.toml"\nname = "child"\n[output]\ndir = "mine"\n')
    child = R.load(a / "child.toml")
    assert child.components["data"].root == str(b / "base-imgs")
    assert child.model.teacher.checkpoint == str(tmp_path / "b" / "teachers" / "t.safetensors")
    assert child.default_output_dir() == a / "mine"


def test_set_paths_are_relative_to_the_working_directory_and_defaults_stay(tmp_path, monkeypatch):
    (tmp_path / "r.toml").write_text(FOLDER_RECIPE)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    r = R.load(tmp_path / "r.toml", ["data.root=mine", "output.dir=runs/x"])
    assert r.components["data"].root == str(elsewhere / "mine")
    assert r.default_output_dir() == elsewhere / "runs" / "x"
    (tmp_path / "plain.toml").write_text(FOLDER_RECIPE.replace('name = "image-folder"\nroot = "imgs"',
                                                               'name = "cifar10"'))
    assert R.load(tmp_path / "plain.toml").components["data"].root == "data"  # the default, as written


def test_where_a_clone_lies_does_not_change_the_digest(tmp_path):
    for where in ("one", "two/deeper"):
        (tmp_path / where).mkdir(parents=True)
        (tmp_path / where / "r.toml").write_text(FOLDER_RECIPE)
    one, two = (R.load(tmp_path / w / "r.toml") for w in ("one", "two/deeper"))
    assert one.components["data"].root != two.components["data"].root
    assert one.digest() == two.digest()


def test_recipe_check_warns_about_missing_data(cli, write_recipe, tmp_path):
    text = DIGITS_PGDAT.replace('name = "digits"', f'name = "cifar10"\nroot = "{tmp_path / "nothing"}"')
    res = cli("recipe", "check", write_recipe(text))
    assert res.code == 0 and "ok" in res.out
    assert "warning: CIFAR-10 not found" in res.err and "download = true" in res.err
    res = cli("recipe", "check", write_recipe(text.replace("[student]", "download = true\n[student]")))
    assert res.code == 0 and "warning" not in res.err  # a download would fetch them
    res = cli("recipe", "check", write_recipe(DIGITS_PGDAT))
    assert res.code == 0 and "warning" not in res.err
    mnist = DIGITS_PGDAT.replace('name = "digits"', f'name = "mnist"\nsource = "files"\nroot = "{tmp_path}"')
    res = cli("recipe", "check", write_recipe(mnist))
    assert res.code == 0 and "warning: MNIST files not found" in res.err


def test_recipe_check_finds_an_image_folder_relative_to_the_recipe(cli, tmp_path):
    from PIL import Image

    recipe = tmp_path / "exp" / "r.toml"
    recipe.parent.mkdir()
    recipe.write_text(FOLDER_RECIPE.replace("[teacher]\ncheckpoint", "[teacher]\nmodel = \"small-cnn\"\ncheckpoint"))
    res = cli("recipe", "check", recipe)
    assert res.code == 0 and "image folder" in res.err and str(tmp_path / "exp" / "imgs") in res.err
    for split in ("train", "test"):
        (tmp_path / "exp" / "imgs" / split / "cat").mkdir(parents=True)
        Image.new("RGB", (32, 32)).save(tmp_path / "exp" / "imgs" / split / "cat" / "0.png")
    res = cli("recipe", "check", recipe)
    assert res.code == 0 and "image folder" not in res.err, res.err


@pytest.fixture
def no_network(monkeypatch):
    """Every download goes to a closed local port: the real download code runs and fails at once."""
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize("name, options", [("cifar10", {}), ("svhn", {}), ("tiny-imagenet", {}),
                                           ("mnist", {"source": "files"})])
def test_a_failed_download_leaves_nothing_behind(name, options, tmp_path, no_network):
    from igdm_kit.factories import create_dataset

    root = tmp_path / "fresh" / "data"
    with pytest.raises(DataError, match="failed"):
        create_dataset(name, root=str(root), download=True, **options).load("test")
    assert not (tmp_path / "fresh").exists()
    kept = tmp_path / "mine"  # a folder that was there keeps what it held, and only that
    kept.mkdir()
    (kept / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="failed"):
        create_dataset(name, root=str(kept), download=True, **options).load("test")
    assert sorted(p.name for p in kept.iterdir()) == ["notes.txt"]
    shutil.rmtree(kept)


def test_missing_data_is_the_same_line_from_check_and_load(tmp_path):
    from igdm_kit.factories import create_dataset

    ds = create_dataset("svhn", root=str(tmp_path / "none"))
    with pytest.raises(DataError) as checked:
        ds.check()
    with pytest.raises(DataError) as loaded:
        ds.load("train")
    assert checked.value.message == loaded.value.message and "train_32x32.mat is missing" in loaded.value.message
    assert Path(tmp_path / "none").exists() is False
