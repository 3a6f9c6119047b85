"""Accelerator options of ``[train]``: mixed precision, channels_last, torch.compile, cudnn benchmark and a
GPU-resident training set (issue 7). All are off by default; ``validate`` rejects combinations that cannot
work, naming the ``train.*`` key.

How they reach every forward. The attacks (torchattacks' and ours), the step context and the ``direct``
module all call the student and the teacher directly, so instead of wrapping call sites the
``Accelerator`` installs a forward pre-hook and a forward hook on each model (``prepare``):

* ``channels_last``: the parameters are converted once, and every input is made channels_last in the
  pre-hook (x, every attack iterate z, x⁻, ...).
* ``amp = "bf16" | "fp16"``: the model's forward runs under ``torch.autocast`` and its logits are cast back
  to float32 in the hook. Every loss — the attack objectives (CE, KL), the base methods' and the modules'
  — is therefore computed in float32 *from the logits*; only the networks run in half precision.
  ``fp16`` also uses ``torch.amp.GradScaler`` for the outer loss (``backward_and_step``).
* ``compile``: ``model.forward`` is replaced by ``torch.compile(model.forward)``; the hooks stay eager
  around it, so pass counting and autocast work the same. (``nn.Module.compile`` would trace the hooks.)

The model objects keep their identity and their ``state_dict`` (no ``_orig_mod.`` prefix), so the
optimizer, checkpoints and resume are unaffected; ``paused()`` runs them as plain fp32 eager modules (per
epoch clean accuracy) and ``release()`` removes everything before the final evaluation, so reported
robust accuracies are never measured in half precision.

Attack gradients under half precision (the sign(0) guard). An attack step is
z ← Proj(z + η·sign(∇_z L)). Under fp16 the backward through the network runs in fp16, whose smallest
subnormal is 6e-8: the gradient of a batch-mean objective (∝ 1/B) underflows to exactly 0 in some or all
entries, and sign(0) = 0 stalls those pixels (``test_accel`` shows > 90 % zeros for a small objective).
While an attack runs (``wrap_attack``), every forward whose input requires a gradient is wrapped in a pair
of autograd functions: at the logits the incoming float32 gradient g is multiplied by
s = 2^⌊log₂(256 / max|g|)⌋ *before* it is cast to half precision, and at the (float32) input the gradient
is divided by s again. Powers of two scale exactly, so ∇_z L is unchanged up to rounding, while the
half-precision backward runs at the magnitude a GradScaler would give it (max |∂L/∂logits| = 256: far
from underflow, and s < 1 when g is large, so overflow is as unlikely as under a GradScaler). The scale
is chosen per call from the gradient itself, so no retry is needed. Attacks only ask for ∇_z
(``torch.autograd.grad`` w.r.t. the input), so the parameter gradients the scale also touches are never
used. bf16 has float32's exponent range and does not underflow; the guard runs for it too (it is exact
and cheap). ``fp16`` is refused with the ``direct`` module, whose double-backprop input gradient is
computed outside the attack and is not scaled. ``cudnn_benchmark`` sets the process-global
``torch.backends.cudnn.benchmark``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

import torch
from torch import nn

from igdm_kit.errors import RecipeError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: max |∂L/∂logits| after the attack-gradient scaling (GradScaler's 2^16 on a batch-mean loss of batch
#: 128 lands in the same range).
ATTACK_GRAD_TARGET = 256.0
_MAX_EXP = 60.0


@dataclass(frozen=True)
class AccelOptions:
    """The accelerator keys of ``[train]`` (usable without a recipe: tests, the benchmark)."""

    amp: Literal["off", "bf16", "fp16", "auto"] = "off"
    channels_last: bool = False
    compile: bool = False
    cudnn_benchmark: bool = False
    gpu_data: bool = False

    @classmethod
    def from_train(cls, train: Any) -> AccelOptions:
        return cls(**{f.name: getattr(train, f.name) for f in fields(cls)})

    def enabled(self) -> list[str]:
        """The options that are on, e.g. ``["amp=bf16", "channels_last"]``."""
        out = [f"amp={self.amp}"] if self.amp != "off" else []
        return out + [f.name for f in fields(self) if f.name != "amp" and getattr(self, f.name)]


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively: a CUDA GPU that supports it (Ampere on), or a CPU with
    AVX-512 BF16 or AMX (oneDNN's bf16 kernels; elsewhere bf16 is emulated and slower than fp32)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        try:  # torch's own CPU-capability probes (private, so guarded: a torch without them says no)
            return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
        except AttributeError:
            return False
    return False


def resolve_amp(amp: str, device: torch.device) -> str:
    """``train.amp`` as the run uses it: ``auto`` is bf16 where the device has native bf16, else off; an
    explicit value is kept."""
    return ("bf16" if native_bf16(device) else "off") if amp == "auto" else amp


def validate(options: AccelOptions, device: torch.device | str, *, module: Any = None) -> None:
    """Raise ``RecipeError`` (path ``train.<key>``) for an option the device or the recipe cannot use.

    ``module``: the recipe's gradient module (a registered name, its class or an instance), whose
    ``supports_fp16`` / ``supports_compile`` say what it cannot run under."""
    device = torch.device(device)
    name = f"module {module!r}" if isinstance(module, str) else f"module {type(module).__name__}"
    if isinstance(module, str):
        from igdm_kit._plugins.manager import registry

        module = registry("module").get(module)
    if options.amp != "off":
        if device.type not in ("cpu", "cuda"):
            raise RecipeError(f"train.amp = {options.amp!r} is not supported on device {device.type!r}",
                              "use amp = \"off\"", path="train.amp")
        if options.amp == "fp16" and device.type != "cuda":
            raise RecipeError(f"train.amp = \"fp16\" needs a CUDA device, but this run is on {device.type}",
                              "use amp = \"bf16\" on CPU (or \"off\")", path="train.amp")
        if options.amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise RecipeError("train.amp = \"bf16\": this GPU does not support bfloat16",
                              "use amp = \"fp16\"", path="train.amp")
        if options.amp == "fp16" and module is not None and not module.supports_fp16:
            raise RecipeError(f"train.amp = \"fp16\" cannot be used with {name} (its input gradients "
                              "are not loss-scaled and would underflow)", "use amp = \"bf16\"",
                              path="train.amp")
    if options.compile:
        if not hasattr(torch, "compile"):
            raise RecipeError("train.compile: this PyTorch has no torch.compile", "set compile = false",
                              path="train.compile")
        if module is not None and not module.supports_compile:
            raise RecipeError(f"train.compile cannot be used with {name} (torch.compile does not "
                              "support its double backward)", "set compile = false", path="train.compile")


# -- the attack-gradient guard -------------------------------------------------------------------------------

class _ScaleState:
    __slots__ = ("scale",)

    def __init__(self) -> None:
        self.scale: torch.Tensor | None = None


class _ScaleGradAtLogits(torch.autograd.Function):
    """Identity; backward multiplies the (float32) logit gradient by a power of two s and records s."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, state: _ScaleState) -> torch.Tensor:
        ctx.state = state
        return logits.view_as(logits)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        amax = grad.detach().abs().amax().float()
        ok = torch.isfinite(amax) & (amax > 0)
        exp = torch.floor(torch.log2(ATTACK_GRAD_TARGET / torch.where(ok, amax, torch.ones_like(amax))))
        scale = torch.where(ok, torch.exp2(exp.clamp(-_MAX_EXP, _MAX_EXP)), torch.ones_like(amax))
        ctx.state.scale = scale
        return grad * scale.to(grad.dtype), None


