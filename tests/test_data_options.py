"""``eval`` and ``analyze`` take the dataset's options (``--data-opt root=...``): a model judged on an
``image-folder`` dataset it was not trained on (before, ``data.root: Field required``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import TINY
from PIL import Image


@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory):
    """A digits student (8×8 grey, 10 classes) trained for one epoch."""
    from igdm_kit import _recipe as R
    from igdm_kit._training.engine import run

    folder = tmp_path_factory.mktemp("digits")
    (folder / "r.toml").write_text(TINY)
    run(R.load(folder / "r.toml"), output_dir=folder / "run")
    return folder / "run" / "model.safetensors"


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """The first 40 digits as 8×8 PNGs in root/{train,test}/<class>/ (4 test images per class)."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("images")
    d = load_digits()
    for split, rng in (("train", range(40, 80)), ("test", range(40))):
        for i in rng:
            folder = root / split / str(d.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray((d.images[i] * 255 / 16).astype(np.uint8), mode="L").save(folder / f"{i}.png")
    return root


def _opts(root) -> list[str]:
    return ["--dataset", "image-folder", "--data-opt", f"root={root}", "--data-opt", "image_size=8",
            "--data-opt", "grayscale=true"]


def test_eval_takes_the_datasets_options(digits_checkpoint, image_folder, cli):
    res = cli("eval", "-m", digits_checkpoint, "-a", "clean", "--no-progress", "--json", *_opts(image_folder))
    assert res.code == 0, res.err
    out = json.loads(res.out)["results"]
    assert (out["dataset"], out["n"]) == ("image-folder", 40)
    # a bad option is one line naming it and the flag that sets it
    bad = cli("eval", "-m", digits_checkpoint, "-a", "clean", "--dataset", "image-folder", "--data-opt",
              f"root={image_folder}", "--data-opt", "image_size=oops")
    assert bad.code == 1 and "image_size" in bad.err and "--data-opt" in bad.err and "Traceback" not in bad.err
    missing = cli("eval", "-m", digits_checkpoint, "-a", "clean", "--dataset", "image-folder")
    assert missing.code == 1 and "data.root" in missing.err and "--data-opt root=" in missing.err


def test_analyze_takes_the_datasets_options(digits_checkpoint, image_folder, cli):
    res = cli("analyze", "linearity", "-m", digits_checkpoint, "--no-progress", "--json", *_opts(image_folder))
    assert res.code == 0, res.err
    assert (json.loads(res.out)["results"]["dataset"], json.loads(res.out)["results"]["n"]) == ("image-folder", 40)
    res = cli("analyze", "alignment", "-s", digits_checkpoint, "-t", digits_checkpoint, "--no-progress", "--json",
              *_opts(image_folder))
    assert res.code == 0, res.err
    assert json.loads(res.out)["results"]["gc"] == pytest.approx(1.0)  # a model with itself
    res = cli("analyze", "pointwise", "-s", digits_checkpoint, "-t", digits_checkpoint, "--no-progress",
              "--steps", "1", "--json", *_opts(image_folder))
    assert res.code == 0, res.err and json.loads(res.out)["results"]["n"] == 40
    res = cli("analyze", "ood", digits_checkpoint, "--shift", 'threats:include=["linf"],attack="fgsm"', "-a", "clean",
              "--no-progress", "--json", *_opts(image_folder))
    assert res.code == 0, res.err
    assert json.loads(res.out)["results"]["checkpoints"][0]["dataset"] == "image-folder"
