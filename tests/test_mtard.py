"""MTARD and B-MTARD (``mtard.md``) and the teachers by role they need (R1).

Oracles: numpy float64 from the spec's formulas — the element-wise-mean KL of each teacher, the weights'
recurrence over several steps and an lr decay written out by hand, B-MTARD's temperatures; the student's
parameter gradients by central differences (the weights held at their value, as the official code's floats);
the recipe's roles checked; a digits run with two teachers, SIGKILL + ``--resume`` bit-identical.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import DIGITS_PGDAT
from safetensors.torch import load_file
from test_methods import data, linear, np_logits
from test_resume import _same, _start, _wait_for

import igdm_kit
from igdm_kit import _recipe as R
from igdm_kit._training.step import Step
from igdm_kit.errors import RecipeError
from igdm_kit.factories import create_method
from igdm_kit.interfaces import ScheduleEvent


def softmax_rows(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def klm(t, s, offset=0.0):
    """(1/(B·C))·Σ p (log(p + offset) − log q) — mtard.md's KLm."""
    p, q = softmax_rows(t), softmax_rows(s)
    return float(np.mean(p * (np.log(p + offset) - np.log(q))))


def make_step(method, student, teacher, clean, x, x_adv, y):
    step = Step(student, teacher, x, y, epoch=1, epochs=10, teacher_inputs=method.teacher_inputs(1, 10),
                teachers={"clean": clean}, role_inputs=method.role_inputs(1, 10))
    step.set_input("x_adv", x_adv)
    return step


def values(S, T, Tc, x, x_adv, scale=1.0, offset=0.0, tau=(1.0, 1.0)):
    return (scale * klm(np_logits(T, x_adv) / tau[0], np_logits(S, x_adv), offset),
            scale * klm(np_logits(Tc, x) / tau[1], np_logits(S, x), offset))


@pytest.mark.parametrize("opts", [{}, {"scale": 10.0, "log_offset": 1e-5, "weight_lr": 0.2}])
def test_mtard_weights_over_steps_and_a_decay_by_hand_and_the_loss_and_gradient(opts):
    student, teacher, clean = linear(0), linear(1, scale=3.0), linear(2, scale=2.0)
    method = create_method("mtard", **opts)
    s, off, eta = opts.get("scale", 1.0), opts.get("log_offset", 0.0), opts.get("weight_lr", 0.025)
    w_nat, l0 = 0.5, None
    for k in range(4):
        if k == 3:  # the lr decayed at the end of the epoch: so does η_w
            method.on_epoch_end(1, None, ScheduleEvent(lr=0.1, next_lr=0.01))
            eta *= 0.1
        x, x_adv, y = data(seed=k)
        l_adv, l_nat = values(student, teacher, clean, x, x_adv, s, off)
        l0 = l0 or (l_adv, l_nat)  # the first step's values, never refreshed
        a, n = l_adv / l0[0], l_nat / l0[1]
        w_nat = w_nat - eta * (w_nat - n / (a + n))
        terms = method.loss(make_step(method, student, teacher, clean, x, x_adv, y))
        loss = terms["adv_kl"] + terms["nat_kl"]
        assert loss.item() == pytest.approx((1 - w_nat) * l_adv + w_nat * l_nat, rel=1e-10)
        student.zero_grad()
        loss.backward()
        method.on_step_end(1, k, {})
        assert method.w_nat.item() == pytest.approx(w_nat, rel=1e-12)
    assert k == 3 and abs(w_nat - 0.5) > 1e-4  # the weights moved
    h, grad = 1e-6, student[1].weight.grad.numpy()
    for index in [(0, 0), (2, 7), (3, 11)]:
        f = []
        for sign in (1, -1):
            probe = linear(0)
            with torch.no_grad():
                probe[1].weight[index] += sign * h
            pa, pn = values(probe, teacher, clean, x, x_adv, s, off)
            f.append((1 - w_nat) * pa + w_nat * pn)
        assert grad[index] == pytest.approx((f[0] - f[1]) / (2 * h), rel=1e-6, abs=1e-10)


