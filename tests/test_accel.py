"""Accelerator options (igdm_kit._runtime.accel): validation, bf16 autocast, the fp16 attack-gradient guard,
channels_last, torch.compile, the GradScaler step, gpu_data, and the engine wiring — on CPU by default.

The CUDA-only paths (fp16 autocast with the CUDA GradScaler, cudnn benchmark, moving data to a GPU) cannot
run on a CPU; their CPU counterparts (fp16 autocast and GradScaler on CPU, the memory check with a faked
``mem_get_info``) exercise the same code. ``pytest --device cuda`` (``benchmarks/device_check.py``) runs
every test that takes the ``device`` fixture on the GPU with the same assertions, and the GPU-only test.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import DIGITS_PGDAT

from igdm_kit import _recipe as R
from igdm_kit._runtime.accel import Accelerator, AccelOptions, validate
from igdm_kit._training.loss import compute_loss
from igdm_kit._training.passes import count_passes
from igdm_kit.errors import RecipeError
from igdm_kit.factories import create_attack, create_method, create_model, create_module
from igdm_kit.losses import kl_div

EPS, STEP, K = 8 / 255, 2 / 255, 10
C = 10


def with_train(text: str, lines: str) -> str:
    """DIGITS_PGDAT with extra keys in its [train] section."""
    return text.replace("[train]\n", "[train]\n" + lines)


def small_cnn(seed: int, width: int = 8) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("small-cnn", num_classes=C, in_channels=3, image_size=16, width=width)


def calibrated_cnn(seed: int, head: float = 10.0) -> torch.nn.Module:
    """A small CNN whose eval-mode BatchNorm uses real data statistics and whose logits spread over a few
    units (an untrained net at init barely reacts to its input, so every attack gain would be noise)."""
    model = small_cnn(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average: the running stats become this batch's
    with torch.no_grad():
        model.train()(torch.rand(64, 3, 16, 16, generator=torch.Generator().manual_seed(seed)))
        model.net[-1].weight.mul_(head)
    return model


def frozen(model):
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@pytest.fixture
def batch(device):
    g = torch.Generator().manual_seed(5)
    return torch.rand(8, 3, 16, 16, generator=g).to(device), torch.randint(0, C, (8,), generator=g).to(device)


def conv_calls(model) -> tuple[list, list]:
    """Record the output dtype and input memory format of every conv call of ``model`` (to prove a path
    really ran: under autocast a conv computes, and returns, the low-precision dtype)."""
    dtypes, formats = [], []

    def hook(m, args, output):
        dtypes.append(output.dtype)
        formats.append(args[0].is_contiguous(memory_format=torch.channels_last))

    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(hook)
    return dtypes, formats


# -- validation ----------------------------------------------------------------------------------------------

def test_fp16_on_cpu_is_an_error_naming_train_amp():
    with pytest.raises(RecipeError) as exc:
        validate(AccelOptions(amp="fp16"), "cpu")
    assert exc.value.path == "train.amp" and "train.amp" in str(exc.value) and "bf16" in exc.value.hint


@pytest.mark.parametrize(("options", "key"), [(AccelOptions(compile=True), "train.compile"),
                                              (AccelOptions(amp="fp16"), "train.amp")])
def test_direct_module_refuses_compile_and_fp16(options, key):
    with pytest.raises(RecipeError) as exc:
        validate(options, "cuda", module="direct")  # the check needs no GPU
    assert exc.value.path == key and "direct" in str(exc.value)


def test_valid_cpu_options_pass_validation():
    validate(AccelOptions(amp="bf16", channels_last=True, compile=True, cudnn_benchmark=True, gpu_data=True),
             "cpu", module="igdm")


def test_recipe_rejects_an_unknown_amp_value(write_recipe):
    with pytest.raises(RecipeError) as exc:
        R.load(write_recipe(with_train(DIGITS_PGDAT, 'amp = "fp8"\n')))
    assert exc.value.path == "train.amp"


def test_accelerator_keys_are_off_by_default(write_recipe):
    train = R.load(write_recipe(DIGITS_PGDAT)).model.train
    assert AccelOptions.from_train(train) == AccelOptions()
    assert AccelOptions.from_train(train).enabled() == []


def test_engine_refuses_fp16_on_cpu_before_training(write_recipe, tmp_path):
    from igdm_kit._training.engine import run

    r = R.load(write_recipe(with_train(DIGITS_PGDAT, 'amp = "fp16"\ndevice = "cpu"\n')))
    with pytest.raises(RecipeError, match="train.amp"):
        run(r, output_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


# -- mixed precision and the attacks -------------------------------------------------------------------------

def objective(attack_name, student, teacher, x, y):
    """Each attack's L(z) from the spec, in float32, written independently of the attack classes."""
    with torch.no_grad():
        if attack_name == "pgd":
            return lambda z: F.cross_entropy(student(z), y)
        if attack_name == "trades":
            s_x = student(x)
            return lambda z: kl_div(s_x, student(z))
        if attack_name == "rslad":
            t_x = teacher(x)
            return lambda z: kl_div(t_x, student(z))
        return lambda z: kl_div(teacher(z), student(z))


