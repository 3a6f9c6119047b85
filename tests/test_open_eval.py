"""Open evaluation: attacks as a plugin kind, L∞/L2 threat models, the worst case per image, intervals and
paired tests — each against an independent oracle (a closed form, a hand-worked case, a norm bound)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import DIGITS_PGDAT
from torch import nn

from igdm_kit import _recipe as R
from igdm_kit._evaluation.runner import evaluate, load_flags, save_flags
from igdm_kit._evaluation.stats import mcnemar, wilson
from igdm_kit.errors import IgdmKitError, RecipeError
from igdm_kit.factories import create_eval_attack
from igdm_kit.interfaces import Threat


def small_cnn(seed=0):
    from igdm_kit.factories import create_model

    torch.manual_seed(seed)
    return create_model("small-cnn", num_classes=10, in_channels=1, image_size=8, width=4).eval()


def images(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


# -- threat models ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["fgsm", "pgd", "pgd20", "cw"])
def test_l2_attacks_stay_in_the_l2_ball_and_the_box(name):
    model, (x, y) = small_cnn(), images()
    eps = 0.5
    adv = create_eval_attack(name, **({"steps": 5} if name == "pgd" else {})).make(model, Threat("L2", eps))
    torch.manual_seed(0)
    x_adv = adv(x, y)
    norms = (x_adv - x).flatten(1).norm(dim=1)
    assert norms.max() <= eps + 1e-5 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert norms.max() > 0.25 * eps  # it moved: a real step, not the identity


class Linear(nn.Module):
    """Two classes, z = W·x + b: the worst case in a ball has a closed form."""

    def __init__(self, d: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(2, d, generator=g, dtype=torch.float64))
        self.b = nn.Parameter(torch.zeros(2, dtype=torch.float64))

    def forward(self, x):
        return x.flatten(1).double() @ self.w.T + self.b


@pytest.mark.parametrize(("norm", "eps", "dual"), [("Linf", 0.02, 1), ("L2", 0.15, 2)])
def test_worst_case_of_a_linear_model_is_the_closed_form(norm, eps, dual):
    """margin_y(x) − ε‖w_y − w_other‖_dual > 0 ⇔ robust (the box is not reached: x ∈ [0.3, 0.7])."""
    d = 16
    model = Linear(d).eval()
    g = torch.Generator().manual_seed(1)
    x = 0.3 + 0.4 * torch.rand(400, 1, 4, 4, generator=g, dtype=torch.float64)
    y = model(x).argmax(1)  # every point starts correct
    w = model.w.detach()
    sign = torch.where(y == 0, 1.0, -1.0).double()
    margin = sign * ((w[0] - w[1]) @ x.flatten(1).T)
    worst = margin - eps * (w[0] - w[1]).norm(p=dual)
    # off the boundary: within 2% of ε‖Δw‖ float32 inputs and PGD's approach to the optimum may decide
    keep = worst.abs() > 0.02 * eps * (w[0] - w[1]).norm(p=dual)
    expected = worst > 0
    assert 0.2 < expected[keep].double().mean() < 0.8  # both outcomes occur
    for name, opts in (("pgd", {"steps": 50}), ("fgsm", {})):  # FGSM/FGM is exact on a linear model
        res = evaluate(model, x.float(), y, attacks=[{"name": name, **opts}], eps=eps, threat=norm, batch_size=100, keep_flags=True)
        key = next(iter(res["flags"]))
        assert torch.equal(res["flags"][key][keep], expected[keep]), name


def test_worst_case_row_is_the_and_of_the_flags_and_below_every_attack():
    model, (x, y) = small_cnn(3), images(40)
    res = evaluate(model, x, y, attacks=["clean", "fgsm", {"name": "pgd", "steps": 3, "restarts": 2}, "cw"],
                   eps=0.1, batch_size=16, keep_flags=True)
    flags = [res["flags"][k] for k in res["metrics"]]
    assert torch.equal(res["flags"]["worst"], torch.stack(flags).all(0))
    assert res["worst"]["correct"] == int(torch.stack(flags).all(0).sum())
    assert all(res["worst"]["accuracy"] <= m["accuracy"] for m in res["metrics"].values())
    assert list(res["metrics"]) == ["clean", "fgsm", "pgd(restarts=2,steps=3)", "cw"]


def test_restarts_never_raise_robust_accuracy():
    model, (x, y) = small_cnn(5), images(60, seed=2)
    one = evaluate(model, x, y, attacks=[{"name": "pgd", "steps": 2}], eps=0.05, keep_flags=True)
    five = evaluate(model, x, y, attacks=[{"name": "pgd", "steps": 2, "restarts": 5}], eps=0.05, keep_flags=True)
    a, b = next(iter(one["flags"].values())), next(iter(five["flags"].values()))
    assert bool((b <= a).all())  # restart 1 is the same run; more restarts only remove images


# -- statistics ---------------------------------------------------------------------------------------------
def test_wilson_interval_matches_the_hand_worked_formula():
    # k = 8, n = 10, z = 1.96: centre (p + z²/2n)/(1 + z²/n), half-width z√(p(1−p)/n + z²/4n²)/(1 + z²/n)
    z, p, n = 1.959963984540054, 0.8, 10
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    lo, hi = wilson(8, 10)
    assert lo == pytest.approx(100 * (centre - half), abs=1e-9) and hi == pytest.approx(100 * (centre + half))
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == pytest.approx(100.0)


def test_mcnemar_exact_matches_the_binomial_by_hand():
    # 9 discordant pairs, 1 vs 8: p = 2·(C(9,0) + C(9,1))/2⁹ = 20/512
    a = [True] * 1 + [False] * 8 + [True] * 5
    b = [False] * 1 + [True] * 8 + [True] * 5
    res = mcnemar(a, b)
    assert (res.a_only, res.b_only, res.n) == (1, 8, 14)
    assert res.p_value == pytest.approx(20 / 512) and res.significant
    assert res.difference == pytest.approx(100 * 7 / 14)
    same = mcnemar([True, False] * 5, [True, False] * 5)
    assert same.p_value == 1.0 and not same.significant
    balanced = mcnemar([True, False, True, False], [False, True, False, True])  # 2 vs 2
    assert balanced.p_value == pytest.approx(1.0)


def test_flags_round_trip_and_compare_refuses_other_images(tmp_path):
    from igdm_kit._evaluation.compare import compare

    model, (x, y) = small_cnn(1), images(30)
    a = evaluate(model, x, y, attacks=["clean", "fgsm"], eps=0.1, keep_flags=True)
    b = evaluate(small_cnn(2), x, y, attacks=["clean", "fgsm"], eps=0.1, keep_flags=True)
    save_flags(tmp_path / "a.safetensors", a, x, y)
    save_flags(tmp_path / "b.safetensors", b, x, y)
    flags, meta = load_flags(tmp_path / "a.safetensors")
    assert torch.equal(flags["fgsm"], a["flags"]["fgsm"]) and meta["n"] == 30
    out = compare(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    assert list(out["rows"]) == ["clean", "fgsm", "worst"]
    row = out["rows"]["clean"]
    assert row["difference"] == pytest.approx(b["metrics"]["clean"]["accuracy"] - a["metrics"]["clean"]["accuracy"])
    assert row["p_value"] == pytest.approx(mcnemar(a["flags"]["clean"].tolist(), b["flags"]["clean"].tolist()).p_value)
    x2 = x.clone()
    x2[0] = 1 - x2[0]
    save_flags(tmp_path / "c.safetensors", b, x2, y)
    with pytest.raises(IgdmKitError, match="different images"):
        compare(tmp_path / "a.safetensors", tmp_path / "c.safetensors")


# -- recipes and bad input ------------------------------------------------------------------------------------
def test_recipe_attack_tables_and_threat(write_recipe):
    text = DIGITS_PGDAT.replace('attacks = ["clean"]', 'attacks = ["clean", { name = "pgd", steps = 7 }]\n'
                                                      'threat = "L2"\neps = 0.5')
    r = R.load(write_recipe(text))
    assert [s.key for s in r.eval_specs] == ["clean", "pgd(steps=7)"]
    assert r.eval_specs[1].options.steps == 7 and r.model.eval.threat == "L2"
    assert R.load(write_recipe(DIGITS_PGDAT.replace('attacks = ["clean"]', 'threat = "L2"'))).model.eval.eps == 0.5


@pytest.mark.parametrize(("eval_text", "needle"), [
    ('attacks = ["pgdd"]', "eval.attacks[0]: unknown attack 'pgdd'"),
    ('attacks = [{ name = "pgd", steps = "many" }]', "eval.attacks[0].steps"),
    ('attacks = [{ name = "pgd", stepz = 3 }]', "eval.attacks[0].stepz"),
    ('attacks = ["fgsm"]\nthreat = "L1"', "'fgsm' has no L1 version"),
    ('attacks = ["clean"]\nthreat = "L2"\neps = 128', "exceeds the largest L2 distance"),
    ('attacks = ["clean"]\neps = 8', "did you mean 8/255"),
    ('attacks = ["clean", "clean"]', "listed twice"),
])
def test_bad_eval_sections_are_one_line_naming_the_key(write_recipe, eval_text, needle):
    with pytest.raises(RecipeError) as exc:
        R.load(write_recipe(DIGITS_PGDAT.replace('attacks = ["clean"]', eval_text)))
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_autoattack_versions_validate():
    with pytest.raises(IgdmKitError, match="custom"):
        create_eval_attack("autoattack", version="custom")
    a = create_eval_attack("autoattack", version="custom", attacks=["apgd-ce"])
    assert a.options.attacks == ["apgd-ce"]


def test_l2_autoattack_custom_runs_with_the_package():
    model, (x, y) = small_cnn(), images(6)
    res = evaluate(model, x, y, attacks=[{"name": "autoattack", "version": "custom", "attacks": ["apgd-ce"]}],
                   eps=0.5, threat="L2", batch_size=6)
    key = "autoattack(attacks=['apgd-ce'],version=custom)"
    assert list(res["metrics"]) == [key]
    assert res["metrics"][key]["correct"] <= int((model(x).argmax(1) == y).sum())
    assert list(res["details"][key]) == ["clean", "apgd-ce"]


# -- any model source ----------------------------------------------------------------------------------------
def test_eval_cli_json_has_intervals_worst_case_and_flags(cli, tmp_path):
    from igdm_kit._storage.checkpoint import save_model

    path = tmp_path / "m.safetensors"
    save_model(path, small_cnn(), {"model": "small-cnn", "model_options": {"width": 4}, "num_classes": 10,
                                   "in_channels": 1, "image_size": 8, "mean": None, "std": None,
                                   "dataset": {"name": "digits", "options": {}}, "eval_eps": 0.1})
    res = cli("eval", "--model", path, "--limit", "20", "--attacks", "clean", "--attack", "pgd:steps=3,restarts=2",
              "--json", "--no-progress", "--save-flags", tmp_path / "f.safetensors")
    assert res.code == 0, res.err
    out = json.loads(res.out)["results"]
    assert list(out["metrics"]) == ["clean", "pgd(restarts=2,steps=3)"] and out["eps"] == 0.1
    lo, hi = out["worst"]["ci95"]
    assert lo <= out["worst"]["accuracy"] <= hi
    flags, _ = load_flags(tmp_path / "f.safetensors")
    assert int(flags["worst"].sum()) == out["worst"]["correct"]
    table = cli("eval", "--model", path, "--limit", "20", "--attacks", "clean,fgsm", "--no-progress")
    assert "worst case" in table.out and "95% CI" in table.out
    bad = cli("eval", "--model", path, "--attack", "pgd:steps=x", "--no-progress")
    assert bad.code == 1 and "steps" in bad.err and len(bad.err.strip().splitlines()) <= 2


def _save_robustbench_file(path, state, container):
    """The containers RobustBench's own ``load_model`` reads: a bare state dict, {"state_dict": ...}, and
    DataParallel's ``module.`` keys."""
    if container == "state_dict":
        state = {"state_dict": state}
    elif container == "module":
        state = {f"module.{k}": v for k, v in state.items()}
    torch.save(state, path)


