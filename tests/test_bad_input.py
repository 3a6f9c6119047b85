"""Bad input anywhere gets one clear line and exit code 1, and loses nothing already written."""

from __future__ import annotations

import errno

import pytest
from conftest import DIGITS_PGDAT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from igdm_kit import _recipe as R
from igdm_kit.errors import IgdmKitError

toml_scalars = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False),
                         st.booleans(), st.text(max_size=12), st.lists(st.integers(-5, 500), max_size=4))
keys = st.sampled_from(["data.name", "data.train_limit", "student.model", "student.width", "method.name",
                        "method.beta", "attack.eps", "attack.steps", "attack.bn_mode", "train.epochs",
                        "train.lr", "train.milestones", "train.batch_size", "eval.attacks", "eval.limit",
                        "module.name", "module.alpha", "teacher.checkpoint", "bogus.key", "output.dir"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(keys, toml_scalars, max_size=4))
def test_fuzzed_recipes_validate_or_fail_with_a_recipe_error(edits):
    """Whatever the values, validation either succeeds or raises a one-line IgdmKitError."""
    raw = R.tomllib.loads(DIGITS_PGDAT)
    try:
        for k, v in edits.items():
            section, key = k.split(".")
            if not isinstance(raw.get(section, {}), dict):
                raw[section] = {}
            raw.setdefault(section, {})[key] = v
        R.validate(raw)
    except IgdmKitError as exc:
        assert "\n" not in exc.message and exc.message


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_fuzzed_toml_text_never_crashes(tmp_path_factory, text):
    p = tmp_path_factory.mktemp("fuzz") / "r.toml"
    p.write_text(text, encoding="utf-8")
    try:
        R.load(p)
    except IgdmKitError as exc:
        assert exc.message


def test_binary_file_as_recipe(tmp_path, cli):
    p = tmp_path / "model.toml"
    p.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    res = cli("recipe", "check", p)
    assert res.code == 1 and "model.toml" in res.err and "Traceback" not in res.err


def test_unwritable_output_folder(tmp_path, write_recipe, cli):
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    res = cli("run", write_recipe(DIGITS_PGDAT), "--output", blocker / "run")
    assert res.code == 1 and "a-file" in res.err
    assert blocker.read_text() == "keep me"


def test_full_disk_during_checkpoint_write_keeps_previous(tmp_path, monkeypatch):
    import safetensors.torch

    from igdm_kit._storage.checkpoint import load_model, save_model
    from igdm_kit.factories import create_model

    meta = {"model": "small-cnn", "model_options": {"width": 4}, "num_classes": 10, "in_channels": 1,
            "image_size": 8, "mean": None, "std": None}
    model = create_model("small-cnn", num_classes=10, in_channels=1, image_size=8, width=4)
    path = tmp_path / "last.safetensors"
    save_model(path, model, meta)
    before = path.read_bytes()

    def full_disk(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(OSError):
        save_model(path, model, meta)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.safetensors"]  # no temporary left behind
    load_model(path)


def test_overwrite_never_deletes_a_folder_that_is_not_a_run(tmp_path, write_recipe, cli):
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    res = cli("run", write_recipe(DIGITS_PGDAT), "--output", precious, "--overwrite")
    assert res.code == 1 and "holds no igdm-kit run" in res.err
    assert (precious / "thesis.tex").read_text() == "years of work"


def test_output_that_is_a_file(tmp_path, write_recipe, cli):
    f = tmp_path / "out.txt"
    f.write_text("x")
    res = cli("run", write_recipe(DIGITS_PGDAT), "--output", f)
    assert res.code == 1 and "is a file" in res.err and f.read_text() == "x"


def test_atomic_writes_are_readable_by_others(tmp_path):
    import os
    import stat

    from igdm_kit._storage.io import atomic_write_text

    old = os.umask(0o022)
    try:
        p = atomic_write_text(tmp_path / "results.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o644


def test_sweep_that_is_not_a_table(write_recipe, cli):
    p = write_recipe(DIGITS_PGDAT.replace('name = "t"', 'name = "t"\nsweep = [20, 40]'))
    res = cli("sweep", p)
    assert res.code == 1 and "sweep" in res.err and "Traceback" not in res.err


def test_changed_teacher_file_is_not_silently_reused(tmp_path, write_recipe):
    from igdm_kit._storage.checkpoint import save_model
    from igdm_kit._training.engine import run
    from igdm_kit.errors import IgdmKitError
    from igdm_kit.factories import create_model

    meta = {"model": "small-cnn", "model_options": {"width": 4}, "num_classes": 10, "in_channels": 1,
            "image_size": 8, "mean": None, "std": None}
    teacher = tmp_path / "teacher.safetensors"
    save_model(teacher, create_model("small-cnn", num_classes=10, in_channels=1, image_size=8, width=4), meta)
    text = DIGITS_PGDAT.replace('name = "pgd-at"', 'name = "ard"') + \
        f'\n[teacher]\ncheckpoint = "{teacher}"\ncheck_accuracy = false\n'  # a random teacher, on purpose
    p = write_recipe(text.replace("[train]\n", "[train]\nepochs = 1\n", 0))
    out = tmp_path / "run"
    run(R.load(p), output_dir=out)
    assert run(R.load(p), output_dir=out, reuse_finished=True).reused
    torch_model = create_model("small-cnn", num_classes=10, in_channels=1, image_size=8, width=4)
    save_model(teacher, torch_model, meta)  # same name, new weights
    with pytest.raises(IgdmKitError, match="teacher file changed"):
        run(R.load(p), output_dir=out, reuse_finished=True)


@pytest.fixture
def fake_dataset(monkeypatch):
    """Register a dataset whose load() returns whatever the test sets in ``box``."""
    import torch

    from igdm_kit._plugins import manager as plugins
    from igdm_kit.interfaces import DatasetInfo, DatasetPlugin

    box = {}

    class Fake(DatasetPlugin):
        def info(self):
            return DatasetInfo(num_classes=10, in_channels=1, image_size=8)

        def load(self, split):
            return box["x"], box["y"]

    reg = plugins.registry("dataset")
    reg.add("fake-data", Fake, "tests")
    box["x"], box["y"] = torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,))
    yield box
    reg._entries.pop("fake-data")


@pytest.mark.parametrize("bad, words", [
    (lambda t: {"x": t.rand(32, 3, 8, 8)}, "shape (3, 8, 8), expected (1, 8, 8)"),
    (lambda t: {"x": t.rand(32, 1, 8, 8) * 255}, "not [0, 1]"),
    # uint8 is a contract's dtype (k/255); any other integer type is not
    (lambda t: {"x": (t.rand(32, 1, 8, 8) * 255).to(t.int16)}, "int16 images"),
    (lambda t: {"y": t.randint(0, 10, (31,))}, "labels of shape (31,)"),
    (lambda t: {"y": t.full((32,), 10)}, "labels outside 0..9"),
])
def test_bad_data_is_one_line_before_training(fake_dataset, bad, words, tmp_path, write_recipe, cli):
    import torch

    fake_dataset.update(bad(torch))
    p = write_recipe(DIGITS_PGDAT.replace('name = "digits"', 'name = "fake-data"'))
    res = cli("run", p, "--output", tmp_path / "run")
    assert res.code == 1, res.err
    first = res.err.strip().splitlines()[0]
    assert first.startswith("error: dataset 'fake-data'") and words in res.err
    assert not (tmp_path / "run" / "last.safetensors").exists()


def test_duplicate_plugin_name_fails_the_cli_naming_both(monkeypatch, cli):
    import sys
    import types
    from importlib.metadata import EntryPoint

    from igdm_kit._plugins import manager as plugins
    from igdm_kit.hookspecs import hookimpl
    from igdm_kit.interfaces import Method

    class Clash(Method):
        pass

    mod = types.ModuleType("clash_plugin_mod")
    mod.register_methods = hookimpl(lambda register: register("ard", Clash))
    monkeypatch.setitem(sys.modules, "clash_plugin_mod", mod)
    real = plugins.entry_points
    monkeypatch.setattr(plugins, "entry_points", lambda group: list(real(group=group)) + [
        EntryPoint(name="clash", value="clash_plugin_mod", group=group)])
    plugins.reset()
    try:
        res = cli("plugins", "list")
    finally:
        plugins.reset()
    assert res.code == 1 and "'clash'" in res.err and "igdm_kit_plugins.methods" in res.err


def test_folders_and_training_state_are_named_for_what_they_are(tmp_path, write_recipe, cli):
    from igdm_kit._training.engine import run

    res = cli("recipe", "check", tmp_path)
    assert res.code == 1 and "is a folder" in res.err
    out = tmp_path / "run"
    run(R.load(write_recipe(DIGITS_PGDAT)), output_dir=out)
    res = cli("eval", "--model", out, "--attacks", "clean")
    assert res.code == 1 and "is a folder" in res.err and "model.safetensors" in res.err
    res = cli("eval", "--model", out / "train_state.safetensors", "--attacks", "clean")
    assert res.code == 1 and "training state" in res.err and "Traceback" not in res.err


def test_a_run_stopped_before_training_leaves_no_empty_folder(tmp_path, write_recipe, cli):
    text = DIGITS_PGDAT.replace('name = "pgd-at"', 'name = "ard"') + \
        f'\n[teacher]\ncheckpoint = "{tmp_path / "missing.safetensors"}"\n'
    out = tmp_path / "runs" / "r"
    res = cli("run", write_recipe(text), "--output", out)
    assert res.code == 1 and "does not exist" in res.err and not out.exists()
