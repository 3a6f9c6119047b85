"""A training step does not wait for the device: its loss terms, correct count and finiteness checks stay on
the device (``_training.tally``) and are read at the sync points only — every ``SYNC_EVERY`` steps, at the
end of the epoch, before a stop saves — with the numbers the per-step host reads gave.

Waits are counted where they happen: every conversion of a tensor to a Python number (``float``, ``int``,
``bool``, ``item``, ``tolist``) called from the trainer's or the tally's code is recorded with the function
that made it. The oracle of the numbers is the old per-step formula, written here: each term read as a
Python float after its step, ``v·B`` summed in float64, the terms' total for ``loss``, ``int`` of the
correct count.
"""

from __future__ import annotations

import sys

import pytest
import torch
from conftest import TINY

from igdm_kit import _recipe as R
from igdm_kit._training import tally as tally_mod
from igdm_kit._training import trainer as trainer_mod
from igdm_kit._training.engine import run
from igdm_kit.errors import TrainingError

WATCHED = (trainer_mod.__file__, tally_mod.__file__)


@pytest.fixture
def waits(monkeypatch):
    """(function name) of every tensor → Python number conversion the trainer or the tally makes."""
    seen: list[str] = []
    for name in ("__float__", "__int__", "__bool__", "item", "tolist"):
        real = getattr(torch.Tensor, name)

        def wrapped(self, *args, _real=real, **kwargs):
            caller = sys._getframe(1)
            if caller.f_code.co_filename in WATCHED:
                seen.append(caller.f_code.co_name)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapped)
    return seen


def _recipe(write_recipe, epochs: int = 2):
    # 256 images, batch 64: 4 steps an epoch
    return R.load(write_recipe(TINY.replace("epochs = 1", f"epochs = {epochs}")))


def test_no_step_waits_for_the_device_only_the_sync_points_do(waits, write_recipe, tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_mod, "SYNC_EVERY", 3)  # 4 steps an epoch: one sync inside, one at its end
    checks = []
    real_check = tally_mod.Tally.check
    monkeypatch.setattr(tally_mod.Tally, "check", lambda self, where: (checks.append(1), real_check(self, where)))
    run(_recipe(write_recipe), output_dir=tmp_path / "run")
    assert "_step" not in waits and "add_step" not in waits and "add_gradients" not in waits
    assert "check" in waits and set(waits) <= {"check", "partial", "<dictcomp>", "__getitem__"}, set(waits)
    assert len(checks) == 2 * 2  # per epoch: after step 3, and at its end


def test_the_epoch_numbers_are_those_of_the_per_step_reads(write_recipe, tmp_path, monkeypatch):
    """The old formula as the oracle: every term read after its step (a float), v·B summed in Python."""
    steps: list[tuple[int, dict[str, float], int | None, int]] = []
    real_add = tally_mod.Tally.add_step

    def spy(self, step_i, terms, correct, batch_size):
        steps.append((self.epoch, {k: float(v) for k, v in terms.items()},
                      None if correct is None else int(correct), batch_size))
        return real_add(self, step_i, terms, correct, batch_size)

    monkeypatch.setattr(tally_mod.Tally, "add_step", spy)
    result = run(_recipe(write_recipe), output_dir=tmp_path / "run")
    for row in result.metrics:
        sums: dict[str, float] = {}
        correct = seen = 0
        for epoch, values, c, bs in steps:
            if epoch != row["epoch"]:
                continue
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v * bs
            sums["loss"] = sums.get("loss", 0.0) + sum(values.values()) * bs
            correct += c or 0
            seen += bs
        assert seen == 256
        for k, v in sums.items():
            assert row[k] == v / seen, k  # bit for bit
        assert row["train_adv_acc"] == 100.0 * correct / seen


def test_a_non_finite_term_mid_epoch_is_named_at_its_step_and_nothing_is_saved(write_recipe, tmp_path,
                                                                                monkeypatch):
    from igdm_kit_plugins.methods.pgd_at import PGDAT

    monkeypatch.setattr(trainer_mod, "SYNC_EVERY", 2)
    real = PGDAT.loss
    calls = [0]

    def poisoned(self, ctx):
        terms = real(self, ctx)
        calls[0] += 1
        if calls[0] == 7:  # epoch 2, step 3; read at the epoch's end (step 4), not at step 2's sync
            terms["adv_ce"] = terms["adv_ce"] * float("inf")
        return terms

    monkeypatch.setattr(PGDAT, "loss", poisoned)
    with pytest.raises(TrainingError) as err:
        run(_recipe(write_recipe, epochs=3), output_dir=tmp_path / "run")
    assert "loss term 'adv_ce' is inf at epoch 2, step 3" in str(err.value)
    from safetensors.torch import load_file

    from igdm_kit._storage.checkpoint import read_metadata

    last = tmp_path / "run" / "last.safetensors"
    assert read_metadata(last)["epoch"] == 1  # epoch 2 never saved
    assert all(bool(t.isfinite().all()) for t in load_file(str(last)).values())


def test_lazy_step_terms_read_as_floats():
    terms = tally_mod.LazyTerms({"a": torch.tensor(1.5), "b": torch.tensor(-2.0)})
    assert dict(terms) == {"a": 1.5, "b": -2.0} and len(terms) == 2 and list(terms) == ["a", "b"]
    assert sum(terms.values()) == -0.5