@pytest.mark.parametrize("container", ["bare", "state_dict", "module"])
@pytest.mark.parametrize(("name", "dataset"), [("Chen2021LTD_WRN34_10", "cifar100"),
                                               ("Wang2023Better_WRN-28-10", "cifar100"),
                                               ("Cui2023Decoupled_WRN-28-10", "cifar10")])
def test_eval_loads_robustbench_files_to_the_same_logits(tmp_path, name, dataset, container):
    """A model built from RobustBench's table with random weights, saved as RobustBench stores it, comes back
    through ``igdm-kit eval``'s source loading with the very same logits."""
    from igdm_kit._evaluation import sources
    from igdm_kit.factories import create_model
    from igdm_kit_plugins.teachers.robustbench import NUM_CLASSES, ZOO

    entry = ZOO[(name, dataset)]
    torch.manual_seed(0)
    writer = create_model(entry.model, num_classes=NUM_CLASSES[dataset], mean=entry.mean, std=entry.std,
                          **entry.model_options).eval()
    net = {k[len("net."):]: v for k, v in writer.state_dict().items() if k.startswith("net.")}
    _save_robustbench_file(tmp_path / f"{name}.pt", net, container)
    model, meta, ds, _ = sources.load(sources.Source(tmp_path / f"{name}.pt", loader="robustbench", name=name),
                                      dataset, "cpu")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), writer(x), rtol=0, atol=0)
    assert meta == {} and ds == dataset


