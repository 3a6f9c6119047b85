"""igdm_kit._evaluation.runner: the five metrics of Section 4.1, checked against independent oracles.

Oracles: torchattacks' PGD run directly (PGD-20), the closed-form worst case of a linear model (FGSM/CW
perturbations, AutoAttack's robust set), and pyautoattack's own single-call evaluation (the resumable
batch-by-batch driver must agree with it).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchattacks
from torch import nn

from igdm_kit._evaluation.runner import evaluate, load_eval_data
from igdm_kit.attacks import CWLinf, margin, run_autoattack
from igdm_kit.errors import DataError, IgdmKitError
from igdm_kit.factories import create_eval_attack
from igdm_kit.interfaces import Threat


def _make_attack(name, model, eps):
    """The torchattacks attack behind a built-in white-box evaluation attack."""
    return create_eval_attack(name).make(model, Threat("Linf", eps))

EPS = 8 / 255


# -- fixtures ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_model():
    """A small CNN trained naturally on digits for a few epochs (≈1 s), with its test data."""
    from igdm_kit.factories import create_dataset, create_model

    torch.manual_seed(0)
    ds = create_dataset("digits")
    xtr, ytr = ds.load("train")
    xte, yte = ds.load("test")
    m = create_model("small-cnn", num_classes=10, in_channels=1, image_size=8, width=8)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(4):
        perm = torch.randperm(len(xtr))
        for i in range(0, len(xtr), 64):
            idx = perm[i:i + 64]
            loss = F.cross_entropy(m(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return m.eval(), xte[:96], yte[:96]


def linear_problem(n=10, seed=0, scale=1.0):
    """A linear 10-class model on 8×8 inputs in [0.2, 0.8] (the ε-ball never meets the [0, 1] clamp), and
    the exact L∞ robustness of each point: robust iff (w_y − w_j)·x + b_y − b_j − ε‖w_y − w_j‖₁ > 0 ∀ j≠y.
    float32 (pyautoattack works in float32); the worst-case gaps are far from 0 compared to its rounding."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(10, 64, generator=g) * scale)
        model[1].bias.copy_(torch.randn(10, generator=g) * scale)
    x = 0.2 + 0.6 * torch.rand(n, 1, 8, 8, generator=g)
    W, b = model[1].weight.detach().double().numpy(), model[1].bias.detach().double().numpy()
    flat = x.flatten(1).double().numpy()
    z = flat @ W.T + b
    y = z.argmax(1)
    y[: n // 5] = (y[: n // 5] + 1) % 10  # some points are misclassified to begin with
    robust = np.zeros(n, dtype=bool)
    worst = np.zeros(n)
    for i in range(n):
        if z[i].argmax() != y[i]:
            continue
        gaps = [(W[y[i]] - W[j]) @ flat[i] + b[y[i]] - b[j] - EPS * np.abs(W[y[i]] - W[j]).sum()
                for j in range(10) if j != y[i]]
        worst[i] = min(gaps)
        robust[i] = worst[i] > 0
    return model.eval(), x, torch.as_tensor(y), robust, worst


class NarrowAutoAttack:
    """pyautoattack's AutoAttack (standard) cut to APGD-CE and APGD-T with few iterations, for fast tests."""

    def __new__(cls, *args, **kwargs):
        from pyautoattack.autoattack import AutoAttack

        aa = AutoAttack(*args, **kwargs)
        aa.attacks_to_run = ["apgd-ce", "apgd-t"]
        aa.apgd.n_iter = 10
        aa.apgd_targeted.n_iter = 10
        aa.apgd_targeted.n_target_classes = 3
        return aa


@pytest.fixture
def narrow_aa(monkeypatch):
    import pyautoattack

    monkeypatch.setattr(pyautoattack, "AutoAttack", NarrowAutoAttack)


# -- PGD-20 against torchattacks run directly ---------------------------------------------------------------
def test_pgd20_matches_torchattacks_pgd_run_directly(digits_model):
    model, x, y = digits_model
    eps = 0.1  # digits have 17 grey levels; 8/255 barely moves them
    res = evaluate(model, x, y, attacks=("clean", "pgd20"), batch_size=40, eps=eps, seed=123)

    torch.manual_seed(123)
    atk = torchattacks.PGD(model, eps=eps, alpha=2 / 255, steps=20, random_start=True)
    correct = 0
    for i in range(0, len(x), 40):
        xa = atk(x[i:i + 40], y[i:i + 40])
        correct += int((model(xa).argmax(1) == y[i:i + 40]).sum())

    m = res["metrics"]["pgd20"]
    assert m["correct"] == correct and m["total"] == len(x)
    assert m["accuracy"] == pytest.approx(100.0 * correct / len(x))
    assert 0 < correct < res["metrics"]["clean"]["correct"]  # the attack bites but does not wipe out


def test_model_mode_buffers_and_caller_rng_are_preserved(digits_model):
    model, x, y = digits_model
    model.train()
    model.net[1].eval()  # a mixed-mode model gets each submodule's own mode back
    modes = [m.training for m in model.modules()]
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(5)
    rng = torch.get_rng_state()
    try:
        evaluate(model, x[:16], y[:16], attacks=("clean", "fgsm", "pgd20", "cw"), batch_size=8)
        assert [m.training for m in model.modules()] == modes
        assert all(torch.equal(buffers[k], v) for k, v in model.state_dict().items())  # BN ran in eval
        assert torch.equal(torch.get_rng_state(), rng)
    finally:
        model.eval()


def test_evaluate_is_reproducible_and_orders_attacks(digits_model):
    model, x, y = digits_model
    a = evaluate(model, x, y, attacks=("clean", "fgsm", "pgd20", "cw"), eps=0.1, seed=1)
    b = evaluate(model, x, y, attacks=("cw", "pgd20"), eps=0.1, seed=1)
    assert a["metrics"]["cw"] == b["metrics"]["cw"] and a["metrics"]["pgd20"] == b["metrics"]["pgd20"]
    acc = {k: v["accuracy"] for k, v in a["metrics"].items()}
    assert acc["clean"] >= acc["fgsm"] >= 0 and acc["clean"] >= acc["pgd20"] and acc["clean"] >= acc["cw"]
    assert list(a["metrics"]) == ["clean", "fgsm", "pgd20", "cw"]


# -- FGSM and CW-∞: bounds and closed forms ------------------------------------------------------------------
def _two_class_linear():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2)).double().eval()
    x = torch.rand(12, 1, 8, 8, dtype=torch.float64)
    x[:, :, 0, :4], x[:, :, 0, 4:] = 0.0, 1.0  # pixels on the borders of [0, 1] exercise the clamp
    y = torch.zeros(12, dtype=torch.long)
    return model, x, y


