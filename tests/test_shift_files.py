"""Shifts end to end: the published layouts on small fake files written in exactly that layout, the
summary against a hand computation, paired comparisons, ``eval --shifts``, ``analyze ood`` and
``[eval] shifts`` in a recipe."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import DIGITS_PGDAT
from test_cli_eval import _save

from igdm_kit import _recipe as R
from igdm_kit._cli.specs import parse_cli_shift
from igdm_kit._evaluation.shifts import Context, compare_shifts, evaluate_shifts, summarize
from igdm_kit.errors import DataError, RecipeError
from igdm_kit.factories import create_dataset, create_shift
from igdm_kit.interfaces import DatasetInfo, Threat


def _corruptions_extra() -> bool:
    """Whether the corruptions extra imports (a real import, not a lookup: its module must load)."""
    try:
        import imagecorruptions  # noqa: F401
    except Exception:  # noqa: BLE001 - absent or broken: the tests that compute corruptions skip
        return False
    return True


#: tests that compute corruptions need the extra; they skip with its install line without it
needs_corruptions = pytest.mark.skipif(not _corruptions_extra(), reason="pip install 'igdm-kit[corruptions]'")

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR = DatasetInfo(num_classes=10, in_channels=3, image_size=32, class_names=CLASSES)


def ctx(dataset="cifar10", info=CIFAR, limit=None):
    return Context(dataset, info, None, None, 0, Threat(), limit, [])


def test_cifar_c_layout_reads_each_severity_block(tmp_path):
    base = tmp_path / "CIFAR-10-C"
    base.mkdir()
    n = 3  # images per severity
    data = np.stack([np.full((32, 32, 3), 10 * s + i, np.uint8) for s in range(5) for i in range(n)])
    np.save(base / "fog.npy", data)
    np.save(base / "labels.npy", np.tile(np.array([4, 0, 9]), 5))
    sets = create_shift("corruption-files", root=str(tmp_path), corruptions=["fog"], severities=[3, 1]).sets(ctx())
    assert [s.key for s in sets] == ["fog-1", "fog-3"] and sets[0].family == "fog"
    x, y = sets[1].load()
    assert x.shape == (3, 3, 32, 32) and torch.equal(y, torch.tensor([4, 0, 9]))
    assert torch.allclose(x[:, 0, 0, 0] * 255, torch.tensor([20.0, 21, 22]))  # severity 3 = third block
    x, _ = create_shift("corruption-files", root=str(tmp_path), corruptions=["fog"]).sets(ctx(limit=2))[4].load()
    assert x.shape[0] == 2 and x[0, 0, 0, 0] * 255 == pytest.approx(40)


def test_missing_published_files_name_the_expected_path(tmp_path):
    with pytest.raises(DataError, match=r"CIFAR-100-C.*labels\.npy"):
        create_shift("corruption-files", root=str(tmp_path)).sets(ctx("cifar100"))
    with pytest.raises(DataError, match=r"cifar-10\.1/cifar10\.1_v6_data\.npy"):
        create_shift("cifar10.1", root=str(tmp_path)).sets(ctx())
    with pytest.raises(DataError, match=r"CINIC-10/test"):
        create_shift("cinic10", root=str(tmp_path)).sets(ctx())


@pytest.mark.parametrize("inside", [True, False])
def test_cifar10_1_layout(tmp_path, inside):
    base = tmp_path / "cifar-10.1" if inside else tmp_path
    base.mkdir(exist_ok=True)
    np.save(base / "cifar10.1_v6_data.npy", np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8))
    np.save(base / "cifar10.1_v6_labels.npy", np.array([0, 1, 2, 3, 9]))
    (s,) = create_shift("cifar10.1", root=str(tmp_path)).sets(ctx())
    x, y = s.load()
    assert s.group == "natural" and x.shape == (5, 3, 32, 32) and 0 <= x.min() and x.max() <= 1
    assert y.tolist() == [0, 1, 2, 3, 9]


def _png(path, value, size=32, grey=False):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size) if grey else (size, size, 3), value, np.uint8)).save(path)


def test_cinic10_layout_maps_classes_by_name_and_skips_its_cifar_images(tmp_path):
    test = tmp_path / "CINIC-10" / "test"
    for cls, v in (("cat", 30), ("airplane", 0)):
        for i in range(2):
            _png(test / cls / f"n0000_{i}.png", v + i)
        _png(test / cls / "cifar10-test-1.png", 200)
    (s,) = create_shift("cinic10", root=str(tmp_path)).sets(ctx())
    x, y = s.load()
    assert y.tolist() == [0, 3, 0, 3]  # airplane, cat alternately (balanced under a limit)
    assert (x * 255).round()[:, 0, 0, 0].tolist() == [0, 30, 1, 31]
    (s,) = create_shift("cinic10", root=str(tmp_path), imagenet_only=False).sets(ctx(limit=3))
    assert s.load()[0].shape[0] == 3


def test_folder_of_other_classes_is_one_line(tmp_path):
    _png(tmp_path / "zebra" / "a.png", 1)
    with pytest.raises(DataError, match="zebra.*not one of the model's classes"):
        create_shift("folder", root=str(tmp_path)).sets(ctx())


def test_summary_is_the_mean_over_units_of_the_mean_over_severities():
    def m(acc, lo, hi):
        return {"accuracy": acc, "ci95": [lo, hi]}

    rows = {"fog-1": {"group": "corruption", "family": "fog", "clean": m(80, 70, 90), "robust": m(40, 30, 50)},
            "fog-5": {"group": "corruption", "family": "fog", "clean": m(60, 50, 70), "robust": m(20, 10, 30)},
            "cinic": {"group": "natural", "family": "cinic", "clean": m(50, 45, 55), "robust": m(10, 8, 12)},
            "L2": {"group": "threat", "family": "L2", "clean": m(99, 98, 100), "robust": m(33, 30, 36)}}
    s = summarize({"clean": m(90, 85, 95), "robust": m(45, 40, 50)}, rows)
    assert s["ood_d_clean"]["accuracy"] == pytest.approx((70 + 50) / 2)
    assert s["ood_d_robust"]["ci95"] == pytest.approx([(20 + 8) / 2, (40 + 12) / 2])
    assert s["ood_t_robust"]["accuracy"] == 33 and s["ood_t_robust"]["units"] == 1
    assert s["corruption_robust"]["accuracy"] == 30 and s["natural_clean"]["accuracy"] == 50


def test_parse_cli_shift_keeps_lists_whole():
    assert parse_cli_shift('corruptions:severities=[1,3],corruptions=["fog","snow"]') == {
        "name": "corruptions", "severities": [1, 3], "corruptions": ["fog", "snow"]}


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits_folder")
    x, y = create_dataset("digits").load("test")
    from PIL import Image

    for i in range(20):
        (root / str(int(y[i]))).mkdir(exist_ok=True)
        Image.fromarray(np.uint8(np.rint(x[i, 0].numpy() * 255))).save(root / str(int(y[i])) / f"{i}.png")
    return root


@needs_corruptions
def test_evaluate_shifts_end_to_end_and_paired(digits_folder):
    from igdm_kit.factories import create_model

    x, y = create_dataset("digits").load("test")
    info = create_dataset("digits").info()
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(create_model("small-cnn", num_classes=10, in_channels=1, image_size=8, width=4).eval())
    shifts = [{"name": "corruptions", "corruptions": ["contrast"], "severities": [1, 5]},
              {"name": "folder", "root": str(digits_folder), "label": "my digits"},
              {"name": "threat", "norm": "L2", "eps": 0.5, "attack": "pgd20"}]
    runs = [evaluate_shifts(m, x, y, shifts, dataset="digits", info=info, attacks=["fgsm"], eps=0.1, limit=20,
                            keep_flags=True) for m in models]
    a = runs[0]
    assert list(a["rows"]) == ["contrast-1", "contrast-5", "my digits", "L2-0.5-pgd20"]
    assert a["rows"]["my digits"]["group"] == "natural" and a["rows"]["my digits"]["n"] == 20
    for row in a["rows"].values():
        assert row["robust"]["correct"] <= row["clean"]["correct"]
        assert torch.equal(row["flags"]["robust"], row["flags"]["robust"] & row["flags"]["clean"])
    c = compare_shifts(a, runs[1])
    from igdm_kit._evaluation.stats import mcnemar

    want = mcnemar(a["rows"]["contrast-5"]["flags"]["robust"].tolist(),
                   runs[1]["rows"]["contrast-5"]["flags"]["robust"].tolist())
    assert c["rows"]["contrast-5"]["robust"]["p_value"] == want.p_value
    assert set(c["summary"]) == {"ood_d_clean", "ood_d_robust", "ood_t_robust"}
    assert compare_shifts(a, a)["summary"]["ood_d_robust"]["p_value"] == 1.0
    json.dumps(compare_shifts(a, runs[1]))  # JSON-able


# -- the command line and recipes ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two(tmp_path_factory):
    d = tmp_path_factory.mktemp("ood")
    return _save(d / "a.safetensors", train_steps=20), _save(d / "b.safetensors", train_steps=20, seed=1)


SHIFT = 'corruptions:corruptions=["contrast","gaussian_noise"],severities=[1,5]'
THREATS = 'threats:attack="pgd20",include=["linf","l2","stadv"],iterations=5'


@needs_corruptions
def test_eval_shifts_json(cli, two):
    res = cli("eval", "-m", two[0], "-n", "12", "--shift", SHIFT, "--shift", THREATS, "-a", "fgsm",
              "--no-progress", "--json")
    assert res.code == 0, res.err
    out = json.loads(res.out)["results"]
    assert out["attacks"] == ["clean", "fgsm"] and len(out["rows"]) == 7
    assert out["summary"]["ood_t_robust"]["units"] == 3 and out["n"] == 12


@needs_corruptions
def test_analyze_ood_side_by_side_with_plot(cli, two, tmp_path):
    plot = tmp_path / "ood.png"
    res = cli("analyze", "ood", *two, "-n", "12", "--shift", SHIFT, "--shift", THREATS, "-a", "fgsm",
              "--no-progress", "--plot", plot)
    assert res.code == 0, res.err
    assert "OOD_d robust" in res.out and "vs first" in res.out and "a.safetensors" in res.out
    assert "b.safetensors" in res.out and plot.stat().st_size > 10_000
    res = cli("analyze", "ood", *two, "-n", "8", "--shift", SHIFT, "-a", "fgsm", "--no-progress", "--json")
    out = json.loads(res.out)["results"]
    assert len(out["checkpoints"]) == 2 and len(out["comparisons"]) == 1


@pytest.mark.parametrize("args,words", [
    (["--shifts", "bogus"], "unknown shift 'bogus'"),
    (["--shifts", "cifar10.1"], "cifar10.1_v6_data.npy"),
    (["--shift", "threats:include=[\"ppgd\"]"], "lpips_weights"),
])
def test_shift_errors_are_one_line(cli, two, args, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = cli("eval", "-m", two[0], "-n", "4", "--no-progress", *args)
    assert res.code == 1 and words in res.err and "Traceback" not in res.err


def test_recipe_shifts_validate_and_leave_other_digests_alone(write_recipe):
    plain = R.load(write_recipe(DIGITS_PGDAT))
    assert "shifts" not in plain.resolved()["eval"]
    with_shifts = R.load(write_recipe(DIGITS_PGDAT.replace('attacks = ["clean"]', 'attacks = ["clean"]\nshifts = ["threats"]')))
    assert with_shifts.resolved()["eval"]["shift_attacks"] == ["clean", "pgd20", "cw"]
    assert with_shifts.digest() != plain.digest()
    with pytest.raises(RecipeError, match=r"eval\.shifts\[0\]"):
        R.load(write_recipe(DIGITS_PGDAT.replace('attacks = ["clean"]', 'attacks = ["clean"]\nshifts = ["nope"]')))


@pytest.mark.slow
@needs_corruptions
def test_a_run_with_shifts_reports_table_9(cli, write_recipe, tmp_path):
    text = DIGITS_PGDAT.replace('attacks = ["clean"]', 'attacks = ["clean"]\nlimit = 20\nshift_attacks = ["fgsm"]\n'
                                'shifts = [{ name = "corruptions", corruptions = ["contrast"], severities = [3] }, '
                                '{ name = "threat", norm = "L2", eps = 0.5, attack = "fgsm" }, "cifar10.1"]')
    res = cli("run", write_recipe(text), "--output", tmp_path / "run")
    assert res.code == 0, res.err
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(results["shifts"]["rows"]) == {"contrast-3", "L2-0.5-fgsm"}  # cifar10.1 missing: skipped
    assert "cifar10.1" in res.err and "OOD_t robust" in res.out


def test_a_missing_extra_is_reported_by_recipe_check_and_refused_before_training(cli, write_recipe, tmp_path,
                                                                               monkeypatch):
    """recipes/quickstart_shifts.toml without imagecorruptions: `recipe check` said ok and the run failed after
    training. Now check warns with the install line and run refuses before the folder is touched."""
    # a stand-in that fails to import, as a broken install does (torchattacks ships such a robustbench)
    fake = tmp_path / "site" / "imagecorruptions"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'pkg_resources'\")\n")
    monkeypatch.syspath_prepend(str(fake.parent))
    monkeypatch.delitem(__import__("sys").modules, "imagecorruptions", raising=False)
    recipe = write_recipe(DIGITS_PGDAT + 'shifts = ["corruptions"]\n')
    checked = cli("recipe", "check", str(recipe))
    assert checked.code == 0
    assert "'corruptions' needs the Python package 'imagecorruptions'" in checked.err
    assert "pip install 'igdm-kit[corruptions]'" in checked.err
    out = tmp_path / "run"
    ran = cli("run", str(recipe), "--output", str(out))
    assert ran.code == 1 and "imagecorruptions" in ran.err and "pip install 'igdm-kit[corruptions]'" in ran.err
    assert not out.exists()