def test_any_robustbench_zoo_model_loads_with_the_package(tmp_path):
    """With the robustbench extra, a zoo model outside the built-in table is built by RobustBench's own
    architecture definition and gets the file's weights exactly."""
    from igdm_kit._evaluation import sources
    from igdm_kit_plugins.teachers.robustbench import package_zoo

    zoo = package_zoo("cifar10", "Linf")
    if zoo is None:
        pytest.skip("the robustbench extra is not installed (pip install 'igdm-kit[robustbench]')")
    name = "Addepalli2021Towards_RN18"
    torch.manual_seed(0)
    writer = zoo[name]["model"]().eval()
    _save_robustbench_file(tmp_path / f"{name}.pt", writer.state_dict(), "state_dict")
    model, _, _, _ = sources.load(sources.Source(tmp_path / f"{name}.pt", loader="robustbench", name=name),
                                  "cifar10", "cpu")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), writer(x), rtol=0, atol=0)


def test_unknown_robustbench_name_names_the_key_and_the_way_out(write_recipe, tmp_path):
    text = DIGITS_PGDAT + (f'[teacher]\ncheckpoint = "{tmp_path / "t.pt"}"\nloader = "robustbench"\n'
                           'loader_options = { name = "Chen2021LTD_WRN34", dataset = "cifar10" }\n')
    with pytest.raises(RecipeError) as exc:
        R.load(write_recipe(text))
    text = str(exc.value)
    assert text.startswith("teacher.loader_options.name:") and "Chen2021LTD_WRN34_10" in text
    assert 'loader = "state-dict"' in text and "recipe show" not in text and "\n" not in text