@pytest.mark.parametrize("name", ["fgsm", "cw"])
def test_fgsm_and_cw_equal_the_linear_closed_form(name):
    # For a 2-class linear model and y = 0, both the CE gradient p₁(w₁ − w₀) and the margin gradient
    # w₁ − w₀ have the sign of w₁ − w₀, so the L∞ attack's result is clamp(x + ε·sign(w₁ − w₀), 0, 1).
    model, x, y = _two_class_linear()
    torch.manual_seed(0)
    adv = _make_attack(name, model, EPS)(x, y)
    w = model[1].weight.detach()
    expected = torch.clamp(x + EPS * torch.sign(w[1] - w[0]).view(1, 1, 8, 8), 0, 1)
    assert torch.allclose(adv, expected, atol=1e-12)


@pytest.mark.parametrize("name", ["fgsm", "cw"])
def test_fgsm_and_cw_stay_in_the_ball_and_in_0_1(digits_model, name):
    model, x, y = digits_model
    torch.manual_seed(0)
    adv = _make_attack(name, model, EPS)(x, y)
    assert (adv - x).abs().max() <= EPS + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    # and they do increase their loss on average
    with torch.no_grad():
        if name == "fgsm":
            assert F.cross_entropy(model(adv), y) > F.cross_entropy(model(x), y)
        else:
            assert margin(model(adv), y).mean() > margin(model(x), y).mean()


