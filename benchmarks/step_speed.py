"""Time igdm-kit training steps: the default (fewest passes) path against ``reference_passes``, and the
accelerator options of ``[train]`` (issue 7).

One step = fetch a batch (index + random crop/flip, from host memory or, with gpu_data, from the device)
+ the attack + the loss (``igdm_kit._training.loss.compute_loss``) + backward + SGD step, exactly what
``igdm_kit._training.engine.run`` does per step. For every method × module and variant it reports the pass counts
(``igdm_kit._training.passes``), the FLOPs of one step, the median ms/step over ``--repeats`` after ``--warmup``
steps, images/s and speedups; variants are timed interleaved, so a drifting machine load hits them alike.
On CUDA it also projects seconds per CIFAR epoch (50,000 images / batch size × ms/step) and reports each
variant's peak GPU memory (``memory_fields``); ``benchmarks/device_check.py`` runs it on a GPU in one
command.

    python benchmarks/step_speed.py --quick                       # smoke test, seconds
    python benchmarks/step_speed.py --methods rslad+igdm,adaad+igdm --student-opt width=32 --out cpu.json
    python benchmarks/step_speed.py --out h100.json               # on a GPU: resnet18 / wrn-28-10, CIFAR-100

Predicted speedup of the default path = FLOPs(reference) / FLOPs(default): the passes it saves, each
weighted by its cost (measured with ``torch.utils.flop_counter``; batching the teacher saves no FLOPs, only
per-call overhead).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from igdm_kit._runtime.threads import prepare_environment

prepare_environment()  # before torch loads: OpenMP threads sleep, not spin, while they wait (busy machines)

import torch

from igdm_kit._runtime import threads
from igdm_kit._runtime.accel import Accelerator, AccelOptions, native_bf16, validate
from igdm_kit.factories import create_attack, create_method, create_model, create_module, list_models
from igdm_kit._training.batches import augment
from igdm_kit.errors import IgdmKitError
from igdm_kit.interfaces import DatasetInfo
from igdm_kit._training.passes import count_passes
from igdm_kit._training.loss import compute_loss

CIFAR_TRAIN = 50_000
DEFAULT_METHODS = "rslad+igdm,adaad+igdm,ard+igdm,pgd-at+igdm"


@dataclass
class Variant:
    name: str
    cache: bool = True
    accel: AccelOptions = field(default_factory=AccelOptions)
    baseline: str | None = None  # the variant its speedup is measured against


def variants_for(device: torch.device, names: list[str] | None) -> list[Variant]:
    known = {
        "default": Variant("default", baseline="reference"),
        "reference": Variant("reference", cache=False),
        "bf16": Variant("bf16", accel=AccelOptions(amp="bf16"), baseline="default"),
        "bf16+channels_last": Variant("bf16+channels_last", accel=AccelOptions(amp="bf16", channels_last=True),
                                      baseline="default"),
        "fp16": Variant("fp16", accel=AccelOptions(amp="fp16"), baseline="default"),
        "channels_last": Variant("channels_last", accel=AccelOptions(channels_last=True), baseline="default"),
        "compile": Variant("compile", accel=AccelOptions(compile=True), baseline="default"),
        "cudnn_benchmark": Variant("cudnn_benchmark", accel=AccelOptions(cudnn_benchmark=True),
                                   baseline="default"),
        "gpu_data": Variant("gpu_data", accel=AccelOptions(gpu_data=True), baseline="default"),
        "fast": Variant("fast", accel=AccelOptions(amp="bf16", channels_last=True, compile=True,
                                                   cudnn_benchmark=True), baseline="default"),
        "fast+gpu_data": Variant("fast+gpu_data", accel=AccelOptions(amp="bf16", channels_last=True,
                                                                     compile=True, cudnn_benchmark=True,
                                                                     gpu_data=True), baseline="default"),
    }
    if names is None:  # bf16 wherever the device has it natively (amp = "auto" would choose it)
        names = ["default", "reference"] + (["bf16", "fp16", "channels_last", "compile", "cudnn_benchmark",
                                             "gpu_data", "fast", "fast+gpu_data"] if device.type == "cuda" else
                                            ["bf16", "bf16+channels_last"] if native_bf16(device) else [])
    unknown = [n for n in names if n not in known]
    if unknown:
        sys.exit(f"unknown variant(s) {unknown}; known: {', '.join(known)}")
    out = [known[n] for n in names]
    for v in out:
        validate(v.accel, device)  # e.g. fp16 on CPU: a clear error naming train.amp
    return out


def parse_opts(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


class Runner:
    """One variant of one method × module: its own student, teacher, attack, optimizer and data."""

    def __init__(self, variant: Variant, args, spec: str, student0, teacher0, data, device, info) -> None:
        self.variant, self.device, self.info = variant, device, info
        method_name, _, module_name = spec.partition("+")
        self.acc = Accelerator(variant.accel, device)
        self.student = self.acc.prepare(copy.deepcopy(student0))
        self.teacher = self.acc.prepare(copy.deepcopy(teacher0))
        self.method = create_method(method_name)
        self.module = create_module(module_name, alpha=args.alpha) if module_name else None
        attack = create_attack(self.method.attack_name, self.student, teacher=self.teacher,
                               options={"steps": args.attack_steps})
        self.attack = self.acc.wrap_attack(attack)
        # a method that trains a peer (R2, PeerAiD): a copy of the student's architecture, with its own SGD
        self.peer = self.acc.prepare(copy.deepcopy(student0)) if self.method.needs_peer else None
        params = [*self.student.parameters(), *(self.peer.parameters() if self.peer is not None else [])]
        self.opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)
        self.x, self.y = self.acc.place_data(*data)
        self.batch = args.batch_size
        self.gen = torch.Generator().manual_seed(0)
        self.times: list[float] = []
        self.peaks: list[int] = []  # CUDA: bytes above the allocation at the start of each timed step

    def step(self) -> None:
        idx = torch.randint(0, self.x.shape[0], (self.batch,), generator=self.gen)
        x = augment(self.x[idx], self.info, self.gen).to(self.device, non_blocking=True)
        y = self.y[idx].to(self.device, non_blocking=True)
        self.student.train()
        if self.peer is not None:
            self.peer.train()
        self.opt.zero_grad(set_to_none=True)
        res = compute_loss(self.student, self.teacher, self.method, self.module, self.attack, x, y,
                           epoch=1, epochs=1, cache=self.variant.cache,
                           teachers={role: self.teacher for role in self.method.teacher_roles},  # R1: the same model
                           peer=self.peer)
        self.acc.backward_and_step(res.loss, self.opt)

    def timed_step(self) -> None:
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            start = torch.cuda.memory_allocated(self.device)
        sync(self.device)
        t0 = time.perf_counter()
        self.step()
        sync(self.device)
        self.times.append(time.perf_counter() - t0)
        if cuda:
            self.peaks.append(torch.cuda.max_memory_allocated(self.device) - start)

    def counted_step(self) -> dict[str, Any]:
        with count_passes(student=self.student, teacher=self.teacher) as c:
            self.step()
        return c.snapshot()

    def flops(self) -> int | None:
        if self.variant.accel != AccelOptions():
            return None  # the same passes as its baseline; FlopCounterMode does not see compiled graphs
        from torch.utils.flop_counter import FlopCounterMode

        fc = FlopCounterMode(display=False)
        # Its per-module tracker hooks break ``autograd.grad`` w.r.t. a leaf (every attack step); only
        # the global total is needed, so the tracker is replaced by one that attributes all to "Global".
        fc.mod_tracker = _GlobalOnly()
        with fc:
            self.step()
        return fc.get_total_flops()


def resident_bytes(r: Runner) -> int:
    """Bytes a runner keeps on its device between steps: both models' parameters, buffers and gradients,
    the optimizer's state and (gpu_data) the training set; each storage counted once."""
    tensors = [*r.student.parameters(), *r.student.buffers(), *r.teacher.parameters(), *r.teacher.buffers(),
               *(p.grad for p in r.student.parameters() if p.grad is not None),
               *(v for state in r.opt.state.values() for v in state.values() if torch.is_tensor(v)), r.x, r.y]
    seen: set[int] = set()
    total = 0
    for t in tensors:
        storage = t.untyped_storage()
        if t.device.type != r.device.type or storage.data_ptr() in seen:
            continue
        seen.add(storage.data_ptr())
        total += storage.nbytes()
    return total


