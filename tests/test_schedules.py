"""Optimizers and learning-rate schedules as components: each schedule's learning rates match its closed
form, epoch by epoch (or step by step), with and without warm-up; the defaults are the paper's SGD and
multistep; the training state round-trips every optimizer and schedule exactly."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import DIGITS_PGDAT

from igdm_kit import _recipe as R
from igdm_kit._storage.io import read_jsonl
from igdm_kit._training.optim import build_optimization
from igdm_kit.errors import RecipeError

E, SPE, LR = 10, 3, 0.1  # epochs, steps per epoch, [train] lr


def _recipe(write_recipe, train: str = "", tables: str = ""):
    text = DIGITS_PGDAT.replace("epochs = 1", f"epochs = {E}\nlr = {LR}\n{train}") \
        .replace("milestones = []", "milestones = [4, 7]\nlr_decay = 0.1") + tables
    return R.load(write_recipe(text))


def _lrs(r) -> tuple[list[float], str]:
    """The lr of every epoch (or step), stepping the scheduler as the trainer does."""
    model = torch.nn.Linear(3, 2)
    opt, sched, interval = build_optimization(r, model.parameters(), SPE)
    n = E * (SPE if interval == "step" else 1)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out, interval


def warm(i: int, w: int, start: float, first: float) -> float:
    """Linear warm-up: step i (0-based) of w, from start·first up to first."""
    return first * (start + (1 - start) * i / w)


def multistep(e: int, milestones=(4, 7), gamma=0.1) -> float:  # e: 1-based epoch
    return LR * gamma ** sum(1 for m in milestones if m < e)


def cosine(i: int, t: int, eta_min: float = 0.0) -> float:
    return eta_min + (LR - eta_min) * (1 + math.cos(math.pi * i / t)) / 2


def onecycle(t: int, n: int, pct=0.3, div=25.0, final_div=1e4) -> float:
    """torch's OneCycleLR (two phases, cosine): up from LR/div to LR, then down to LR/(div·final_div)."""
    first, low = LR / div, LR / div / final_div
    up = pct * n - 1
    anneal = lambda a, b, p: b + (a - b) / 2 * (math.cos(math.pi * p) + 1)  # noqa: E731
    return anneal(first, LR, t / up) if t <= up else anneal(LR, low, (t - up) / (n - 1 - up))


def cyclic(t: int, up: int, down: int, base=0.0) -> float:
    p = t % (up + down)
    return base + (LR - base) * (p / up if p <= up else (up + down - p) / down)


def test_the_default_is_the_papers_sgd_with_cumulative_multistep(write_recipe):
    r = _recipe(write_recipe)
    model = torch.nn.Linear(3, 2)
    opt, sched, interval = build_optimization(r, model.parameters(), SPE)
    assert type(opt) is torch.optim.SGD and type(sched) is torch.optim.lr_scheduler.MultiStepLR
    g = opt.param_groups[0]
    assert (g["lr"], g["momentum"], g["weight_decay"], g["nesterov"]) == (LR, 0.9, 5e-4, False)
    lrs, interval = _lrs(r)
    assert interval == "epoch" and lrs == pytest.approx([multistep(e) for e in range(1, E + 1)])


@pytest.mark.parametrize("tables, closed", [
    ('[train.schedule]\nname = "multistep"\n', lambda e: multistep(e)),
    ('[train.schedule]\nname = "multistep"\nmilestones = [2]\ngamma = 0.5\n', lambda e: multistep(e, (2,), 0.5)),
    ('[train.schedule]\nname = "multistep"\nwarmup_epochs = 2\n',  # milestones stay epochs of the run
     lambda e: warm(e - 1, 2, 0.1, LR) if e <= 2 else multistep(e)),
    ('[train.schedule]\nname = "cosine"\n', lambda e: cosine(e - 1, E)),
    ('[train.schedule]\nname = "cosine"\neta_min = 0.01\n', lambda e: cosine(e - 1, E, 0.01)),
    ('[train.schedule]\nname = "cosine"\nwarmup_epochs = 3\nwarmup_start = 0.2\n',
     lambda e: warm(e - 1, 3, 0.2, LR) if e <= 3 else cosine(e - 4, E - 3)),
    ('[train.schedule]\nname = "constant"\nwarmup_epochs = 1\nwarmup_start = 0.0\n',
     lambda e: 0.0 if e == 1 else LR),
])
def test_epoch_schedules_match_their_closed_form(write_recipe, tables, closed):
    lrs, interval = _lrs(_recipe(write_recipe, tables=tables))
    assert interval == "epoch"
    assert lrs == pytest.approx([closed(e) for e in range(1, E + 1)], abs=1e-12)