def test_fgsm_has_no_random_start_and_cw_has_one(digits_model):
    model, x, y = digits_model
    a = _make_attack("fgsm", model, EPS)(x[:8], y[:8])
    b = _make_attack("fgsm", model, EPS)(x[:8], y[:8])
    assert torch.equal(a, b)
    cw = CWLinf(model, eps=EPS, steps=0)  # zero steps: just the random start, uniform in the ball
    torch.manual_seed(0)
    start = cw(x[:8], y[:8])
    assert not torch.equal(start, x[:8]) and (start - x[:8]).abs().max() <= EPS + 1e-6


def test_margin_matches_explicit_loop():
    z = torch.tensor([[1.0, 3.0, -2.0], [0.5, 0.1, 0.4]])
    y = torch.tensor([1, 0])
    expected = [max(1.0, -2.0) - 3.0, max(0.1, 0.4) - 0.5]
    assert torch.allclose(margin(z, y), torch.tensor(expected))


# -- AutoAttack ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("standard", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_autoattack_driver_agrees_with_pyautoattack_single_call(standard, monkeypatch):
    """AutoAttack driven batch by batch (resumable) equals one package call, for the narrowed attacks
    (fast) and for the real standard version (≈20 s: Square's 5,000 queries per batch)."""
    import pyautoattack

    if not standard:
        monkeypatch.setattr(pyautoattack, "AutoAttack", NarrowAutoAttack)
    AutoAttack = pyautoattack.AutoAttack

    model, x, y, robust, worst = linear_problem(n=10, scale=0.4)
    assert 0 < robust.sum() < 8, "the test needs robust and non-robust points"
    ours = run_autoattack(model, x, y, eps=EPS, batch_size=3, seed=0)

    direct = AutoAttack(model, eps=EPS, norm="Linf", version="standard", seed=0)
    _, y_adv = direct.run_standard_evaluation(x, y, batch_size=3)
    assert torch.equal(ours["robust"], y_adv == y)
    # and it finds the linear model's exact robust set
    assert ours["robust"].numpy().tolist() == robust.tolist(), worst
    assert ours["after"]["clean"] == pytest.approx(100 * (y_adv.numel() - 2) / 10)


def test_autoattack_resumes_from_its_state_file(narrow_aa, tmp_path):
    model, x, y, robust, _ = linear_problem(n=10, scale=0.4)
    state = tmp_path / "aa.json"
    full = run_autoattack(model, x, y, eps=EPS, batch_size=2, seed=0)

    calls = []

    def interrupt(task, done, total):
        calls.append((task, done))
        if task == "autoattack:apgd-t" and done == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_autoattack(model, x, y, eps=EPS, batch_size=2, seed=0, state_path=state, progress=interrupt)
    saved = json.loads(state.read_text())
    assert saved["done"] == ["apgd-ce"] and saved["current"] == "apgd-t" and saved["chunks_done"] == 1

    resumed_calls = []
    resumed = run_autoattack(model, x, y, eps=EPS, batch_size=2, seed=0, state_path=state,
                             progress=lambda t, d, n: resumed_calls.append((t, d)))
    assert torch.equal(resumed["robust"], full["robust"])
    assert not any(t == "autoattack:apgd-ce" for t, _ in resumed_calls)  # finished work is not redone
    assert resumed_calls[0] == ("autoattack:apgd-t", 2)
    assert resumed["after"] == pytest.approx(full["after"])
    assert list(resumed["after"]) == ["clean", "apgd-ce", "apgd-t"]  # in attack order, also when restored

    # a state file of another evaluation is refused, not silently reused
    with pytest.raises(IgdmKitError, match="another model"):
        run_autoattack(model, x, y, eps=4 / 255, batch_size=2, seed=0, state_path=state)


def test_autoattack_with_no_correct_point_attacks_nothing():
    model, x, y, _, _ = linear_problem(n=5)
    wrong = (model(x).argmax(1) + 1) % 10
    res = run_autoattack(model, x, wrong, eps=EPS, batch_size=2)
    assert not res["robust"].any() and res["after"] == {k: 0.0 for k in res["after"]}
    assert list(res["after"]) == ["clean", "apgd-ce", "apgd-t", "fab-t", "square"]