@pytest.mark.parametrize("attack_name", ["pgd", "trades", "rslad", "adaad"])
def test_bf16_attacks_stay_in_the_ball_and_increase_their_loss(attack_name, batch, device):
    x, y = batch
    student, teacher = calibrated_cnn(0).to(device), frozen(calibrated_cnn(1)).to(device)
    acc = Accelerator(AccelOptions(amp="bf16"), device)
    acc.prepare(student)
    acc.prepare(teacher)
    dtypes, _ = conv_calls(student)
    options = {"eps": EPS, "step_size": STEP, "steps": K}
    attack = acc.wrap_attack(create_attack(attack_name, student, options=options, teacher=teacher))
    torch.manual_seed(0)
    extra = {"teacher_logits": teacher(x)} if attack_name == "rslad" else {}
    student.train()
    x_adv = attack(x, y, **extra)
    assert student.training and not teacher.training  # the attack gave the models their modes back
    assert all(m.training for m in student.modules()) and not any(m.training for m in teacher.modules())
    assert torch.bfloat16 in dtypes  # the attack's forwards really ran under bf16 autocast
    assert student(x).dtype == torch.float32  # logits (and so every objective) in float32

    assert x_adv.dtype == torch.float32
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1

    student.eval()
    with acc.paused(), torch.no_grad():  # judge in float32
        L = objective(attack_name, student, teacher, x, y)
        gain_bf16 = L(x_adv) - L(x)
        # the same attack in float32, same start, as the yardstick
        plain = create_attack(attack_name, student, options=options, teacher=teacher)
    torch.manual_seed(0)
    with acc.paused():
        x_ref = plain(x, y, **extra)
        gain_fp32 = L(x_ref) - L(x)
    assert gain_fp32 > 0.1  # the yardstick attack did something measurable
    # TRADES' first steps follow S(z) − S(x) at ‖z − x‖ ≈ 0.001, below bf16's logit resolution; it is
    # the weakest here (~80% of the fp32 gain), the others are within a few percent
    assert gain_bf16 > (0.7 if attack_name == "trades" else 0.9) * gain_fp32


def _input_grad(model, x, y, scale, acc=None, attack=False):
    z = x.clone().requires_grad_(True)
    if acc is not None and attack:
        with acc.attack_mode():
            out = model(z)
    else:
        out = model(z)
    (g,) = torch.autograd.grad(scale * F.cross_entropy(out, y), z)
    return g


def test_fp16_guard_prevents_sign_zero_stalls(batch, device):
    """A small objective (as a batch-mean over a large batch) underflows in an fp16 backward: sign(0)
    would stall the attack. With the guard, the signs match the float32 gradient's."""
    x, y = batch
    model = small_cnn(0).to(device).eval()
    reference = _input_grad(model, x, y, 1e-3)  # float32
    acc = Accelerator(AccelOptions(amp="fp16"), device)  # fp16 autocast exists on CPU; validate() refuses it
    acc.prepare(model)
    unguarded = _input_grad(model, x, y, 1e-3, acc, attack=False)
    guarded = _input_grad(model, x, y, 1e-3, acc, attack=True)
    assert (unguarded == 0).float().mean() > 0.9  # the failure is real without the guard
    assert (guarded == 0).float().mean() < 0.001
    assert (guarded.sign() == reference.sign()).float().mean() > 0.98
    assert (guarded - reference).norm() / reference.norm() < 0.1  # fp16 accuracy, at the right scale


def test_guard_is_exact_when_nothing_underflows(batch, device):
    """Scaling by a power of two is exact: in bf16 (float32's exponent range) the guarded input gradient
    equals the unguarded one."""
    x, y = batch
    model = small_cnn(0).to(device).eval()
    acc = Accelerator(AccelOptions(amp="bf16"), device)
    acc.prepare(model)
    torch.testing.assert_close(_input_grad(model, x, y, 1.0, acc, attack=True),
                               _input_grad(model, x, y, 1.0, acc, attack=False), rtol=0, atol=0)