class _UnscaleGradAtInput(torch.autograd.Function):
    """Identity; backward divides the (float32) input gradient by the s its forward's logits recorded."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, state: _ScaleState) -> torch.Tensor:
        ctx.state = state
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        scale = ctx.state.scale
        return (grad if scale is None else grad / scale.to(grad.dtype)), None


class _AttackInAttackMode:
    """Calls the attack with the accelerator's attack mode on; everything else is the attack's."""

    def __init__(self, attack: Any, accel: Accelerator) -> None:
        self.__dict__["_attack"] = attack
        self.__dict__["_accel"] = accel

    def __call__(self, *args, **kwargs):
        with self._accel.attack_mode():
            return self._attack(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._attack, name)


# -- the accelerator ---------------------------------------------------------------------------------------

class Accelerator:
    """Applies ``AccelOptions`` to the models, the attack, the optimizer step and the training set.

    ``compile_backend`` is for tests (``"aot_eager"`` traces like inductor without generating code).
    """

    def __init__(self, options: AccelOptions | None = None, device: torch.device | str = "cpu", *,
                 compile_backend: str = "inductor", log: Callable[[str], None] = lambda s: None) -> None:
        self.options = options or AccelOptions()
        self.device = torch.device(device)
        self.dtype = AMP_DTYPES.get(self.options.amp)
        self.compile_backend = compile_backend
        self.log = log
        self.scaler = torch.amp.GradScaler(self.device.type) if self.options.amp == "fp16" else None
        self._in_attack = False
        self._paused = False
        self._prepared: list[tuple[nn.Module, list[Any], bool]] = []
        if self.options.cudnn_benchmark:
            if self.device.type == "cuda":
                torch.backends.cudnn.benchmark = True
            else:
                log("train.cudnn_benchmark has no effect on CPU")

    @classmethod
    def from_train(cls, train: Any, device: torch.device | str, *, module: Any = None,
                   log: Callable[[str], None] = lambda s: None) -> Accelerator:
        """Validate the recipe's ``[train]`` accelerator keys for ``device`` and build the accelerator
        (``amp = "auto"`` resolved for it, and said)."""
        options = AccelOptions.from_train(train)
        if options.amp == "auto":
            chosen = resolve_amp("auto", torch.device(device))
            log(f"train.amp = auto: {chosen} on {torch.device(device).type} (native bf16: "
                f"{'yes' if chosen == 'bf16' else 'no'}); the final evaluation is fp32 either way")
            options = replace(options, amp=chosen)
        validate(options, device, module=module)
        if options.enabled():
            log("accelerator: " + ", ".join(options.enabled()))
        return cls(options, device, log=log)

    # -- models --------------------------------------------------------------------------------------------
    def prepare(self, model: nn.Module | None) -> nn.Module | None:
        """Apply channels_last, autocast and compile to ``model`` in place (the same object is returned)."""
        if model is None:
            return None
        o = self.options
        handles: list[Any] = []
        if o.channels_last:
            model.to(memory_format=torch.channels_last)
        if o.channels_last or self.dtype is not None:
            stack: list[tuple[Any, bool]] = []
            handles.append(model.register_forward_pre_hook(self._pre_hook(stack)))
            handles.append(model.register_forward_hook(self._post_hook(stack), always_call=True))
        if o.compile:
            eager = model.forward
            compiled = torch.compile(eager, backend=self.compile_backend)

            def forward(*args, **kwargs):
                return eager(*args, **kwargs) if self._paused else compiled(*args, **kwargs)

            model.forward = forward  # an instance attribute: ``del model.forward`` restores the class's
        self._prepared.append((model, handles, o.compile))
        return model

    def _pre_hook(self, stack: list):
        def hook(module, args):
            if self._paused or not args or not torch.is_tensor(args[0]):
                stack.append((None, None))
                return None
            x = args[0]
            if self.options.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            state = None
            if self.dtype is not None and self._in_attack and x.requires_grad and torch.is_grad_enabled():
                state = _ScaleState()
                x = _UnscaleGradAtInput.apply(x, state)
            ctx = None
            if self.dtype is not None:
                ctx = torch.autocast(device_type=self.device.type, dtype=self.dtype)
                ctx.__enter__()
            stack.append((ctx, state))
            return (x, *args[1:])

        return hook

    def _post_hook(self, stack: list):
        def hook(module, args, output):
            ctx, state = stack.pop()
            if ctx is not None:
                ctx.__exit__(None, None, None)
                if torch.is_tensor(output) and output.is_floating_point():
                    output = output.float()  # losses (attack objectives included) in float32
            if state is not None and torch.is_tensor(output) and output.requires_grad:
                output = _ScaleGradAtLogits.apply(output, state)
            return output

        return hook

    @contextmanager
    def attack_mode(self) -> Iterator[None]:
        """Forwards inside get the attack-gradient guard (see the module docstring)."""
        previous, self._in_attack = self._in_attack, True
        try:
            yield
        finally:
            self._in_attack = previous

    def wrap_attack(self, attack: Any) -> Any:
        """The attack, called in ``attack_mode`` when mixed precision is on (else unchanged)."""
        return attack if self.dtype is None else _AttackInAttackMode(attack, self)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Run the prepared models as plain fp32 eager modules inside (e.g. for evaluation)."""
        previous, self._paused = self._paused, True
        try:
            yield
        finally:
            self._paused = previous

    def release(self) -> None:
        """Remove hooks and compiled forwards (parameters stay in their memory format)."""
        for model, handles, compiled in self._prepared:
            for h in handles:
                h.remove()
            if compiled and "forward" in model.__dict__:
                del model.forward
        self._prepared.clear()

    # -- optimizer step ----------------------------------------------------------------------------------
    def backward_and_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                          before_step: Callable[[], None] | None = None,
                          also: tuple[torch.optim.Optimizer, ...] = ()) -> None:
        """``loss.backward(); optimizer.step()``, through the GradScaler under fp16 (it skips the step
        when the scaled gradients overflow and adapts the scale). ``before_step`` runs between the two
        without a scaler (the trainer's check of the gradients); ``also``: more optimizers the one backward
        feeds (a trained peer's), stepped after ``optimizer``, under one scale update."""
        if self.scaler is None:
            loss.backward()
            if before_step is not None:
                before_step()
            for opt in (optimizer, *also):
                opt.step()
            return
        self.scaler.scale(loss).backward()
        for opt in (optimizer, *also):
            self.scaler.step(opt)
        self.scaler.update()

    # -- data --------------------------------------------------------------------------------------------
    def place_data(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """With ``gpu_data`` on CUDA, move the training set to the device once (augmentation then runs
        there, ``igdm_kit._training.batches`` works on tensors); a clear error if it does not fit. No-op on CPU."""
        if not self.options.gpu_data:
            return x, y
        if self.device.type != "cuda":
            self.log("train.gpu_data has no effect on CPU (the data already lives in host memory)")
            return x, y
        need = x.numel() * x.element_size() + y.numel() * y.element_size()
        free, _ = torch.cuda.mem_get_info(self.device)
        # keep at least half of the free memory for the models, activations and the attack
        if need > free // 2:
            raise RecipeError(f"train.gpu_data: the training set needs {need / 2**30:.2f} GiB but the GPU "
                              f"has {free / 2**30:.2f} GiB free (at most half of it is used for data)",
                              "set gpu_data = false (or train_limit)", path="train.gpu_data")
        return x.to(self.device), y.to(self.device)