@pytest.mark.parametrize("tables, closed", [
    ('[train.schedule]\nname = "onecycle"\n', lambda t: onecycle(t, E * SPE)),
    ('[train.schedule]\nname = "onecycle"\nwarmup_epochs = 2\n',
     lambda t: warm(t, 2 * SPE, 0.1, LR / 25) if t < 2 * SPE else onecycle(t - 2 * SPE, (E - 2) * SPE)),
    ('[train.schedule]\nname = "cyclic"\n', lambda t: cyclic(t, 15, 15)),
    ('[train.schedule]\nname = "cyclic"\ncycles = 2\nup_fraction = 0.2\nbase_lr = 0.01\n',
     lambda t: cyclic(t, 3, 12, 0.01)),
])
def test_step_schedules_match_their_closed_form(write_recipe, tables, closed):
    lrs, interval = _lrs(_recipe(write_recipe, tables=tables))
    assert interval == "step"
    assert lrs == pytest.approx([closed(t) for t in range(E * SPE)], abs=1e-12)


@pytest.mark.parametrize("tables, cls, extra", [
    ('[train.optimizer]\nname = "adam"\nbetas = [0.8, 0.99]\n', torch.optim.Adam, {"betas": (0.8, 0.99)}),
    ('[train.optimizer]\nname = "adamw"\n', torch.optim.AdamW, {"betas": (0.9, 0.999)}),
    ('[train.optimizer]\nname = "sgd"\nmomentum = 0.5\nnesterov = true\n', torch.optim.SGD,
     {"momentum": 0.5, "nesterov": True}),
])
def test_optimizers_take_lr_and_weight_decay_from_train(write_recipe, tables, cls, extra):
    r = _recipe(write_recipe, tables=tables)
    opt, _, _ = build_optimization(r, torch.nn.Linear(3, 2).parameters(), SPE)
    g = opt.param_groups[0]
    assert type(opt) is cls and g["lr"] == LR and g["weight_decay"] == 5e-4
    assert all(tuple(g[k]) == v if isinstance(v, tuple) else g[k] == v for k, v in extra.items())


@pytest.mark.parametrize("tables", [
    '[train.optimizer]\nname = "adamw"\n[train.schedule]\nname = "onecycle"\nwarmup_epochs = 2\n',
    '[train.optimizer]\nname = "adam"\n[train.schedule]\nname = "cyclic"\n',
    '[train.schedule]\nname = "multistep"\nwarmup_epochs = 2\n',
])
def test_training_state_round_trips_any_optimizer_and_schedule_exactly(write_recipe, tmp_path, tables):
    from igdm_kit._storage.train_state import load_train_state, save_train_state

    r = _recipe(write_recipe, tables=tables)

    def build():
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        return (model, *build_optimization(r, model.parameters(), SPE)[:2])

    def steps(model, opt, sched, n):
        g = torch.Generator().manual_seed(n)
        for _ in range(n):
            opt.zero_grad()
            model(torch.rand(4, 3, generator=g)).square().sum().backward()
            opt.step()
            sched.step()

    a = build()
    steps(*a, 7)
    save_train_state(tmp_path / "s.safetensors", model=a[0], optimizer=a[1], scheduler=a[2], epoch=2)
    b = build()
    load_train_state(tmp_path / "s.safetensors", model=b[0], optimizer=b[1], scheduler=b[2])
    steps(*a, 9)
    steps(*b, 9)
    assert a[1].param_groups[0]["lr"] == b[1].param_groups[0]["lr"]
    assert all(torch.equal(p, q) for p, q in zip(a[0].parameters(), b[0].parameters(), strict=True))


def test_bad_schedules_are_refused(write_recipe):
    with pytest.raises(RecipeError, match="train.schedule.name"):
        _recipe(write_recipe, tables='[train.schedule]\nname = "cosin"\n')
    with pytest.raises(RecipeError, match="warmup_epochs"):
        _recipe(write_recipe, tables=f'[train.schedule]\nwarmup_epochs = {E}\n')
    with pytest.raises(RecipeError, match="train.optimizer.betas"):
        _recipe(write_recipe, tables='[train.optimizer]\nname = "adam"\nbetas = 3\n')
    r = _recipe(write_recipe, tables='[train.schedule]\nname = "multistep"\nwarmup_epochs = 5\n')
    with pytest.raises(RecipeError, match="inside the 5-epoch warm-up"):
        build_optimization(r, torch.nn.Linear(3, 2).parameters(), SPE)


def test_a_run_logs_the_closed_form_lr_of_each_epoch(tmp_path, write_recipe):
    from igdm_kit._training.engine import run

    text = DIGITS_PGDAT.replace("epochs = 1", "epochs = 4\nlr = 0.05").replace("[data]\nname = \"digits\"",
                                                                             "[data]\nname = \"digits\"\ntrain_limit = 128")
    text += '[train.optimizer]\nname = "adamw"\n[train.schedule]\nname = "cosine"\nwarmup_epochs = 1\nwarmup_start = 0.5\n'
    out = tmp_path / "run"
    res = run(R.load(write_recipe(text)), output_dir=out)
    lrs = [row["lr"] for row in read_jsonl(out / "metrics.jsonl")]
    assert lrs == pytest.approx([0.025] + [0.05 * (1 + math.cos(math.pi * i / 3)) / 2 for i in range(3)])
    assert res.results["metrics"]["clean"]["accuracy"] > 0
