"""A teacher is checked against the student's data before anything trains (``_training.teacher_check``).

The newcomer's scenario of issue 26: digits exported as PNG class folders named ``zero…nine`` (sorted:
eight, five, four, …) with a digits teacher. Before the check, the student trained to 10 % clean accuracy
and the run exited 0. Oracles: the class lists as written, and the Wilson interval's lower end computed
from its formula in float64.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import igdm_kit
from igdm_kit._storage.checkpoint import read_metadata, save_model

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    """A digits teacher (small CNN, ≈95 % on the training images) saved as igdm-kit saves a run's model,
    without class names (as every checkpoint before them: the names come from its dataset)."""
    torch.manual_seed(0)
    xtr, ytr = igdm_kit.create_dataset("digits").load("train")
    model = igdm_kit.create_model("small-cnn", num_classes=10, in_channels=1, image_size=8, width=8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(4):
        perm = torch.randperm(len(xtr))
        for i in range(0, len(xtr), 64):
            idx = perm[i:i + 64]
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    path = tmp_path_factory.mktemp("teacher") / "model.safetensors"
    save_model(path, model.eval(), {"model": "small-cnn", "model_options": {"width": 8}, "num_classes": 10,
                                    "in_channels": 1, "image_size": 8, "mean": None, "std": None,
                                    "dataset": {"name": "digits", "options": {}}})
    return path


def export_digits(root, names) -> None:
    """The digits data set as PNG folders: the images of digit d in ``<split>/<names[d]>/``."""
    ds = igdm_kit.create_dataset("digits")
    for split in ("train", "test"):
        x, y = ds.load(split)
        for i, (img, label) in enumerate(zip(x, y, strict=True)):
            folder = root / split / names[int(label)]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.rint(img[0].numpy() * 255).astype(np.uint8), mode="L").save(folder / f"{i}.png")


def student_recipe(root, teacher, extra: str = "") -> str:
    return f"""
name = "s"
[data]
name = "image-folder"
root = "{root}"
image_size = 8
grayscale = true
hflip = false
[student]
model = "small-cnn"
width = 4
[teacher]
checkpoint = "{teacher}"
{extra}
[method]
name = "ard"
[attack]
eps = 0.1
step_size = 0.05
steps = 1
[train]
epochs = 1
batch_size = 64
milestones = []
[eval]
attacks = ["clean"]
"""


def test_digits_as_word_folders_with_the_digits_teacher_is_refused_before_training(
        teacher_file, tmp_path, cli, write_recipe):
    export_digits(tmp_path / "words", WORDS)
    out = tmp_path / "run"
    res = cli("run", write_recipe(student_recipe(tmp_path / "words", teacher_file)), "--output", out)
    assert res.code == 1, res.err
    error = next(line for line in res.err.splitlines() if line.startswith("error:"))
    assert "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9] of digits" in error  # the teacher's classes, by its dataset
    assert "[eight, five, four, nine, one, seven, six, three, two, zero]" in error  # the data's, sorted
    assert "hint:" in res.err and "check_classes" in res.err
    assert not (out / "metrics.jsonl").exists() and not (out / "last.safetensors").exists()


def test_new_checkpoints_record_their_class_names(tmp_path, cli, write_recipe):
    export_digits(tmp_path / "words", WORDS)
    recipe = student_recipe(tmp_path / "words", "x").replace('[teacher]\ncheckpoint = "x"\n', "") \
        .replace('name = "ard"', 'name = "pgd-at"')
    res = cli("run", write_recipe(recipe), "--output", tmp_path / "run")
    assert res.code == 0, res.err
    meta = read_metadata(tmp_path / "run" / "model.safetensors")
    assert meta["class_names"] == sorted(WORDS) and meta["dataset"]["name"] == "image-folder"


def test_a_teacher_with_the_data_s_classes_trains(teacher_file, tmp_path, cli, write_recipe):
    export_digits(tmp_path / "digits", [str(d) for d in range(10)])
    res = cli("run", write_recipe(student_recipe(tmp_path / "digits", teacher_file)), "--output", tmp_path / "r")
    assert res.code == 0, res.err
    assert "teacher: trained on digits; the student's data is image-folder" in res.err
    line = next(s for s in res.err.splitlines() if "correct on 1,000 training images" in s)
    assert line.startswith("teacher: 9") and "warning" not in res.err


def test_a_teacher_at_chance_is_refused_and_the_override_warns(teacher_file, tmp_path, cli, write_recipe):
    """Folders named as the teacher's classes, but each holding the next digit's images: the names agree,
    the labels do not (≈0 % correct)."""
    export_digits(tmp_path / "shifted", [str((d + 1) % 10) for d in range(10)])
    recipe = student_recipe(tmp_path / "shifted", teacher_file)
    res = cli("run", write_recipe(recipe), "--output", tmp_path / "r1")
    assert res.code == 1
    error = next(line for line in res.err.splitlines() if line.startswith("error:"))
    assert "no better than chance" in error and "of 1,000 training images" in error
    assert "check_accuracy = false" in res.err
    res = cli("run", write_recipe(recipe, "r2.toml"), "--output", tmp_path / "r2",
              "--set", "teacher.check_accuracy=false")
    assert res.code == 0, res.err
    assert "warning:" in res.err and "no better than chance" in res.err


def test_the_checks_do_not_change_the_digest():
    from igdm_kit._recipe import validate

    base = {"data": {"name": "digits"}, "student": {"model": "small-cnn"}, "teacher": {"checkpoint": "t"},
            "method": {"name": "ard"}}
    off = {**base, "teacher": {"checkpoint": "t", "check_classes": False, "check_accuracy": False}}
    assert validate(base).digest() == validate(off).digest()


@pytest.mark.parametrize(("correct", "n", "chance", "expected"), [
    (100, 1000, 10.0, "refuse"),   # 10 %: at chance
    (115, 1000, 10.0, "refuse"),   # 11.5 %: its interval (9.7–13.6) still holds chance
    (130, 1000, 10.0, "warn"),     # 13 %: above chance, far below 32.5 %
    (320, 1000, 10.0, "warn"),     # just below chance + (100 − chance)/4
    (330, 1000, 10.0, "ok"),
    (0, 1000, 10.0, "refuse"),     # below chance: the labels are permuted
    (60, 100, 50.0, "warn"),       # two classes, 60 of 100: interval 50.2–69.0, below 62.5 %
])
def test_verdict_by_the_wilson_interval(correct, n, chance, expected):
    from igdm_kit._training.teacher_check import verdict

    p, z = correct / n, 1.959963984540054
    lower = (p + z * z / (2 * n) - z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / (1 + z * z / n)
    oracle = "refuse" if 100 * lower <= chance else ("warn" if 100 * p < chance + (100 - chance) / 4 else "ok")
    assert verdict(correct, n, chance) == oracle == expected


def test_sample_accuracy_leaves_the_run_s_random_stream_alone(teacher_file):
    from igdm_kit._training.teacher_check import sample_accuracy

    teacher = igdm_kit.load_model(teacher_file)
    x, y = igdm_kit.create_dataset("digits").load("train")
    torch.manual_seed(5)
    before = torch.get_rng_state()
    correct, n, chance = sample_accuracy(teacher, x, y, torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), before)
    assert n == 1000 and correct > 900 and chance == pytest.approx(100 * int(torch.bincount(y).max()) / 1437,
                                                                   abs=2.0)