METHOD_MODULES = [("rslad", "igdm"), ("adaad", "igdm"), ("ard", "igdm"), ("trades", None)]


def training_step(student, teacher, method_name, module_name, x, y, acc=None, seed=0):
    method = create_method(method_name)
    module = None
    if module_name:
        module = create_module(module_name, alpha=1.0)
    attack = create_attack(method.attack_name, student, teacher=teacher,
                           options={"eps": EPS, "step_size": STEP, "steps": 3})
    if acc is not None:
        attack = acc.wrap_attack(attack)
    torch.manual_seed(seed)
    res = compute_loss(student, teacher, method, module, attack, x, y, epoch=1, epochs=1)
    res.loss.backward()
    return res


@pytest.mark.parametrize(("method", "module"), METHOD_MODULES)
def test_bf16_training_step_is_close_to_fp32(method, module, batch, device):
    x, y = batch
    student, teacher = small_cnn(0).to(device), frozen(small_cnn(1)).to(device)
    s_bf16 = copy.deepcopy(student)
    acc = Accelerator(AccelOptions(amp="bf16"), device)
    acc.prepare(s_bf16)
    t_bf16 = acc.prepare(copy.deepcopy(teacher))
    s_dtypes, _ = conv_calls(s_bf16)
    t_dtypes, _ = conv_calls(t_bf16)
    ref = training_step(student, teacher, method, module, x, y)
    res = training_step(s_bf16, t_bf16, method, module, x, y, acc)
    # every conv call of the step — attack and loss forwards, student and teacher — ran under autocast
    assert s_dtypes and set(s_dtypes) == {torch.bfloat16}
    assert (not t_dtypes and method == "trades") or set(t_dtypes) == {torch.bfloat16}
    assert res.loss.dtype == torch.float32
    assert torch.isfinite(res.loss)
    torch.testing.assert_close(res.loss, ref.loss, rtol=0.05, atol=1e-3)
    assert (res.x_adv - x).abs().max() <= EPS + 1e-6


# -- channels_last -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "module"), METHOD_MODULES)
def test_channels_last_training_step_matches_eager(method, module, batch, device):
    x, y = batch
    student, teacher = small_cnn(0).to(device), frozen(small_cnn(1)).to(device)
    s_cl, t_cl = copy.deepcopy(student), copy.deepcopy(teacher)
    acc = Accelerator(AccelOptions(channels_last=True), device)
    acc.prepare(s_cl)
    acc.prepare(t_cl)
    _, formats = conv_calls(s_cl)
    assert s_cl.net[0].weight.is_contiguous(memory_format=torch.channels_last)
    ref = training_step(student, teacher, method, module, x, y)
    res = training_step(s_cl, t_cl, method, module, x, y, acc)
    assert formats and all(formats)  # every conv saw a channels_last input (attack iterates included)
    torch.testing.assert_close(res.loss, ref.loss, rtol=1e-4, atol=1e-6)
    for (name, p), (_, q) in zip(student.named_parameters(), s_cl.named_parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-6, msg=name)


def test_pass_counts_are_unchanged_by_the_hooks(batch, device):
    x, y = batch
    student, teacher = small_cnn(0).to(device), frozen(small_cnn(1)).to(device)
    acc = Accelerator(AccelOptions(amp="bf16", channels_last=True), device)
    acc.prepare(student)
    acc.prepare(teacher)
    with count_passes(student=student, teacher=teacher) as c:
        training_step(student, teacher, "rslad", "igdm", x, y, acc)
    # 3 attack steps here: student 3 + S(x_adv), S(x), S(x⁻); teacher T(x) + [T(x_adv); T(x⁻)]
    assert c.snapshot()["student"]["forwards"] == 6 and c.snapshot()["teacher"]["forwards"] == 2


def test_paused_and_release_give_plain_fp32_models(batch, device):
    x, y = batch
    model = small_cnn(0).to(device).eval()
    keys = list(model.state_dict())
    with torch.no_grad():
        ref = model(x)
    acc = Accelerator(AccelOptions(amp="bf16", channels_last=True, compile=True), device,
                      compile_backend="eager")
    acc.prepare(model)
    dtypes, _ = conv_calls(model)
    with acc.paused(), torch.no_grad():
        torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-6)
    assert dtypes == [torch.float32] * len(dtypes) and dtypes
    acc.release()
    assert "forward" not in model.__dict__ and not model._forward_hooks and not model._forward_pre_hooks
    assert list(model.state_dict()) == keys  # checkpoints keep their keys