def test_autoattack_warnings_are_passed_on(narrow_aa):
    # A model that outputs probabilities trips pyautoattack's "logits" check (one of its flags).
    model, x, y, _, _ = linear_problem(n=6, scale=0.4)
    probs = nn.Sequential(model, nn.Softmax(dim=1)).eval()
    res = evaluate(probs, x, y, attacks=("clean", "autoattack"), batch_size=6)
    assert any("probability distribution" in w for w in res["warnings"])
    assert len(res["warnings"]) == len(set(res["warnings"]))


def test_square_check_sees_the_whole_attack_sequence(narrow_aa, monkeypatch):
    # Run batch by batch, each package call sees only one attack; the Square-vs-gradient flag must still
    # be checked on the accuracies after every attack of the whole run (as fractions, as the package does).
    from pyautoattack import checks

    seen = []
    monkeypatch.setattr(checks, "check_square_sr", lambda acc, alpha=.002, logger=None: seen.append(dict(acc)))
    model, x, y, robust, _ = linear_problem(n=10)
    run_autoattack(model, x, y, eps=EPS, batch_size=4)
    assert seen[-1] == {"clean": pytest.approx(0.8), "apgd-ce": pytest.approx(robust.mean()),
                        "apgd-t": pytest.approx(robust.mean())}


def test_autoattack_leaves_mode_and_caller_rng_alone(narrow_aa):
    # pyautoattack calls torch.manual_seed(seed) before every attack; the caller's RNG must not notice.
    model, x, y, _, _ = linear_problem(n=6)
    model.train()
    torch.manual_seed(9)
    rng = torch.get_rng_state()
    run_autoattack(model, x, y, eps=EPS, batch_size=3, seed=0)
    assert torch.equal(torch.get_rng_state(), rng) and model.training


def test_evaluate_reports_autoattack_in_percent_and_counts(narrow_aa):
    model, x, y, robust, _ = linear_problem(n=10, scale=0.4)
    res = evaluate(model, x, y, batch_size=4)
    assert list(res["metrics"]) == ["clean", "fgsm", "pgd20", "cw", "autoattack"]
    aa = res["metrics"]["autoattack"]
    assert {k: aa[k] for k in ("accuracy", "correct", "total")} == \
        {"accuracy": pytest.approx(10.0 * robust.sum()), "correct": int(robust.sum()), "total": 10}
    assert aa["ci95"][0] <= aa["accuracy"] <= aa["ci95"][1]
    # on a linear model the gradient attacks with a random start find the same worst case
    assert res["metrics"]["pgd20"]["correct"] >= aa["correct"]
    json.dumps(res)  # the result is plain JSON


def test_evaluate_runs_standard_autoattack_on_a_tiny_model():
    """The real standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square) on 8 points of a linear model (≈2 s)."""
    model, x, y, robust, _ = linear_problem(n=8, scale=0.4)
    res = evaluate(model, x, y, attacks=("autoattack",), batch_size=8)
    assert res["metrics"]["autoattack"]["correct"] == int(robust.sum())
    assert list(res["details"]["autoattack"]) == ["clean", "apgd-ce", "apgd-t", "fab-t", "square"]
    assert res["warnings"] == []  # a plain logit model raises no flag


# -- inputs -------------------------------------------------------------------------------------------------------
def test_bad_inputs_are_user_errors(digits_model):
    model, x, y = digits_model
    with pytest.raises(IgdmKitError, match="unknown attack 'pgdd'"):
        evaluate(model, x, y, attacks=("pgdd",))
    with pytest.raises(DataError, match=r"not in \[0, 1\]"):
        evaluate(model, x * 2 - 1, y, attacks=("clean",))
    with pytest.raises(DataError, match="shapes"):
        evaluate(model, x, y[:-1], attacks=("clean",))


def test_load_eval_data_is_the_test_split_head():
    from igdm_kit.factories import create_dataset

    x, y = load_eval_data("digits", limit=10)
    xt, yt = create_dataset("digits").load("test")
    assert x.shape == (10, 1, 8, 8) and torch.equal(x, xt[:10]) and torch.equal(y, yt[:10])
    with pytest.raises(IgdmKitError):
        load_eval_data("digits", limit=0)
