"""Pass accounting of one training step (issue 7): the default path runs each distinct (model, input) once.

The expected counts are derived here from first principles — the spec's attack objectives and loss formulas
at default options — not read from the methods' ``student_inputs``/``teacher_inputs`` declarations:

* an attack of K steps evaluates the attacked model(s) at the iterates z_0 … z_{K−1} (K forwards, each
  followed by one input-gradient backward; x_adv = z_K itself is never evaluated by the attack);
  ``trades`` adds one no-grad S(x) for its target, ``rslad`` one no-grad T(x) (shared with the loss),
  ``adaad`` differentiates through the teacher as well (K teacher forwards and backwards);
* the loss needs each distinct student input once (train mode, one backward each); x⁺ = x_adv at β = 1;
* the teacher inputs known after the attack go through the teacher in one batched forward (eval mode, no
  gradient, so no backward);
* ``direct`` computes ∇_x CE at x for both models outside the step cache: one student forward with two
  backwards (the create_graph input gradient and the outer backward through it) and one teacher forward with
  one backward (its input gradient).

Everything runs at epoch 1 of 1: the module ramp T(α) = α (α = 1 here) and IAD/AdaIAD's introspection is
active (W = 60·1/200 < 1).
"""

from __future__ import annotations

import copy

import pytest
import torch

from igdm_kit._plugins.manager import registry
from igdm_kit._training.loss import compute_loss
from igdm_kit._training.passes import count_passes
from igdm_kit.factories import create_attack, create_method, create_model, create_module

K = 10  # the real number of attack steps
B = 4   # batch size
C = 5   # classes

#: attack → (student forwards, teacher forwards inside the attack, teacher forwards on clean x shared with
#: the loss, student backwards, teacher backwards)
ATTACK = {
    "pgd": dict(s_fwd=K, t_fwd=0, t_clean=0, s_bwd=K, t_bwd=0),          # CE(S(z_k)), k < K
    "trades": dict(s_fwd=K + 1, t_fwd=0, t_clean=0, s_bwd=K, t_bwd=0),   # + S(x) target, no grad
    "rslad": dict(s_fwd=K, t_fwd=0, t_clean=1, s_bwd=K, t_bwd=0),        # KL(T(x) ‖ S(z_k)), T(x) once
    "adaad": dict(s_fwd=K, t_fwd=K, t_clean=0, s_bwd=K, t_bwd=K),        # KL(T(z_k) ‖ S(z_k))
    "saad": dict(s_fwd=K, t_fwd=1, t_clean=0, s_bwd=K, t_bwd=1),         # ∇_x T_y(x) once; KL(T̃ ‖ S(z_k))
}

#: method → (attack, student inputs of the loss, teacher inputs of the loss), from the spec's loss table at
#: default options. Zero-weight terms need no input: ARD's α_ard = 1 drops CE(S(x)); AdaAD's λ = 1 drops
#: KL(T(x) ‖ S(x)).
METHOD = {
    "pgd-at": ("pgd", {"x_adv"}, set()),                   # CE(S(x_adv))
    "trades": ("trades", {"x", "x_adv"}, set()),           # CE(S(x)) + β·KL(S(x) ‖ S(x_adv))
    "ard": ("pgd", {"x_adv"}, {"x"}),                      # KL_τ(T(x) ‖ S(x_adv))
    "iad": ("pgd", {"x_adv", "x"}, {"x", "x_adv"}),        # ARD + (1 − w(T(x_adv)))·KL(S(x) ‖ S(x_adv))
    "akd": ("pgd", {"x_adv"}, {"x_adv"}),                  # −Σ t·log q(S(x_adv)), t from T(x_adv)
    "rslad": ("rslad", {"x", "x_adv"}, {"x"}),             # KL(T(x) ‖ S(x_adv)), KL(T(x) ‖ S(x))
    "adaad": ("adaad", {"x_adv"}, {"x_adv"}),              # KL(T(x_adv) ‖ S(x_adv))
    "adaiad": ("adaad", {"x_adv", "x"}, {"x_adv"}),        # AdaAD + introspection
    "dgad": ("adaad", {"x", "x_adv"}, {"x", "x_adv"}),     # T(x) for MAP; KL(T̃(x) ‖ S(x)), KL(T̃(x_adv) ‖
                                                           # S(x_adv)) per sample; PCR on S(x), S(x_adv)
    "fair-ard": ("pgd", {"x_adv"}, {"x"}),                 # w_{y_i}·KL_τ(T(x) ‖ S(x_adv)) / C; κ from the attack
    "fair-iad": ("pgd", {"x_adv", "x"}, {"x", "x_adv"}),   # IAD's terms ×w_{y_i} (epoch 1 of 1: past the warm-up)
    "fair-rslad": ("rslad", {"x", "x_adv"}, {"x"}),        # RSLAD's terms ÷C ×w_{y_i}; κ from the attack
    "saad": ("saad", {"x_adv"}, {"x_adv"}),
    "absld": ("rslad", {"x", "x_adv"}, {"x"}),            # RSLAD's terms on copies of T(x) ÷ τ[y]; the attack's too
    "peeraid": ("rslad", {"x_adv", "x"}, set()),          # no teacher: the attack's target and L_peer are the peer's
    "mtard": ("pgd", {"x_adv", "x"}, {"x_adv"}),           # w_adv·KLm(T(x_adv) ‖ S(x_adv)) + w_nat·KLm(T_nat(x) ‖ S(x))
    "b-mtard": ("pgd", {"x_adv", "x"}, {"x_adv"}),         # the same, each teacher's logits ÷ its temperature                # w_i·KL(T(x_adv) ‖ S(x_adv)), w from T(x_adv); β = 0
    "mart": ("pgd", {"x_adv", "x"}, set()),                # (example plugin) BCE(S(x_adv)) + KL(S(x) ‖ …)
}

