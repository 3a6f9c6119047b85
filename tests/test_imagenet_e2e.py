"""End to end on ImageNet stand-ins (issue 23): a timm ResNet-18 student at 64×64 distilled (ARD) from a timm
ResNet-18 teacher file through ``igdm-kit run`` on a generated ImageNet-layout folder of 200 JPEGs — trains,
keeps the best checkpoint (validation held out of train/), runs AutoAttack (standard) on a few test images —
resumes bit-exactly after SIGKILL, and ``igdm_kit.load_model`` rebuilds the student from its checkpoint alone.

Oracles: the uninterrupted run's weights (the resumed run must equal them bit for bit) and the run's own
logits (the rebuilt model must give them exactly).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_resume import _same, _start, _wait_for

import igdm_kit
from igdm_kit import _recipe as R
from igdm_kit._training.engine import run

pytest.importorskip("timm")

WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361"]


def write_folder(root: Path) -> None:
    """4 classes × (40 train + 10 val) JPEGs of assorted sizes, each class its own mean colour."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, wnid in enumerate(WNIDS):
        for split, n in (("train", 40), ("val", 10)):
            (root / split / wnid).mkdir(parents=True)
            for i in range(n):
                w, h = (72, 64) if i % 2 else (64, 80)
                img = np.clip(rng.normal(60 * c + 30, 40, (h, w, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(root / split / wnid / f"{wnid}_{i}.JPEG", quality=90)


def recipe_text(root: Path, teacher: Path) -> str:
    return f"""
name = "imagenet-e2e"
[data]
name = "imagenet"
root = "{root}"
image_size = 64
val_size = 16
test_limit = 4
[student]
model = "timm"
arch = "resnet18"
[teacher]
checkpoint = "{teacher}"
loader = "state-dict"
model = "timm"
model_options = {{ arch = "resnet18" }}
check_accuracy = false
[method]
name = "ard"
[attack]
eps = 0.01568627450980392
step_size = 0.00784313725490196
steps = 2
[train]
epochs = 2
batch_size = 32
lr = 0.05
milestones = []
threads = 1
[train.validate]
attacks = ["clean"]
[eval]
attacks = ["clean", "autoattack"]
eps = 0.01568627450980392
checkpoints = ["best", "last"]
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e")
    write_folder(base / "data")
    torch.manual_seed(0)
    teacher = igdm_kit.create_model("timm", num_classes=4, image_size=64, arch="resnet18").eval()
    torch.save({k[len("net."):]: v for k, v in teacher.state_dict().items() if k.startswith("net.")},
               base / "teacher.pt")
    recipe = base / "r.toml"
    recipe.write_text(recipe_text(base / "data", base / "teacher.pt"))
    ref = base / "ref"
    run(R.load(recipe), output_dir=ref)
    return recipe, ref


def test_the_run_trains_keeps_the_best_and_runs_autoattack(setup):
    _, ref = setup
    assert (ref / "model.safetensors").is_file() and (ref / "best.safetensors").is_file()
    results = json.loads((ref / "results.json").read_text())
    text = json.dumps(results)
    assert "autoattack" in text and "0.0156862745" in text


def test_load_model_rebuilds_the_student_from_its_checkpoint_alone(setup):
    _, ref = setup
    model = igdm_kit.load_model(ref / "model.safetensors")
    weights = load_file(str(ref / "model.safetensors"))
    rebuilt = igdm_kit.create_model("timm", num_classes=4, image_size=64, arch="resnet18")
    rebuilt.load_state_dict(weights)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), rebuilt.eval()(x), rtol=0, atol=0)
    assert type(model.net).__module__.startswith("timm.")


def test_sigkill_then_resume_is_bit_identical(setup, tmp_path):
    recipe, ref = setup
    out = tmp_path / "run"
    proc = _start(recipe, out)
    metrics = out / "metrics.jsonl"
    _wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 1, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "results.json").exists()
    res = subprocess.run([sys.executable, "-m", "igdm_kit", "run", str(recipe), "--output", str(out), "--resume"],
                         capture_output=True, text=True, timeout=600, check=False,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    _same(load_file(str(out / "model.safetensors")), load_file(str(ref / "model.safetensors")))
    assert [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()] == [1, 2]