def test_b_mtard_temperatures_and_loss_by_hand():
    student, teacher, clean = linear(0), linear(1, scale=3.0), linear(2, scale=0.5)
    method = create_method("b-mtard", temperature_lr=0.4)
    tau, w_nat, l0, eta_t = [1.0, 1.0], 0.5, None, 0.4
    for k in range(4):
        x, x_adv, y = data(seed=k)
        l_adv, l_nat = values(student, teacher, clean, x, x_adv, tau=tau)
        l0 = l0 or (l_adv, l_nat)
        a, n = l_adv / l0[0], l_nat / l0[1]
        w_nat = w_nat - 0.025 * (w_nat - n / (a + n))
        terms = method.loss(make_step(method, student, teacher, clean, x, x_adv, y))
        assert (terms["adv_kl"] + terms["nat_kl"]).item() == pytest.approx((1 - w_nat) * l_adv + w_nat * l_nat,
                                                                           rel=1e-10)
        p_adv, p_nat = softmax_rows(np_logits(teacher, x_adv) / tau[0]), softmax_rows(np_logits(clean, x) / tau[1])
        e_adv, e_nat = np.mean(p_adv * np.log(p_adv + 1e-5)), np.mean(p_nat * np.log(p_nat + 1e-5))
        tau = [min(max(tau[0] - eta_t * np.sign(e_adv / e_nat - 1), 1.0), 10.0),
               min(max(tau[1] - eta_t * np.sign(e_nat / e_adv - 1), 1.0), 10.0)]
        method.on_step_end(1, k, {})
        assert method.tau.tolist() == pytest.approx(tau, rel=1e-12)
    assert tau != [1.0, 1.0]  # a teacher was softened


def test_the_clean_teacher_is_evaluated_once_per_step_and_its_logits_are_read_only():
    student, teacher, clean = linear(0), linear(1), linear(2)
    calls = []
    clean.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    method = create_method("mtard")
    x, x_adv, y = data()
    step = make_step(method, student, teacher, clean, x, x_adv, y)
    method.loss(step)
    method.loss(step)
    assert calls == [x.shape[0]]  # T_nat(x) once, cached
    step.teacher("x", role="clean").mul_(2)
    with pytest.raises(Exception, match=r"T_clean\(x\) were changed in place"):
        step.check_teacher_unchanged()
    with pytest.raises(RuntimeError, match="no 'robust' teacher"):
        step.teacher("x", role="robust")


MTARD_RECIPE = DIGITS_PGDAT.replace('name = "pgd-at"', 'name = "mtard"').replace(
    "steps = 2", 'steps = 2\nstart = "gaussian"').replace("epochs = 1", "epochs = 3\nthreads = 1") + """
[teacher]
checkpoint = "{robust}"
[teachers.clean]
checkpoint = "{clean}"
"""


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """A robust (PGD-AT) and a clean (no attack: ε = 0) digits teacher, trained once."""
    from igdm_kit._training.engine import run

    base = tmp_path_factory.mktemp("teachers")
    out = {}
    for name, text in (("robust", DIGITS_PGDAT.replace("epochs = 1", "epochs = 4")),
                       ("clean", DIGITS_PGDAT.replace("epochs = 1", "epochs = 4").replace("eps = 0.1", "eps = 0"))):
        (base / f"{name}.toml").write_text(text)
        out[name] = run(R.load(base / f"{name}.toml"), output_dir=base / name).output_dir / "model.safetensors"
    return out


def test_the_recipe_names_exactly_the_roles_the_method_reads(teachers, write_recipe):
    text = MTARD_RECIPE.format(**teachers)
    assert R.load(write_recipe(text)).resolved()["teachers"]["clean"]["checkpoint"] == str(teachers["clean"])
    with pytest.raises(RecipeError, match=r"teachers.clean: method 'mtard' reads a 'clean' teacher and the "
                                          r"recipe has none"):
        R.load(write_recipe(text.split("[teachers.clean]")[0]))
    with pytest.raises(RecipeError, match=r"teachers.extra: method 'mtard' reads no 'extra' teacher"):
        R.load(write_recipe(text + f'[teachers.extra]\ncheckpoint = "{teachers["clean"]}"\n'))
    with pytest.raises(RecipeError, match=r"teachers.clean: method 'ard' reads no 'clean' teacher"):
        R.load(write_recipe(text.replace('name = "mtard"', 'name = "ard"')))