# -- torch.compile -------------------------------------------------------------------------------------------

def _compiled_step_matches_eager(backend, batch, device, method="rslad", module="igdm"):
    x, y = batch
    student, teacher = small_cnn(0, width=4).to(device), frozen(small_cnn(1, width=4)).to(device)
    s_c, t_c = copy.deepcopy(student), copy.deepcopy(teacher)
    acc = Accelerator(AccelOptions(compile=True), device, compile_backend=backend)
    acc.prepare(s_c)
    acc.prepare(t_c)
    ref = training_step(student, teacher, method, module, x, y)
    with count_passes(student=s_c, teacher=t_c) as c:
        res = training_step(s_c, t_c, method, module, x, y, acc)
    assert c.snapshot()["student"]["forwards"] == 6  # hooks stay eager around the compiled forward
    torch.testing.assert_close(res.loss, ref.loss, rtol=1e-4, atol=1e-6)
    for (name, p), (_, q) in zip(student.named_parameters(), s_c.named_parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-6, msg=name)
    acc.release()


def test_compiled_training_step_matches_eager_aot(batch, device):
    """Dynamo + AOTAutograd (what inductor compiles), without code generation: quick on CPU."""
    torch._dynamo.reset()
    _compiled_step_matches_eager("aot_eager", batch, device)


@pytest.mark.slow
def test_compiled_training_step_matches_eager_inductor(batch, device):
    """The real backend: inductor generates C++ on a CPU (about a minute per graph on 2 cores), Triton on
    a GPU."""
    torch._dynamo.reset()
    _compiled_step_matches_eager("inductor", batch, device)


# -- GradScaler step, gpu_data, cudnn_benchmark -------------------------------------------------------------