def memory_fields(r: Runner) -> dict[str, Any]:
    """Peak GPU memory of one step of this variant as if it ran alone: its resident tensors plus the most
    its timed steps allocated above what was allocated when they started (CUDA only; None on CPU)."""
    if not r.peaks:
        return {"peak_mem_bytes": None, "step_mem_bytes": None, "resident_mem_bytes": None}
    resident = resident_bytes(r)
    return {"peak_mem_bytes": resident + max(r.peaks), "step_mem_bytes": max(r.peaks),
            "resident_mem_bytes": resident}


class _GlobalOnly:
    parents = ("Global",)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default=DEFAULT_METHODS,
                   help=f"comma-separated method[+module] (default {DEFAULT_METHODS})")
    p.add_argument("--student", help="student model (default: small-cnn on CPU, resnet18 on CUDA)")
    p.add_argument("--teacher", help="teacher model (default: small-cnn on CPU, wrn-28-10 on CUDA)")
    p.add_argument("--student-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="student model option, e.g. width=32 (repeatable)")
    p.add_argument("--teacher-opt", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--batch-size", type=int, help="default 32 on CPU, 128 on CUDA")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--classes", type=int, help="default 10 on CPU, 100 on CUDA (CIFAR-100)")
    p.add_argument("--attack-steps", type=int, default=10, help="K (default 10)")
    p.add_argument("--alpha", type=float, default=1.0, help="module weight (default 1)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant (compile: at least 3)")
    p.add_argument("--repeats", type=int, default=10, help="timed steps per variant (median reported)")
    p.add_argument("--variants", help="comma-separated: default,reference,bf16,fp16,channels_last,compile,"
                   "cudnn_benchmark,gpu_data,fast,fast+gpu_data (default: default,reference; all on CUDA)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: as igdm-kit's --threads: "
                   "IGDM_KIT_THREADS, OMP_NUM_THREADS, else the physical cores available)")
    p.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (smoke test)")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args(argv)

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto"
                          else args.device)
    cuda = device.type == "cuda"
    load_note = set_threads(args.threads)
    big = {"student": "resnet18", "teacher": "wrn-28-10"}
    for role in ("student", "teacher"):
        if getattr(args, role) is None:
            setattr(args, role, big[role] if cuda and big[role] in list_models() else "small-cnn")
    args.batch_size = args.batch_size or (128 if cuda else 32)
    args.classes = args.classes or (100 if cuda else 10)
    if args.quick:
        args.batch_size, args.image_size, args.warmup, args.repeats = 8, 16, 1, 3
        if not cuda:
            args.student_opt = args.student_opt or ["width=8"]
            args.teacher_opt = args.teacher_opt or ["width=8"]
    try:
        variants = variants_for(device, args.variants.split(",") if args.variants else None)
    except IgdmKitError as exc:
        sys.exit(f"error: {exc}")

    torch.manual_seed(0)
    kw = dict(num_classes=args.classes, in_channels=3, image_size=args.image_size)
    student0 = create_model(args.student, **kw, **parse_opts(args.student_opt)).to(device)
    teacher0 = create_model(args.teacher, **kw, **parse_opts(args.teacher_opt)).to(device).eval()
    for q in teacher0.parameters():
        q.requires_grad_(False)
    n = max(8 * args.batch_size, 1024)
    data = (torch.rand(n, 3, args.image_size, args.image_size), torch.randint(0, args.classes, (n,)))
    if cuda:
        data = (data[0].pin_memory(), data[1].pin_memory())
    info = DatasetInfo(num_classes=args.classes, in_channels=3, image_size=args.image_size,
                       crop_padding=4, hflip=True)

    rows: list[dict[str, Any]] = []
    for spec in args.methods.split(","):
        runners = [Runner(v, args, spec, student0, teacher0, data, device, info) for v in variants]
        for r in runners:
            r.passes = r.counted_step()
            r.flop_count = r.flops()
            for _ in range(max(args.warmup, 3 if r.variant.accel.compile else 0)):
                r.step()
        for _ in range(args.repeats):  # interleaved: load changes hit every variant alike
            for r in runners:
                r.timed_step()
        by_name = {r.variant.name: r for r in runners}
        for r in runners:
            ms = 1000 * statistics.median(r.times)
            row = {"method": spec, "variant": r.variant.name, "accel": asdict(r.variant.accel),
                   "reference_passes": not r.variant.cache, "passes": r.passes, "flops": r.flop_count,
                   "ms_per_step": ms, "ms_min": 1000 * min(r.times), "ms_all": [1000 * t for t in r.times],
                   "images_per_s": args.batch_size / ms * 1000, "baseline": r.variant.baseline}
            row.update(memory_fields(r))
            default = by_name.get("default")  # bf16 and the layouts do the same FLOPs as the default path
            work = r.flop_count or (default.flop_count if default is not None else None)
            if work:
                row["gflop_per_s"] = work / 1e9 / (ms / 1000)
            ref = by_name.get("reference")
            if ref is not None and r is not ref:  # every variant against the reference code's composition
                row["speedup_vs_reference"] = statistics.median(
                    sorted(b / t for b, t in zip(ref.times, r.times, strict=True)))
            base = by_name.get(r.variant.baseline)
            if base is not None:
                # The repeats are interleaved, so repeat i of both variants ran under the same machine
                # load: the median of the paired ratios is robust to load drifting during the run, and
                # their interquartile range is the noise of the speedup.
                paired = sorted(b / t for b, t in zip(base.times, r.times, strict=True))
                row["speedup"] = statistics.median(paired)
                row["speedup_paired_iqr"] = [paired[len(paired) // 4], paired[(3 * len(paired)) // 4]]
                row["speedup_of_medians"] = statistics.median(base.times) / statistics.median(r.times)
                if r.flop_count and base.flop_count:
                    row["predicted_speedup"] = base.flop_count / r.flop_count
            if cuda:
                row["cifar_epoch_s"] = CIFAR_TRAIN / args.batch_size * ms / 1000
            rows.append(row)
        del runners

    meta = {"device": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
            "torch": torch.__version__, "threads": torch.get_num_threads(), "load_warning": load_note,
            "python": platform.python_version(),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    print_table(rows, meta, cuda)
    if args.out:
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    return 0


def set_threads(requested: int | None) -> str | None:
    """Apply the thread count (igdm-kit's rule; ``--threads`` first), print it, and warn on a busy machine."""
    if requested is not None:
        if requested < 1:
            sys.exit("error: --threads must be 1 or more")
        os.environ[threads.ENV] = str(requested)
    n = threads.configure()
    note = threads.busy_warning(n)
    print(f"torch CPU threads: {n}", file=sys.stderr)
    if note:
        print(f"warning: {note}", file=sys.stderr)
    return note


def speedup_cell(r: dict[str, Any]) -> str:
    if "speedup" not in r:
        return ""
    lo, hi = r["speedup_paired_iqr"]
    return f"{r['speedup']:.3f}× ({lo:.2f}–{hi:.2f})"


def print_table(rows: list[dict[str, Any]], meta: dict[str, Any], cuda: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    a = meta["args"]
    t = Table(title=f"training step: {a['student']} ← {a['teacher']}, batch {a['batch_size']}, "
                    f"{a['image_size']}×{a['image_size']}, {a['classes']} classes, K = {a['attack_steps']} "
                    f"({meta['device']}, torch {meta['torch']}, {meta['threads']} thread"
                    f"{'s' if meta['threads'] != 1 else ''})")
    for col in ("method", "variant", "S fwd/bwd", "T fwd (images)", "GFLOP", "ms/step", "img/s", "GFLOP/s",
                "speedup (paired IQR)", "vs", "predicted", "× reference") + (("CIFAR epoch s", "peak MiB") if cuda else ()):
        t.add_column(col, justify="left" if col in ("method", "variant") else "right")
    for r in rows:
        s, te = r["passes"].get("student", {}), r["passes"].get("teacher", {})
        tf = f"{te.get('forwards', 0)} ({te.get('images', 0)})" if te else "–"
        cells = [r["method"], r["variant"], f"{s.get('forwards', 0)}/{s.get('backwards', 0)}", tf,
                 f"{r['flops'] / 1e9:.2f}" if r["flops"] else "",
                 f"{r['ms_per_step']:.1f}", f"{r['images_per_s']:.0f}",
                 f"{r['gflop_per_s']:.1f}" if "gflop_per_s" in r else "",
                 speedup_cell(r), r["baseline"] if "speedup" in r else "",
                 f"{r['predicted_speedup']:.3f}×" if "predicted_speedup" in r else "",
                 f"{r['speedup_vs_reference']:.2f}×" if "speedup_vs_reference" in r else ""]
        if cuda:
            cells.append(f"{r['cifar_epoch_s']:.1f}")
            cells.append(f"{r['peak_mem_bytes'] / 2**20:.0f}" if r["peak_mem_bytes"] is not None else "")
        t.add_row(*cells)
    console = Console()
    if not console.is_terminal:  # piped or redirected: do not squeeze the table into 80 columns
        console = Console(width=200)
    console.print(t)


if __name__ == "__main__":
    raise SystemExit(main())