def test_a_role_teacher_trained_by_its_recipe_first_then_reused(tmp_path, write_recipe):
    """``[teachers.clean] recipe = ...``: the clean teacher's recipe is trained into its own run folder before the
    student (as ``[teacher] recipe``), reused by the next student; MTARD then learns digits well above chance."""
    from igdm_kit._training.engine import run

    def teacher_recipe(name: str, eps: float):
        text = (DIGITS_PGDAT.replace('name = "t"', f'name = "{name}"').replace("epochs = 1", "epochs = 5")
                .replace("width = 8", "width = 16").replace("eps = 0.1", f"eps = {eps}")
                .replace("[train]\n", "[train]\nlr = 0.05\n", 1) + f'[output]\ndir = "{tmp_path / name}"\n')
        (tmp_path / f"{name}.toml").write_text(text)
        return tmp_path / f"{name}.toml"

    robust, clean = teacher_recipe("robust", 0.1), teacher_recipe("clean", 0.0)
    text = (MTARD_RECIPE.replace("epochs = 3", "epochs = 6").replace("width = 8", "width = 16")
            .split("[teacher]")[0] + f'[teacher]\nrecipe = "{robust}"\n[teachers.clean]\nrecipe = "{clean}"\n')
    result = run(R.load(write_recipe(text), ["train.lr=0.05"]), output_dir=tmp_path / "run")
    assert (tmp_path / "clean" / "results.json").exists() and (tmp_path / "robust" / "results.json").exists()
    assert result.metrics[-1]["test_clean_acc"] > 60.0, result.metrics[-1]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    from igdm_kit._storage.run_folder import sha256_file

    assert manifest["teachers_sha256"]["clean"] == sha256_file(tmp_path / "clean" / "model.safetensors")
    lines: list[str] = []
    run(R.load(write_recipe(text), ["train.lr=0.05", "train.epochs=1"]), output_dir=tmp_path / "run2",
        log=lines.append)
    assert any("reusing finished run" in line and str(tmp_path / "clean") in line for line in lines), lines


def test_a_role_teachers_files_count_by_name_and_its_checks_not_at_all(teachers, write_recipe, tmp_path):
    """As for [teacher]: a moved clone keeps its runs, and whether to refuse a teacher is not what is trained."""
    import shutil

    text = MTARD_RECIPE.format(**teachers)
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.copy(teachers["clean"], moved / "model.safetensors")
    digest = R.load(write_recipe(text)).digest()
    assert R.load(write_recipe(text.replace(str(teachers["clean"]), str(moved / "model.safetensors")))
                  ).digest() == digest
    assert R.load(write_recipe(text + "check_accuracy = false\n")).digest() == digest
    assert R.load(write_recipe(text.replace("[teachers.clean]", "[teachers.clean]\nloader = \"state-dict\"\n"
                                            "model = \"small-cnn\""))).digest() != digest