def test_fp16_step_goes_through_the_grad_scaler(device):
    """The GradScaler multiplies the loss by 2^16 and divides the gradients back before the step, so the
    update equals plain SGD's (the CPU GradScaler by default, the CUDA one with --device cuda)."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4).to(device))
    w_ref = torch.nn.Parameter(w.detach().clone())
    acc = Accelerator(AccelOptions(amp="fp16"), device)
    assert acc.scaler is not None and acc.scaler.get_scale() == 2.0 ** 16
    opt, opt_ref = torch.optim.SGD([w], lr=0.1), torch.optim.SGD([w_ref], lr=0.1)
    seen = []
    w.register_hook(lambda g: seen.append(g.clone()))
    acc.backward_and_step((w ** 2).sum(), opt)
    (w_ref ** 2).sum().backward()
    opt_ref.step()
    torch.testing.assert_close(seen[0], w_ref.grad * 2.0 ** 16)  # the backward saw the scaled loss
    torch.testing.assert_close(w.detach(), w_ref.detach())


def test_gpu_data_is_a_noop_on_cpu():
    x, y = torch.rand(4, 3, 8, 8), torch.arange(4)
    logs = []
    acc = Accelerator(AccelOptions(gpu_data=True, cudnn_benchmark=True), "cpu", log=logs.append)
    x2, y2 = acc.place_data(x, y)
    assert x2 is x and y2 is y
    assert any("gpu_data" in m for m in logs) and any("cudnn_benchmark" in m for m in logs)
    assert torch.backends.cudnn.benchmark is False  # untouched on CPU


def test_gpu_data_and_cudnn_benchmark_on_a_gpu(device):
    """On CUDA the training set moves to the GPU once and its crops and flips run there, giving the same
    images as on the CPU from the same generator; cudnn_benchmark sets the global flag."""
    if device.type != "cuda":
        pytest.skip("needs a GPU (pytest --device cuda); the CPU no-op is tested above")
    from igdm_kit._training.batches import augment
    from igdm_kit.interfaces import DatasetInfo

    x, y = torch.rand(16, 3, 8, 8), torch.arange(16)
    previous = torch.backends.cudnn.benchmark
    try:
        acc = Accelerator(AccelOptions(gpu_data=True, cudnn_benchmark=True), device)
        assert torch.backends.cudnn.benchmark is True
        x2, y2 = acc.place_data(x, y)
    finally:
        torch.backends.cudnn.benchmark = previous
    assert x2.device.type == "cuda" and y2.device.type == "cuda"
    assert torch.equal(x2.cpu(), x) and torch.equal(y2.cpu(), y)
    info = DatasetInfo(num_classes=16, in_channels=3, image_size=8, crop_padding=2, hflip=True)
    on_gpu = augment(x2, info, torch.Generator().manual_seed(0))
    assert on_gpu.device == x2.device
    assert torch.equal(on_gpu.cpu(), augment(x, info, torch.Generator().manual_seed(0)))


def test_gpu_data_refuses_a_set_that_does_not_fit(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1000, 1000))
    acc = Accelerator(AccelOptions(gpu_data=True), "cuda")
    with pytest.raises(RecipeError) as exc:
        acc.place_data(torch.zeros(1000), torch.zeros(10, dtype=torch.long))
    assert exc.value.path == "train.gpu_data"


# -- the engine ----------------------------------------------------------------------------------------------

def test_engine_trains_with_bf16_and_channels_last(write_recipe, tmp_path, device):
    from igdm_kit._storage.checkpoint import load_model
    from igdm_kit._storage.io import read_jsonl
    from igdm_kit._training.engine import run

    text = with_train(DIGITS_PGDAT, 'amp = "bf16"\nchannels_last = true\ncudnn_benchmark = true\n'
                      f'gpu_data = true\ndevice = "{device}"\n')
    text = text.replace("[data]\nname = \"digits\"\n", "[data]\nname = \"digits\"\ntrain_limit = 256\n"
                        "test_limit = 64\n")
    r = R.load(write_recipe(text))
    assert r.resolved()["train"]["amp"] == "bf16"
    logs: list[str] = []
    result = run(r, output_dir=tmp_path / "run", log=logs.append)
    assert any(m.startswith("accelerator: amp=bf16, channels_last") for m in logs)
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert rows and all(torch.isfinite(torch.tensor(row["loss"])) for row in rows)
    model = load_model(tmp_path / "run" / "model.safetensors")  # plain keys, loads into a fresh model
    assert sum(p.numel() for p in model.parameters()) > 0
    assert "clean" in result.results["metrics"]


def _cpu_flags() -> set[str] | None:
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return None
    return {f for line in text.splitlines() if line.startswith("flags") for f in line.split(":")[1].split()}


def test_amp_auto_is_bf16_exactly_where_the_cpu_has_native_bf16():
    """``amp = "auto"``: bf16 where the device computes it natively; the oracle is the kernel's CPU flags."""
    from igdm_kit._runtime.accel import native_bf16, resolve_amp

    flags = _cpu_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo to read the CPU's flags from")
    native = bool({"avx512_bf16", "amx_bf16"} & flags)
    assert native_bf16(torch.device("cpu")) is native
    assert resolve_amp("auto", torch.device("cpu")) == ("bf16" if native else "off")
    assert [resolve_amp(a, torch.device("cpu")) for a in ("off", "bf16")] == ["off", "bf16"]  # explicit wins


def test_amp_auto_is_shown_recorded_and_held_on_resume(write_recipe, tmp_path):
    import json

    from igdm_kit._runtime.accel import resolve_amp
    from igdm_kit._training.engine import run
    from igdm_kit.errors import IgdmKitError

    text = with_train(DIGITS_PGDAT.replace("epochs = 1", "epochs = 2"), 'amp = "auto"\n').replace(
        "[data]\nname = \"digits\"\n", "[data]\nname = \"digits\"\ntrain_limit = 128\ntest_limit = 32\n")
    r = R.load(write_recipe(text))
    chosen = resolve_amp("auto", torch.device("cpu"))
    logs: list[str] = []
    run(r, output_dir=tmp_path / "run", log=logs.append)
    assert any(m.startswith(f"train.amp = auto: {chosen}") for m in logs), logs  # the default that decides, shown
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["amp"] == chosen and manifest["recipe"]["train"]["amp"] == "auto"
    # the run is resumed where auto chooses the other precision: refused, not continued in another one
    other = "off" if chosen == "bf16" else "bf16"
    (tmp_path / "run" / "manifest.json").write_text(json.dumps({**manifest, "amp": other}))
    (tmp_path / "run" / "results.json").unlink()
    with pytest.raises(IgdmKitError, match=f"started with amp {other}") as exc:
        run(r, output_dir=tmp_path / "run", resume=True, log=logs.append)
    assert "--overwrite" in exc.value.hint
