"""One training step's inputs and forward passes, computed at most once each.

``Step`` implements ``interfaces.StepContext``. Methods and gradient modules ask it for
``student(name)``/``teacher(name)`` logits of the step inputs ``x``, ``x_adv``, ``x_plus``, ``x_minus``:

* each distinct (model, input) is evaluated once per step and shared: with β = 1, x⁺ *is* x_adv, so S(x⁺)
  is S(x_adv) and T(x⁺) is T(x_adv) (an alias, not a second forward);
* the teacher evaluates every input the step declared (and that exists at that moment) in one batched
  forward — the teacher is in eval mode, so batching does not change its outputs;
* with ``cache=False`` (engine option ``reference_passes``) every request is a separate forward, as the
  reference implementations do; the numbers are the same, the BatchNorm running statistics are not.
  S(x⁺) is the exception: the references evaluate it once per step, and the IGDM reference's ARD script
  uses that one forward for the KD term as well, so a method that asks for ``x_plus`` shares the module's.

The cached teacher logits are read-only (R7): their version counters are recorded, and reading one after an
in-place change, or ``check_teacher_unchanged`` after the method's loss, raises ``IgdmKitError``;
``teacher_transformed`` hands a transform a copy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from igdm_kit.errors import IgdmKitError


class _TeacherCache:
    """One teacher's logits of this step: its declared inputs in one batched forward, read-only (R7)."""

    def __init__(self, model: nn.Module, declared: Iterable[str], label: str) -> None:
        self.model, self.declared, self.label = model, list(dict.fromkeys(declared)), label
        self.t: dict[str, torch.Tensor] = {}
        self.version: dict[str, int] = {}  # each cached tensor's version when it was cached

    def get(self, step: Step, key: str) -> torch.Tensor:
        if step.cache and key in self.t:
            self.check(key)
            return self.t[key]
        if not step.cache:
            with torch.no_grad():
                return self.model(step.input(key))
        pending = [key] + [step._canonical(n) for n in self.declared]
        pending = [k for k in dict.fromkeys(pending) if k not in self.t and step.has_input(k)]
        with torch.no_grad():
            out = self.model(torch.cat([step.input(k) for k in pending]))
        for k, chunk in zip(pending, out.split([step.input(k).shape[0] for k in pending]), strict=True):
            self.t[k], self.version[k] = chunk, chunk._version
        return self.t[key]

    def check(self, key: str) -> None:
        if self.t[key]._version != self.version[key]:
            raise IgdmKitError(
                f"the cached teacher logits {self.label}({key}) were changed in place during the step",
                "they are shared with the gradient module: transform a copy "
                "(StepContext.teacher_transformed, or out-of-place operations)")