@pytest.mark.slow
def test_mtard_trains_on_digits_and_sigkill_resume_is_bit_identical(teachers, tmp_path):
    from igdm_kit._training.engine import run

    recipe = tmp_path / "r.toml"
    recipe.write_text(MTARD_RECIPE.format(**teachers))
    reference = run(R.load(recipe), output_dir=tmp_path / "ref").output_dir
    results = json.loads((reference / "results.json").read_text())
    assert results["metrics"]["clean"]["accuracy"] > 30  # chance is 10 %
    manifest = json.loads((reference / "manifest.json").read_text())
    assert set(manifest["teachers_sha256"]) == {"clean"}
    out = tmp_path / "run"
    proc = _start(recipe, out)
    _wait_for(lambda: (out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text().count("\n") >= 1,
              proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    res = subprocess.run([sys.executable, "-m", "igdm_kit", "run", str(recipe), "--output", str(out), "--resume"],
                         capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    _same(load_file(str(out / "model.safetensors")), load_file(str(reference / "model.safetensors")))
    state = load_file(str(out / "train_state.safetensors"))
    assert any(k.endswith("m.w_nat") for k in state)  # the weights travel with the training state


def test_the_cifar_resnet_reads_a_state_dict_of_the_published_layout(tmp_path):
    """ResNet-20 (n = 3) in the parameter names of chenyaofo's CifarResNet, which MTARD's clean ResNet-56
    file uses — the key list built here from the layout (stem, 3 stages of n blocks, option-B shortcuts at the
    first block of stages 2 and 3, fc) — loads strictly, under DataParallel's ``module.`` prefix too."""
    from igdm_kit.factories import create_teacher

    def bn(prefix, c):
        return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
                f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}

    shapes = {"conv1.weight": (16, 3, 3, 3), **bn("bn1", 16), "fc.weight": (10, 64), "fc.bias": (10,)}
    cin = 16
    for stage, cout in ((1, 16), (2, 32), (3, 64)):
        for i in range(3):
            p = f"layer{stage}.{i}"
            shapes.update({f"{p}.conv1.weight": (cout, cin if i == 0 else cout, 3, 3), **bn(f"{p}.bn1", cout),
                           f"{p}.conv2.weight": (cout, cout, 3, 3), **bn(f"{p}.bn2", cout)})
            if i == 0 and cin != cout:
                shapes.update({f"{p}.downsample.0.weight": (cout, cin, 1, 1), **bn(f"{p}.downsample.1", cout)})
        cin = cout
    g = torch.Generator().manual_seed(0)
    state = {f"module.{k}": (torch.tensor(5) if k.endswith("tracked") else torch.rand(s, generator=g) + 0.5)
             for k, s in shapes.items()}
    torch.save(state, tmp_path / "resnet20.pth")
    model = create_teacher(tmp_path / "resnet20.pth", loader="state-dict", model="cifar-resnet",
                           model_options={"depth": 20})
    loaded = {k.split("net.", 1)[-1]: v for k, v in model.state_dict().items()}
    assert {k for k in loaded if not k.startswith(("mean", "std"))} >= set(shapes)
    for k in shapes:
        assert torch.equal(loaded[k], state[f"module.{k}"]), k
    resnet56 = igdm_kit.create_model("resnet56")  # 0.86 M parameters with option-B shortcuts (chenyaofo's table)
    assert sum(p.numel() for p in resnet56.parameters()) == 855_770


@pytest.mark.slow
def test_two_ranks_keep_the_same_mtard_state(teachers, tmp_path):
    """Under a two-rank torchrun each rank sees its own shard, so its own term values; the weights follow
    their mean over the ranks (``StepContext.mean_over_ranks``), and every rank holds the same state."""
    import os

    recipe = tmp_path / "r.toml"
    recipe.write_text(MTARD_RECIPE.format(**teachers).replace("epochs = 3", "epochs = 2"))
    trace = tmp_path / "state"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "igdm_kit",
           "run", str(recipe), "--output", str(tmp_path / "run")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "IGDM_KIT_TRACE_STATE": str(trace)})
    assert res.returncode == 0, res.stderr[-3000:]
    ranks = [[json.loads(line) for line in (tmp_path / f"state.rank{r}").read_text().splitlines()] for r in (0, 1)]
    assert [e["epoch"] for e in ranks[0]] == [1, 2] and ranks[0] == ranks[1]
    assert ranks[0][-1]["state"]["w_nat"] != 0.5


def test_pgd_gaussian_start_is_x_plus_a_thousandth_of_noise_unclamped():
    """MTARD's attack (R6c): the first iterate is x + 0.001·N(0, I) with the attack's own draw, left outside
    [0, 1] where x is saturated; the result is back in the ball and the box."""
    from igdm_kit.factories import create_attack

    student = linear(0)
    x, _, y = data()
    x[:, :, 0] = 1.0
    seen = []
    student.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()) if a[0].requires_grad else None)
    torch.manual_seed(4)
    x_adv = create_attack("pgd", student, options={"steps": 3, "start": "gaussian", "eps": 0.05})(x, y)
    torch.manual_seed(4)
    assert torch.equal(seen[0], x + 0.001 * torch.randn_like(x)) and seen[0].max() > 1
    assert (x_adv - x).abs().max() <= 0.05 + 1e-12 and 0 <= x_adv.min() and x_adv.max() <= 1


def test_b_mtard_trains_on_digits_and_reports_the_worst_class(teachers, tmp_path):
    from igdm_kit._training.engine import run

    recipe = tmp_path / "r.toml"
    recipe.write_text(MTARD_RECIPE.format(**teachers).replace('name = "mtard"', 'name = "b-mtard"'))
    out = run(R.load(recipe), output_dir=tmp_path / "run").output_dir
    results = json.loads((out / "results.json").read_text())
    assert results["metrics"]["clean"]["accuracy"] > 30 and "clean" in results["worst_class"]
    tau = next(v for k, v in load_file(str(out / "train_state.safetensors")).items() if k.endswith("m.tau"))
    assert tau.shape == (2,) and not torch.all(tau == 1)  # the temperatures moved
