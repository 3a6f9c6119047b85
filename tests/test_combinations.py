"""Every base method × every gradient module, selected by name from a recipe, trains a few steps on the
digits data with finite losses (and the teacher stays untouched)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import DIGITS_PGDAT

from igdm_kit import _recipe as R
from igdm_kit._plugins.manager import registry
from igdm_kit._storage.checkpoint import save_model
from igdm_kit._training.engine import prepare_teacher
from igdm_kit._training.loss import compute_loss
from igdm_kit._training.parts import build_student, build_training, load_data, load_teacher
from igdm_kit.factories import create_model

METHODS = registry("method").names()
MODULES = [None] + registry("module").names()


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    torch.manual_seed(1)
    model = create_model("small-cnn", num_classes=10, in_channels=1, image_size=8, width=8)
    save_model(path, model, {"model": "small-cnn", "model_options": {"width": 8}, "num_classes": 10,
                             "in_channels": 1, "image_size": 8, "mean": None, "std": None})
    return path


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m or "none")
@pytest.mark.parametrize("method", METHODS)
def test_pair_trains_on_digits(method, module, teacher_file):
    raw = R.tomllib.loads(DIGITS_PGDAT)
    raw["method"] = {"name": method}
    raw["attack"] = {"steps": 2, "eps": 0.1, "step_size": 0.05}
    raw["teacher"] = {"checkpoint": str(teacher_file)}
    roles = registry("method").get(method).teacher_roles  # the same file as every role's teacher (R1)
    if roles:
        raw["teachers"] = {role: {"checkpoint": str(teacher_file)} for role in roles}
    needs_peer = registry("method").get(method).needs_peer
    if needs_peer:
        raw["peer"] = {"model": "small-cnn", "width": 4}
    raw["data"]["train_limit"] = 64
    raw["train"].update(epochs=2)
    if module:
        raw["module"] = {"name": module, "alpha": 1.0}
    r = R.validate(raw)
    assert r.model.method.name == method and (r.model.module.name if r.model.module else None) == module

    torch.manual_seed(0)
    info, (x, y), _ = load_data(r)
    student = build_student(r, info)
    teacher, _ = load_teacher(r, info, torch.device("cpu"), prepare_teacher(r))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    meth, mod, attack = build_training(r, student, teacher)
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)
    student.train()
    for epoch, sl in ((1, slice(0, 32)), (2, slice(32, 64))):
        res = compute_loss(student, teacher, meth, mod, attack, x[sl], y[sl], epoch=epoch, epochs=2,
                           teachers={role: teacher for role in roles},
                           peer=create_model("small-cnn", width=4, num_classes=10, in_channels=1, image_size=8)
                           if needs_peer else None)
        assert math.isfinite(float(res.loss.detach())), res.terms
        if mod is not None:
            assert "module" in res.terms
        opt.zero_grad()
        res.loss.backward()
        opt.step()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