def _native_and_plain(tmp_path):
    from igdm_kit._storage.checkpoint import save_model

    teacher = small_cnn(7)
    native = tmp_path / "t.safetensors"
    save_model(native, teacher, {"model": "small-cnn", "model_options": {"width": 4}, "num_classes": 10,
                                 "in_channels": 1, "image_size": 8, "mean": None, "std": None,
                                 "dataset": {"name": "digits", "options": {}}})
    plain = tmp_path / "t.pt"
    torch.save({k[len("net."):]: v for k, v in teacher.state_dict().items() if k.startswith("net.")}, plain)
    student = tmp_path / "s.safetensors"
    save_model(student, small_cnn(8), {"model": "small-cnn", "model_options": {"width": 4}, "num_classes": 10,
                                       "in_channels": 1, "image_size": 8, "mean": None, "std": None,
                                       "dataset": {"name": "digits", "options": {}}})
    return student, native, plain


def test_analyze_takes_a_teacher_from_any_loader(cli, tmp_path):
    """The same teacher as an igdm-kit checkpoint and as plain weights gives the same GD and GC."""
    student, native, plain = _native_and_plain(tmp_path)
    a = cli("analyze", "alignment", "-s", student, "-t", native, "--limit", "30", "--json", "--no-progress")
    b = cli("analyze", "alignment", "-s", student, "-t", plain, "--teacher-loader", "state-dict",
            "--teacher-arch", "small-cnn", "--teacher-arch-opt", "width=4", "--limit", "30", "--json", "--no-progress")
    assert a.code == 0 and b.code == 0, a.err + b.err
    ra, rb = json.loads(a.out)["results"], json.loads(b.out)["results"]
    assert (ra["gd"], ra["gc"]) == (rb["gd"], rb["gc"])