#: module → (student inputs, teacher inputs) with β = γ = 1, so x⁺ = x + δ = x_adv; plus the passes it
#: makes outside the step cache (``direct``).
MODULE = {
    None: (set(), set()),
    "igdm": ({"x_adv", "x_minus"}, {"x_adv", "x_minus"}),   # D(S(x⁺) − S(x⁻), T(x⁺) − T(x⁻))
    "igdm-trades-like": ({"x_adv", "x_minus"}, set()),     # KL(S(x⁻) ‖ S(x⁺))
    "trades-reg": ({"x", "x_adv"}, set()),                 # KL(S(x) ‖ S(x⁺))
    "direct": (set(), set()),                              # D(∇_x S, ∇_x T) at x, see EXTRA
}
EXTRA = {"direct": dict(s_fwd=1, s_bwd=2, t_fwd=1, t_bwd=1)}
#: method → the inputs of each teacher by role (R1): one more batched forward per role (counted here as the
#: teacher's: the tests give every role the same teacher model)
ROLES = {"mtard": {"clean": {"x"}}, "b-mtard": {"clean": {"x"}}}
#: methods whose attack target is their own (R6b: PeerAiD's peer, not T(x))
OWN_TARGET = {"peeraid"}


def minimum(method: str, module: str | None) -> dict[str, dict[str, int]]:
    attack, m_s, m_t = METHOD[method]
    a = {**ATTACK[attack], **({"t_clean": 0} if method in OWN_TARGET else {})}
    mod_s, mod_t = MODULE[module]
    extra = EXTRA.get(module, {})
    loss_s = m_s | mod_s
    # T(x) the attack already computed is shared with the loss; the rest is one batched call
    batched = (m_t | mod_t) - ({"x"} if a["t_clean"] else set())
    roles = ROLES.get(method, {})
    t_fwd = a["t_fwd"] + a["t_clean"] + (1 if batched else 0) + extra.get("t_fwd", 0) + len(roles)
    t_images = B * (a["t_fwd"] + a["t_clean"] + len(batched) + extra.get("t_fwd", 0)
                    + sum(len(v) for v in roles.values()))
    out = {"student": {"forwards": a["s_fwd"] + len(loss_s) + extra.get("s_fwd", 0),
                       "backwards": a["s_bwd"] + len(loss_s) + extra.get("s_bwd", 0)}}
    out["student"]["images"] = B * out["student"]["forwards"]
    if t_fwd:
        out["teacher"] = {"forwards": t_fwd, "backwards": a["t_bwd"] + extra.get("t_bwd", 0),
                          "images": t_images}
    return out