class Step:
    def __init__(self, student: nn.Module, teacher: nn.Module | None, x: torch.Tensor, y: torch.Tensor,
                 *, epoch: int, epochs: int, teacher_inputs: Iterable[str] = (), cache: bool = True,
                 teachers: dict[str, nn.Module] | None = None, role_inputs: dict[str, Iterable[str]] | None = None,
                 mean_over_ranks: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 peer: nn.Module | None = None) -> None:
        self._student_model, self._teacher_model = student, teacher
        self.x, self.y, self.epoch, self.epochs = x, y, epoch, epochs
        self.cache = cache
        #: reference_passes mode: methods also run the forwards of zero-weight terms, as the reference code
        self.reference = not cache
        self._inputs: dict[str, torch.Tensor] = {"x": x}
        self._alias: dict[str, str] = {}
        self._s: dict[str, torch.Tensor] = {}
        self._s_plus: torch.Tensor | None = None  # S(x⁺) under cache=False, by its own name
        self._teachers: dict[str | None, _TeacherCache] = {}
        if teacher is not None:
            self._teachers[None] = _TeacherCache(teacher, teacher_inputs, "T")
        for role, model in (teachers or {}).items():
            self._teachers[role] = _TeacherCache(model, (role_inputs or {}).get(role, ()), f"T_{role}")
        self._mean = mean_over_ranks or (lambda v: v)
        self._peer, self._p = peer, {}
        self._attack_outputs: dict[str, torch.Tensor] = {}

    # -- inputs -------------------------------------------------------------------------------------
    def set_input(self, name: str, value: torch.Tensor | None = None, *, alias_of: str | None = None) -> None:
        """Define a step input, either as a tensor or as another name for an existing input."""
        if alias_of is not None:
            self._alias[name] = self._canonical(alias_of)
        else:
            assert value is not None
            self._inputs[name] = value

    def _canonical(self, name: str) -> str:
        return self._alias.get(name, name)

    def input(self, name: str) -> torch.Tensor:
        key = self._canonical(name)
        if key not in self._inputs:
            raise KeyError(f"step input {name!r} is not defined yet (defined: {sorted(self._inputs)})")
        return self._inputs[key]

    def has_input(self, name: str) -> bool:
        return self._canonical(name) in self._inputs

    # -- forwards -----------------------------------------------------------------------------------
    def student(self, name: str) -> torch.Tensor:
        """Student logits (train mode, with gradients) on a step input."""
        key = self._canonical(name)
        if self.cache and key in self._s:
            return self._s[key]
        if not self.cache and name == "x_plus" and self._s_plus is not None:
            return self._s_plus
        out = self._student_model(self.input(key))
        if self.cache:
            self._s[key] = out
        elif name == "x_plus":
            self._s_plus = out
        return out

    def cached_student(self, name: str) -> torch.Tensor | None:
        """The student logits this step already computed on ``name``, if any (never a new forward)."""
        return self._s.get(self._canonical(name))

    def teacher(self, name: str, role: str | None = None) -> torch.Tensor:
        """Teacher logits (eval mode, no gradients) on a step input — of ``[teacher]``, or of the teacher of
        ``role`` — each teacher's declared inputs batched into one forward."""
        if role not in self._teachers:
            raise RuntimeError("this step has no teacher; the method or module needs one" if role is None else
                               f"this step has no {role!r} teacher; the method must list it in teacher_roles")
        return self._teachers[role].get(self, self._canonical(name))

    def peer(self, name: str) -> torch.Tensor:
        """Peer logits (train mode, with gradients) on a step input (R2), once per step."""
        if self._peer is None:
            raise RuntimeError("this step has no peer; the method must set needs_peer")
        key = self._canonical(name)
        if key not in self._p or not self.cache:
            self._p[key] = self._peer(self.input(key))
        return self._p[key]

    def peer_eval(self, name: str) -> torch.Tensor:
        """Peer logits in eval mode without gradients; the peer's modes are restored."""
        if self._peer is None:
            raise RuntimeError("this step has no peer; the method must set needs_peer")
        modes = [(m, m.training) for m in self._peer.modules()]
        self._peer.eval()
        try:
            with torch.no_grad():
                return self._peer(self.input(name))
        finally:
            for m, mode in modes:
                m.training = mode

    def mean_over_ranks(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` averaged over the torchrun ranks (on the device; themselves in one process)."""
        return self._mean(values.detach())

    def teacher_transformed(self, name: str, transform: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
                            ) -> torch.Tensor:
        """``transform(copy of T(name), y)``: a teacher-output transform that leaves the cache untouched."""
        return transform(self.teacher(name).clone(), self.y)

    def check_teacher_unchanged(self) -> None:
        """Raise if a cached teacher tensor was modified in place (called after the method's loss)."""
        for cache in self._teachers.values():
            for key in cache.t:
                cache.check(key)

    def has_teacher(self) -> bool:
        return None in self._teachers

    def set_attack_outputs(self, outputs: dict[str, torch.Tensor]) -> None:
        """Record the attack's per-sample side outputs of this step (``TrainingAttack.side_outputs``)."""
        self._attack_outputs = dict(outputs)

    def attack_output(self, name: str) -> torch.Tensor:
        if name not in self._attack_outputs:
            raise IgdmKitError(f"the step's attack reported no side output {name!r} "
                               f"(reported: {sorted(self._attack_outputs) or 'none'})",
                               "use an attack that lists it in its `outputs`")
        return self._attack_outputs[name]

    def input_gradient(self, model: str, name: str, *, create_graph: bool = False) -> torch.Tensor:
        """∇ of the summed per-sample CE(f(x), y) w.r.t. a step input, for ``"student"`` or ``"teacher"``.

        A forward and backward pass of its own (never cached): with ``create_graph`` the gradient can be
        differentiated again (double backprop, for a loss that trains the student on it). The teacher's is
        a constant; its parameters are never differentiated.
        """
        from igdm_kit.losses import input_gradient

        if model not in ("student", "teacher"):
            raise ValueError(f"model must be 'student' or 'teacher', not {model!r}")
        net = self._student_model if model == "student" else self._teacher_model
        if net is None:
            raise RuntimeError("this step has no teacher; the method or module needs one")
        return input_gradient(net, self.input(name), self.y, create_graph=create_graph)

    def set_teacher_logits(self, name: str, logits: torch.Tensor) -> None:
        """Record teacher logits computed elsewhere (e.g. T(x) the attack needed), to share them."""
        if self.cache:
            key, cache = self._canonical(name), self._teachers[None]
            cache.t[key] = logits.detach()
            cache.version[key] = cache.t[key]._version