def test_eval_judges_plain_weights_and_refuses_a_file_that_fits_no_architecture(cli, tmp_path):
    student, native, plain = _native_and_plain(tmp_path)
    a = cli("eval", "--model", native, "--limit", "30", "--attacks", "clean,fgsm", "--eps", "0.1", "--json",
            "--no-progress")
    b = cli("eval", "--model", plain, "--arch", "small-cnn", "--arch-opt", "width=4", "--dataset", "digits",
            "--limit", "30", "--attacks", "clean,fgsm", "--eps", "0.1", "--json", "--no-progress")
    assert a.code == 0 and b.code == 0, a.err + b.err
    assert json.loads(a.out)["results"]["metrics"] == json.loads(b.out)["results"]["metrics"]
    wrong = cli("eval", "--model", plain, "--arch", "small-cnn", "--arch-opt", "width=8", "--dataset", "digits",
                "--no-progress")
    assert wrong.code == 1 and "does not fit" in wrong.err and "Traceback" not in wrong.err
    none = cli("eval", "--model", plain, "--dataset", "digits", "--no-progress")
    assert none.code == 1 and "needs the architecture" in none.err


def test_the_loader_options_on_the_command_line_come_from_its_options(cli, tmp_path):
    """``--name`` is the loader's ``name`` option: refused in one line by a loader without one (it was ignored),
    asked for by one that needs it; the host reads the loader's ``Options``, never its name."""
    torch.save({"w": torch.zeros(1)}, tmp_path / "w.pt")
    res = cli("eval", "--model", str(tmp_path / "w.pt"), "--loader", "state-dict", "--arch", "small-cnn",
              "--name", "Chen2021LTD_WRN34_10", "--dataset", "digits", "--attacks", "clean")
    assert res.code == 1 and res.err.splitlines()[0] == ("error: --name 'Chen2021LTD_WRN34_10' is not an option of "
                                                         "the 'state-dict' loader")
    res = cli("eval", "--model", str(tmp_path / "w.pt"), "--loader", "robustbench", "--dataset", "cifar10",
              "--attacks", "clean")
    assert res.code == 1 and res.err.splitlines()[0] == "error: the 'robustbench' loader needs the model's name"