def small_cnn(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("small-cnn", num_classes=C, in_channels=3, image_size=8, width=4).double()


@pytest.fixture(scope="module")
def models_and_batch():
    student = small_cnn(0)
    teacher = small_cnn(1).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(2)
    x = torch.rand(B, 3, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (B,), generator=g)
    return student, teacher, x, y


def build(method_name: str, module_name: str | None, student, teacher):
    method = create_method(method_name)
    module = None
    if module_name is not None:
        module = create_module(module_name, alpha=1.0)
    attack = create_attack(method.attack_name, student, options={"steps": K}, teacher=teacher)
    return method, module, attack


def one_step(method_name, module_name, student, teacher, x, y, *, cache: bool, seed: int = 123):
    """compute_loss + backward on the given student; returns (result, pass snapshot)."""
    method, module, attack = build(method_name, module_name, student, teacher)
    torch.manual_seed(seed)  # the attack's random start
    with count_passes(student=student, teacher=teacher) as counter:
        res = compute_loss(student, teacher, method, module, attack, x, y, epoch=1, epochs=1, cache=cache,
                           teachers={role: teacher for role in method.teacher_roles},
                           peer=small_cnn(7) if method.needs_peer else None)
        res.loss.backward()
    return res, counter.snapshot()


COMBOS = [(m, mod) for m in METHOD for mod in MODULE]


def test_the_tables_cover_every_registered_component():
    assert set(registry("method").names()) <= set(METHOD), "derive the minimum passes of the new method here"
    assert set(registry("module").names()) <= set(MODULE) - {None}, "derive the passes of the new module here"
    assert set(registry("attack").names()) <= set(ATTACK)


@pytest.mark.parametrize(("method", "module"), COMBOS)
def test_default_path_runs_the_minimum_passes(models_and_batch, method, module):
    student, teacher, x, y = models_and_batch
    student = copy.deepcopy(student)
    _, passes = one_step(method, module, student, teacher, x, y, cache=True)
    assert passes == minimum(method, module)


def test_headline_counts_of_the_issue(models_and_batch):
    """IGDM_AdaAD 12/11, IGDM_ARD 12/1 batched, IGDM_RSLAD 13/1 batched + 1 clean."""
    student, teacher, x, y = models_and_batch
    _, p = one_step("adaad", "igdm", copy.deepcopy(student), teacher, x, y, cache=True)
    assert (p["student"]["forwards"], p["teacher"]["forwards"]) == (12, 11)
    assert p["teacher"]["images"] == 10 * B + 2 * B  # one call on [x_adv; x⁻]
    _, p = one_step("ard", "igdm", copy.deepcopy(student), teacher, x, y, cache=True)
    assert (p["student"]["forwards"], p["teacher"]["forwards"], p["teacher"]["images"]) == (12, 1, 3 * B)
    _, p = one_step("rslad", "igdm", copy.deepcopy(student), teacher, x, y, cache=True)
    # T(x) before the attack (B images), then one call on [x_adv; x⁻]
    assert (p["student"]["forwards"], p["teacher"]["forwards"], p["teacher"]["images"]) == (13, 2, 3 * B)


def test_reference_passes_reproduce_the_separate_forwards(models_and_batch):
    """The reference evaluates S(x⁺), T(x⁺) apart from S(x_adv), T(x_adv) (except ARD + IGDM, whose KD term
    uses S(x⁺)), T(x) again for the loss, and the zero-weight branches (AdaAD's λ = 1 leaves T(x), S(x); ARD's α = 1 leaves S(x)) all the same."""
    student, teacher, x, y = models_and_batch
    expected = {("adaad", "igdm"): (14, 14),  # 10+S(x_adv)+S(x)+S(x⁺)+S(x⁻); 10+T(x_adv)+T(x)+T(x⁺)+T(x⁻)
                ("ard", "igdm"): (13, 3),         # S(x⁺) (also the KD term's), S(x) at weight 0, S(x⁻);
                                                  # T(x), T(x⁺), T(x⁻) separately
                ("rslad", "igdm"): (14, 4)}       # T(x) in the attack and again in the loss
    for (method, module), (s, t) in expected.items():
        _, p = one_step(method, module, copy.deepcopy(student), teacher, x, y, cache=False)
        assert (p["student"]["forwards"], p["teacher"]["forwards"]) == (s, t), (method, module)
        assert p["teacher"]["images"] == B * t  # never batched


def test_a_zero_weight_module_costs_nothing(models_and_batch):
    student, teacher, x, y = models_and_batch
    student = copy.deepcopy(student)
    method, _, attack = build("rslad", None, student, teacher)
    module = create_module("igdm", alpha=0.0)
    with count_passes(student=student, teacher=teacher) as c:
        res = compute_loss(student, teacher, method, module, attack, x, y, epoch=1, epochs=1)
        res.loss.backward()
    assert "module" not in res.terms
    assert c.snapshot() == minimum("rslad", None)  # no x⁻ forwards, T(x) only


def _bn_modules(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@pytest.mark.parametrize(("method", "module"), COMBOS)
def test_reference_passes_give_the_same_loss_and_gradients(models_and_batch, method, module):
    """Same batch, same attack start: default and ``reference_passes`` agree on the loss, every term and
    every parameter gradient. Train-mode BatchNorm normalizes with the batch's own statistics, so a second
    forward on the same input gives the same output; only the running statistics (never used in train
    mode) differ, and they are not compared."""
    student, teacher, x, y = models_and_batch
    s_default, s_ref = copy.deepcopy(student), copy.deepcopy(student)
    res_d, p_d = one_step(method, module, s_default, teacher, x, y, cache=True)
    res_r, p_r = one_step(method, module, s_ref, teacher, x, y, cache=False)

    assert torch.equal(res_d.x_adv, res_r.x_adv)  # the attack runs before any train-mode forward
    assert res_d.terms.keys() == res_r.terms.keys()
    for k in res_d.terms:
        torch.testing.assert_close(res_d.terms[k], res_r.terms[k], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(res_d.loss, res_r.loss, rtol=1e-10, atol=1e-12)
    grads_d = dict(s_default.named_parameters())
    for name, p in s_ref.named_parameters():
        assert p.grad is not None and grads_d[name].grad is not None, name
        torch.testing.assert_close(grads_d[name].grad, p.grad, rtol=1e-9, atol=1e-11)

    # more passes whenever the default path shared one: x⁺ = x_adv, T(x) of the attack, the batched call
    s_shared = p_r["student"]["forwards"] - p_d["student"]["forwards"]
    attack, m_s, m_t = METHOD[method]
    mod_s, mod_t = MODULE[module]
    if "x_adv" in mod_s:  # the module asks for x⁺, the reference evaluates it again
        assert s_shared >= 1
    else:
        assert s_shared >= 0
    if "teacher" in p_d:
        assert p_r["teacher"]["forwards"] >= p_d["teacher"]["forwards"]
        if len((m_t | mod_t) - ({"x"} if ATTACK[attack]["t_clean"] else set())) > 1 or \
                (ATTACK[attack]["t_clean"] and "x" in m_t):
            assert p_r["teacher"]["forwards"] > p_d["teacher"]["forwards"]
    if s_shared:  # the running statistics did see the extra forwards (the documented difference)
        bn_d, bn_r = _bn_modules(s_default), _bn_modules(s_ref)
        assert any(a.num_batches_tracked != b.num_batches_tracked for a, b in zip(bn_d, bn_r, strict=True))


def test_step_speed_benchmark_reports_the_minimum_passes(tmp_path, monkeypatch):
    """benchmarks/step_speed.py --quick: its JSON carries the pass counts derived above and a FLOP ratio
    > 1 in favour of the default path (timings themselves are not asserted: shared CPU)."""
    import importlib.util
    import json
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "step_speed.py"
    spec = importlib.util.spec_from_file_location("step_speed", path)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # its dataclasses look their module up
    spec.loader.exec_module(bench)
    out = tmp_path / "speed.json"
    assert bench.main(["--quick", "--methods", "rslad+igdm,adaad+igdm", "--repeats", "3",
                       "--variants", "default,reference,bf16", "--out", str(out)]) == 0
    rows = {(r["method"], r["variant"]): r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {(m, v) for m in ("rslad+igdm", "adaad+igdm") for v in ("default", "reference", "bf16")}
    for m in ("rslad+igdm", "adaad+igdm"):  # GFLOP/s: the step's FLOPs (bf16: the same work) over its time
        d, b = rows[(m, "default")], rows[(m, "bf16")]
        assert d["gflop_per_s"] == pytest.approx(d["flops"] / 1e9 / (d["ms_per_step"] / 1000), rel=1e-9)
        assert b["gflop_per_s"] == pytest.approx(d["flops"] / 1e9 / (b["ms_per_step"] / 1000), rel=1e-9)
        assert d["speedup_vs_reference"] == pytest.approx(d["speedup"])  # the default's baseline is the reference
        assert b["speedup_vs_reference"] > 0 and "speedup_vs_reference" not in rows[(m, "reference")]
    for spec_name in ("rslad+igdm", "adaad+igdm"):
        method, module = spec_name.split("+")
        expected = {role: {"forwards": c["forwards"], "backwards": c["backwards"]}
                    for role, c in minimum(method, module).items()}
        got = {role: {"forwards": c["forwards"], "backwards": c["backwards"]}
               for role, c in rows[(spec_name, "default")]["passes"].items()}
        assert got == expected
        assert rows[(spec_name, "default")]["predicted_speedup"] > 1.0
        assert rows[(spec_name, "default")]["ms_per_step"] > 0
