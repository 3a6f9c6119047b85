"""``[train.ema]``: the averaged weights equal a hand-computed exponential moving average of the student's
weights after each step; it starts at its epoch, is validated and judged like any checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import DIGITS_PGDAT

from igdm_kit import _recipe as R
from igdm_kit._training.events import Subscriber

SMALL = DIGITS_PGDAT.replace("[data]\nname = \"digits\"", "[data]\nname = \"digits\"\ntrain_limit = 192") \
    .replace("epochs = 1", "epochs = 3")


class Weights(Subscriber):
    """The student's weights after every step, in float64 (a test's record, next to the EMA)."""

    def __init__(self) -> None:
        self.after: list[dict[str, torch.Tensor]] = []
        self.epochs: list[int] = []

    def on_step_end(self, trainer, epoch, step) -> None:
        s = trainer.parts.student
        self.after.append({k: v.detach().double().clone() for k, v in s.state_dict().items()
                           if v.is_floating_point()})
        self.epochs.append(epoch)


@pytest.mark.parametrize("buffers", [True, False])
def test_ema_weights_match_a_hand_computed_average(write_recipe, tmp_path, buffers):
    from igdm_kit._runtime.accel import Accelerator
    from igdm_kit._runtime.distributed import Dist
    from igdm_kit._training.ema import EMA
    from igdm_kit._training.engine import build_student
    from igdm_kit._training.parts import build_parts
    from igdm_kit._training.trainer import Trainer

    decay, start = 0.8, 2
    r = R.load(write_recipe(SMALL + f"[train.ema]\ndecay = {decay}\nstart = {start}\n"
                            f"buffers = {str(buffers).lower()}\n"))
    device = torch.device("cpu")
    parts = build_parts(r, device=device, acc=Accelerator.from_train(r.model.train, device), dist=Dist(),
                        teacher_file=None)
    ema = EMA(parts.student, lambda: build_student(r, parts.info), r.model.train.ema)
    record = Weights()
    Trainer(parts, [record, ema], saved_in=tmp_path, resume_hint="").fit()
    # by hand: the first averaged step copies the weights, then e ← d·e + (1 − d)·w, from epoch `start` on
    steps = [w for w, e in zip(record.after, record.epochs, strict=True) if e >= start]
    assert len(steps) == 6  # 3 steps of 64 per epoch, epochs 2 and 3
    expected = dict(steps[0])
    for w in steps[1:]:
        expected = {k: decay * expected[k] + (1 - decay) * w[k] for k in expected}
    got = ema.model.state_dict()
    for k, v in expected.items():
        if not buffers and k.startswith("net.") and "running_" in k:
            v = record.after[-1][k]  # BatchNorm statistics copied, not averaged
        assert torch.allclose(got[k].double(), v, atol=1e-6, rtol=1e-6), k
    assert int(ema.averaged.n_averaged) == 6


def test_ema_is_validated_and_judged_like_any_checkpoint(tmp_path, write_recipe, cli):
    text = SMALL.replace("train_limit = 192", "train_limit = 256\nval_size = 64") \
        .replace('[eval]\nattacks = ["clean"]', '[train.ema]\ndecay = 0.5\n[train.validate]\n'
                 '[eval]\nattacks = ["clean"]\ncheckpoints = ["ema", "best_ema", "last"]')
    out = tmp_path / "run"
    res = cli("run", write_recipe(text), "--output", out)
    assert res.code == 0, res.err
    from igdm_kit._storage.io import read_jsonl

    rows = read_jsonl(out / "metrics.jsonl")
    assert all("val_ema_robust" in r and "val_robust" in r for r in rows)
    assert R.load(out / "recipe.toml").digest() == json.loads((out / "manifest.json").read_text())["recipe_digest"]
    results = json.loads((out / "results.json").read_text())
    assert results["checkpoint"] == "ema" and set(results["checkpoints"]) == {"ema", "best_ema", "last"}
    # the headline is the average's evaluation: the saved ema.safetensors scores the same
    import igdm_kit
    from igdm_kit._evaluation.runner import evaluate, load_eval_data

    x, y = load_eval_data("digits")
    ema = igdm_kit.load_model(out / "ema.safetensors")
    assert evaluate(ema, x, y, attacks=["clean"])["metrics"]["clean"]["correct"] == \
        results["metrics"]["clean"]["correct"]
    assert "ema (epoch 3): test Clean acc (%)" in res.out and "EMA robust" in res.out
