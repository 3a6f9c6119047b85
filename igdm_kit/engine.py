"""The training engine: builds a recipe's components and trains the student.

SGD with momentum and weight decay, a cumulative multistep schedule, seeded data order, augmentation and
attack random starts; per-epoch metrics with every loss term logged separately; an atomic checkpoint and
training state after each epoch; the recipe's evaluation at the end. The run folder holds::

    manifest.json      resolved recipe, digest, seeds, versions, teacher digest
    recipe.toml        the resolved recipe
    metrics.jsonl      one JSON object per epoch
    last.safetensors   the latest model (a self-describing checkpoint)
    train_state.safetensors   optimizer, scheduler, RNG and epoch, for --resume
    model.safetensors  the final model
    results.json       the final evaluation; its presence marks the run finished
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import recipe as recipe_mod
from .accel import Accelerator
from .checkpoint import save_model, toolkit_version
from .components import create_model, validate_options
from .data import augment, epoch_order
from .errors import DataError, IgdmKitError, RecipeError, TrainingError
from .interfaces import DatasetInfo
from .io import append_jsonl, atomic_write_json, atomic_write_text, read_jsonl
from .plugins import registry
from .recipe import Recipe
from .train_state import load_train_state, save_train_state
from .training_step import compute_loss, module_weight

RESULTS, STATE, LAST, FINAL = "results.json", "train_state.safetensors", "last.safetensors", "model.safetensors"


@dataclass
class RunResult:
    output_dir: Path
    recipe: Recipe
    metrics: list[dict[str, Any]] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    reused: bool = False


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise IgdmKitError(f"train.device is {name!r} but CUDA is not available", "use device = \"cpu\"")
    return torch.device(name)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


# -- building ---------------------------------------------------------------------------------------------

def load_data(r: Recipe) -> tuple[DatasetInfo, tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    ds = registry("dataset").get(r.model.data.name)(r.components["data"])
    info = ds.info()
    xtr, ytr = ds.load("train")
    xte, yte = ds.load("test")
    if r.model.data.train_limit:
        xtr, ytr = xtr[: r.model.data.train_limit], ytr[: r.model.data.train_limit]
    if r.model.data.test_limit:
        xte, yte = xte[: r.model.data.test_limit], yte[: r.model.data.test_limit]
    for split, (x, y) in (("train", (xtr, ytr)), ("test", (xte, yte))):
        check_data(r.model.data.name, split, x, y, info)
    return info, (xtr, ytr.long()), (xte, yte.long())


def check_data(name: str, split: str, x: torch.Tensor, y: torch.Tensor, info: DatasetInfo) -> None:
    """Whatever a dataset plugin returns must be float images in [0, 1] of the declared shape, with one
    integer label in [0, num_classes) each: everything downstream (attacks, ε) assumes it."""
    where = f"dataset {name!r} ({split} split)"
    expected = (info.in_channels, info.image_size, info.image_size)
    if not (torch.is_tensor(x) and torch.is_tensor(y)):
        raise DataError(f"{where} did not return tensors", "a dataset's load() returns (images, labels)")
    if x.ndim != 4 or tuple(x.shape[1:]) != expected:
        raise DataError(f"{where} has images of shape {tuple(x.shape[1:]) if x.ndim == 4 else tuple(x.shape)}, "
                        f"expected {expected}", "check the data files or the dataset's image_size option")
    if not x.is_floating_point():
        raise DataError(f"{where} has {x.dtype} images", "images must be float tensors scaled to [0, 1]")
    if x.shape[0] == 0 or y.shape != (x.shape[0],):
        raise DataError(f"{where} has {x.shape[0]} images and labels of shape {tuple(y.shape)}",
                        "one integer label per image, and at least one image")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0 or x.isnan().any():
        raise DataError(f"{where} has pixel values in [{lo:.3g}, {hi:.3g}], not [0, 1]",
                        "scale images to [0, 1]; put any normalization (mean/std) inside the model")
    if y.dtype not in (torch.int64, torch.int32) or int(y.min()) < 0 or int(y.max()) >= info.num_classes:
        raise DataError(f"{where} has labels outside 0..{info.num_classes - 1} (dtype {y.dtype})",
                        "labels must be integer class indices below num_classes")


def build_student(r: Recipe, info: DatasetInfo) -> torch.nn.Module:
    return create_model(r.model.student.model, num_classes=info.num_classes, in_channels=info.in_channels,
                        image_size=info.image_size, mean=info.mean, std=info.std,
                        **r.components["student"].model_dump())


def load_teacher(r: Recipe, info: DatasetInfo, device: torch.device, *, log: Callable[[str], None],
                 resume: bool = False):
    """The teacher in eval mode with frozen parameters, and the sha256 of its file."""
    t = r.model.teacher
    if t is None:
        return None, None
    if t.recipe is not None:
        sub = recipe_mod.load(t.recipe)
        log(f"teacher: recipe {t.recipe}")
        result = run(sub, output_dir=None, reuse_finished=True, resume=resume, log=log)
        path = result.output_dir / FINAL
    else:
        path = Path(t.checkpoint)
    if not path.exists():
        raise IgdmKitError(f"teacher checkpoint {str(path)!r} does not exist",
                           "set teacher.checkpoint to the file's path (relative to the recipe)")
    loader_name = t.loader if t.loader != "auto" else ("igdm-kit" if path.suffix == ".safetensors"
                                                        else "state-dict")
    entry = registry("teacher_loader").entry(loader_name)
    options = validate_options("teacher_loader", loader_name, t.loader_options, where="teacher.loader_options")

    def build():
        if t.model is None:
            raise RecipeError(f"teacher.model: the {loader_name!r} loader needs the architecture",
                              "name it, e.g. model = \"wrn-34-10\"", path="teacher.model")
        return create_model(t.model, num_classes=info.num_classes, in_channels=info.in_channels,
                            image_size=info.image_size, mean=t.mean, std=t.std, **t.model_options)

    teacher = entry.component.load(options, path=str(path), build=build)
    teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher, sha256_file(path)


def build_training(r: Recipe, student, teacher):
    method = registry("method").get(r.model.method.name)(r.components["method"])
    module = None
    if r.model.module is not None:
        module = registry("module").get(r.model.module.name)(r.components["module"])
    attack = registry("attack").get(r.attack_name)(student, options=r.components["attack"], teacher=teacher)
    return method, module, attack


# -- the run ------------------------------------------------------------------------------------------------

def _check_output_dir(out: Path, r: Recipe, *, resume: bool, overwrite: bool, reuse_finished: bool) -> str:
    """Decide what to do with an existing run folder: 'new', 'resume' or 'reuse'."""
    if out.exists() and not out.is_dir():
        raise IgdmKitError(f"output {str(out)!r} is a file, not a folder", "choose a folder with --output")
    if not out.exists() or not any(out.iterdir()):
        return "new"
    is_run = any((out / f).exists() for f in ("manifest.json", STATE, "metrics.jsonl", RESULTS))
    if not is_run:
        raise IgdmKitError(f"output folder {str(out)!r} is not empty and holds no igdm-kit run",
                           "choose an empty or new folder with --output (it is never deleted)")
    if overwrite:
        shutil.rmtree(out)
        return "new"
    finished = (out / RESULTS).is_file()
    manifest = out / "manifest.json"
    same = False
    if manifest.is_file():
        try:
            same = json.loads(manifest.read_text()).get("recipe_digest") == r.digest()
        except (OSError, ValueError):
            same = False
    if same and (finished or resume) and not _same_teacher(out, r):
        raise IgdmKitError(f"the teacher file changed since the run in {str(out)!r} was made",
                           "pass --overwrite to train again with the new teacher")
    if finished and reuse_finished and same:
        return "reuse"
    if finished:
        raise IgdmKitError(f"run folder {str(out)!r} already holds a finished run",
                           "pass --overwrite to replace it, or --output to write elsewhere")
    if resume and same and (out / STATE).is_file():
        return "resume"
    if resume and not same and manifest.is_file():
        try:
            saved = json.loads(manifest.read_text()).get("recipe", {})
        except (OSError, ValueError):
            saved = {}
        key = recipe_mod.first_difference(saved, r.resolved())
        raise IgdmKitError(f"run folder {str(out)!r} holds a run of a different recipe"
                           + (f" ({key} differs)" if key else ""),
                           "resume with the same recipe and the same --set options, or pass --overwrite")
    if resume:
        return "new" if not (out / STATE).is_file() else "resume"
    raise IgdmKitError(f"run folder {str(out)!r} holds an unfinished run",
                       "pass --resume to continue it, or --overwrite to start again")


class Interrupted(IgdmKitError):
    """SIGINT/SIGTERM during training: the current step finished and the state was saved."""

    def __init__(self, message: str, hint: str, exit_code: int) -> None:
        super().__init__(message, hint)
        self.exit_code = exit_code


class _StopFlag:
    """Installs SIGINT/SIGTERM handlers for the duration of training (main thread only).

    The first signal asks the loop to stop after the current step; a second SIGINT interrupts at once.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc) -> None:
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Attack random starts of one epoch on one rank: reproducible, and different across ranks."""
    return (seed * 1_000_003 + epoch * 7_919 + rank * 104_729) % (2**63)


def _same_teacher(out: Path, r: Recipe) -> bool:
    """A finished or resumed run is only reused with the teacher file it was made with (a teacher trained
    by a nested recipe is covered by the recipe digest instead)."""
    t = r.model.teacher
    if t is None or t.checkpoint is None or not Path(t.checkpoint).is_file():
        return True
    try:
        recorded = json.loads((out / "manifest.json").read_text()).get("teacher_sha256")
    except (OSError, ValueError):
        return True
    return recorded is None or recorded == sha256_file(t.checkpoint)


def run(r: Recipe, *, output_dir: str | Path | None = None, resume: bool = False, overwrite: bool = False,
        reuse_finished: bool = False, log: Callable[[str], None] = lambda s: None,
        progress: Any = None) -> RunResult:
    """Train the recipe's student and evaluate it. ``progress`` is an optional Rich ``Progress``.

    ``resume`` and ``overwrite`` exclude each other: one continues the folder's run, the other deletes it.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every rank calls this; see ``igdm_kit.distributed``.
    """
    from . import distributed

    if resume and overwrite:
        raise IgdmKitError("--resume and --overwrite exclude each other",
                           "--resume continues the run in the folder; --overwrite deletes it and starts again")
    d = distributed.from_env()
    if not d.is_main:
        log = lambda s: None  # noqa: E731 - rank 0 speaks for all
    out = Path(output_dir) if output_dir is not None else r.default_output_dir()
    tr = r.model.train
    device = distributed.device_for(d, resolve_device(tr.device))
    distributed.init(d, device)
    acc = Accelerator.from_train(tr, device, module=r.model.module.name if r.model.module else None, log=log)
    # Rank 0 alone looks at (and may delete) the folder; the other ranks follow its decision or error.
    decision: tuple[str, Any] = ("new", None)
    if d.is_main:
        try:
            decision = (_check_output_dir(out, r, resume=resume, overwrite=overwrite,
                                          reuse_finished=reuse_finished), None)
        except IgdmKitError as exc:
            decision = ("error", (exc.message, exc.hint))
    mode, error = d.broadcast(decision)
    if mode == "error":
        raise IgdmKitError(*error)
    if resume and mode == "new":
        log(f"nothing to resume in {out}: starting a new run")
    if mode == "reuse":
        log(f"reusing finished run {out}")
        return RunResult(out, r, read_jsonl(out / "metrics.jsonl"), json.loads((out / RESULTS).read_text()),
                         reused=True)
    if d.is_main:
        _ensure_writable(out)

    torch.manual_seed(tr.seed)  # the same initial weights on every rank
    info, (xtr, ytr), (xte, yte) = load_data(r)
    xtr, ytr = acc.place_data(xtr, ytr)
    student = acc.prepare(build_student(r, info).to(device))
    teacher, teacher_digest = load_teacher(r, info, device, log=log, resume=resume)
    teacher = acc.prepare(teacher)
    method, module, attack = build_training(r, student, teacher)
    attack = acc.wrap_attack(attack)  # mixed precision: the attack-gradient guard (igdm_kit.accel)
    # The outer loss runs through DDP (gradient all-reduce); the attack keeps the bare module: it needs
    # input gradients only and must not start a gradient synchronization.
    trained = distributed.wrap(d, student, device)
    opt = torch.optim.SGD(student.parameters(), lr=tr.lr, momentum=tr.momentum, weight_decay=tr.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=tr.milestones, gamma=tr.lr_decay)

    start_epoch, partial = 1, None
    if mode == "resume":
        meta = load_train_state(out / STATE, model=student, optimizer=opt, scheduler=sched)
        start_epoch = meta["epoch"] + 1
        partial = meta["extra"].get("partial")
        if acc.scaler is not None and "grad_scaler" in meta["extra"]:
            acc.scaler.load_state_dict(meta["extra"]["grad_scaler"])
        if partial is not None:
            partial["gen_state"] = meta["extra_tensors"]["gen_state"]
            start_epoch = partial["epoch"]
        log(f"resuming {out} after epoch {meta['epoch']}"
            + (f" and {partial['step']} step{'s' if partial['step'] != 1 else ''} of epoch {partial['epoch']}"
               if partial else ""))
        if d.is_main and (out / "metrics.jsonl").exists():
            # metrics of epochs after the saved state (a crash between the two writes) are dropped
            kept = [m for m in read_jsonl(out / "metrics.jsonl") if m["epoch"] <= meta["epoch"]]
            atomic_write_text(out / "metrics.jsonl", "".join(json_line(m) for m in kept))
    elif d.is_main:
        for stale in ("metrics.jsonl", "autoattack.state"):  # left by an unfinished run started afresh
            (out / stale).unlink(missing_ok=True)
        atomic_write_text(out / "recipe.toml", recipe_mod.to_toml(r.resolved()))
        atomic_write_json(out / "manifest.json", {
            "recipe": r.resolved(), "recipe_digest": r.digest(), "seed": tr.seed, "world_size": d.world,
            "toolkit_version": toolkit_version(), "torch_version": torch.__version__,
            "cuda_version": torch.version.cuda, "python_version": platform.python_version(),
            "device": str(device), "git_commit": _git_commit(), "teacher_sha256": teacher_digest,
            "recipe_file": str(r.path) if r.path else None,
        })

    ckpt_meta = {"model": r.model.student.model, "model_options": r.components["student"].model_dump(),
                 "num_classes": info.num_classes, "in_channels": info.in_channels,
                 "image_size": info.image_size, "mean": list(info.mean) if info.mean else None,
                 "std": list(info.std) if info.std else None,
                 "dataset": {"name": r.model.data.name, "options": r.components["data"].model_dump()},
                 "recipe_digest": r.digest(), "recipe_name": r.name,
                 # what the model was trained and judged at: `igdm-kit eval` defaults to this radius
                 "train_attack": {"name": r.attack_name, "eps": r.components["attack"].eps},
                 "eval_eps": r.model.eval.eps}
    metrics = read_jsonl(out / "metrics.jsonl") if mode == "resume" and (out / "metrics.jsonl").exists() else []
    n = xtr.shape[0]
    steps_per_epoch = math.ceil(d.shard(torch.arange(n)).shape[0] / tr.batch_size)
    task = progress.add_task(f"{r.name}", total=(tr.epochs - start_epoch + 1) * steps_per_epoch) \
        if progress is not None and d.is_main else None
    if task is not None and partial:
        progress.update(task, advance=partial["step"])
    trace = os.environ.get("IGDM_KIT_TRACE_DATA")  # tests: which samples each rank saw

    def save_state(epoch_done: int, extra=None, extra_tensors=None) -> None:
        if d.is_main:
            save_model(out / LAST, student, {**ckpt_meta, "epoch": epoch_done})
            extra = dict(extra or {})
            if acc.scaler is not None:  # fp16: the loss scale is training state too
                extra["grad_scaler"] = acc.scaler.state_dict()
            save_train_state(out / STATE, model=student, optimizer=opt, scheduler=sched, epoch=epoch_done,
                             extra=extra, extra_tensors=extra_tensors)

    with _StopFlag() as stop:
        for epoch in range(start_epoch, tr.epochs + 1):
            t0 = time.perf_counter()
            lr = opt.param_groups[0]["lr"]
            student.train()
            order, gen = epoch_order(n, tr.seed, epoch)
            order = d.shard(order)
            sums: dict[str, float] = {}
            correct = seen = first = 0
            if partial is not None and partial["epoch"] == epoch:
                first, sums = partial["step"], dict(partial["sums"])
                correct, seen = partial["correct"], partial["seen"]
                gen.set_state(partial["gen_state"])
                partial = None
            else:
                torch.manual_seed(_epoch_seed(tr.seed, epoch, d.rank))
            for step_i in range(first, steps_per_epoch):
                idx = order[step_i * tr.batch_size:(step_i + 1) * tr.batch_size]
                if trace:
                    with open(f"{trace}.rank{d.rank}", "a") as fh:
                        fh.write(" ".join(map(str, idx.tolist())) + "\n")
                x = augment(xtr[idx], info, gen).to(device, non_blocking=True)
                y = ytr[idx].to(device, non_blocking=True)
                res = compute_loss(trained, teacher, method, module, attack, x, y, epoch=epoch,
                                   epochs=tr.epochs, cache=not tr.reference_passes)
                values = {k: float(v.detach()) for k, v in res.terms.items()}
                for k, v in values.items():
                    if not math.isfinite(v):
                        raise TrainingError(
                            f"loss term {k!r} is {v} at epoch {epoch}, step {step_i + 1}",
                            f"the last good checkpoint is {out / LAST}; lower train.lr or the module's alpha")
                opt.zero_grad(set_to_none=True)
                acc.backward_and_step(res.loss, opt)
                bs = y.shape[0]
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + v * bs
                sums["loss"] = sums.get("loss", 0.0) + sum(values.values()) * bs
                s_adv = res.step.cached_student("x_adv")  # the loss's own forward on x_adv: no extra pass
                if s_adv is not None:
                    correct += int((s_adv.detach().argmax(1) == y).sum())
                seen += bs
                if task is not None:
                    progress.update(task, advance=1)
                if d.enabled and d.sum([float(stop.signum is not None)], device)[0] > 0:
                    # every rank stops together; mid-epoch sums and RNG are per rank, so a distributed
                    # run restarts the interrupted epoch from its first step
                    stop.signum = stop.signum or signal.SIGTERM
                    save_state(epoch - 1)
                    _raise_interrupted(stop.signum, out, r, epoch, 0)
                if stop.signum is not None and step_i + 1 < steps_per_epoch:
                    partial_state = {"epoch": epoch, "step": step_i + 1, "sums": sums, "correct": correct,
                                     "seen": seen}
                    save_state(epoch - 1, extra={"partial": partial_state},
                               extra_tensors={"gen_state": gen.get_state()})
                    _raise_interrupted(stop.signum, out, r, epoch, step_i + 1)
            sched.step()
            keys = sorted(sums)
            reduced = d.sum([sums[k] for k in keys] + [float(correct), float(seen)], device)
            sums = dict(zip(keys, reduced[:-2], strict=True))
            correct, seen = int(reduced[-2]), int(reduced[-1])
            row: dict[str, Any] = {"epoch": epoch, "lr": lr,
                                   "module_weight": module_weight(module, epoch, tr.epochs)}
            row.update({k: v / seen for k, v in sums.items()})
            if correct:
                row["train_adv_acc"] = 100.0 * correct / seen
            with acc.paused():
                row["test_clean_acc"] = clean_accuracy(student, xte, yte, device, dist=d)
            row["seconds"] = round(time.perf_counter() - t0, 3)
            metrics.append(row)
            # Order matters for resume: the state is written last, it is what resume trusts.
            if d.is_main:
                if tr.save_every_epoch:
                    save_model(out / "checkpoints" / f"epoch_{epoch:03d}.safetensors", student,
                               {**ckpt_meta, "epoch": epoch})
                append_jsonl(out / "metrics.jsonl", row)  # resume drops rows newer than the state
                save_state(epoch)
            log(f"{r.name} epoch {epoch}/{tr.epochs}: " + ", ".join(f"{k}={v:.4g}" for k, v in row.items()
                                                          if k != "epoch" and isinstance(v, float)))
            if d.enabled and d.sum([float(stop.signum is not None)], device)[0] > 0:
                stop.signum = stop.signum or signal.SIGTERM
            if stop.signum is not None and epoch < tr.epochs:
                _raise_interrupted(stop.signum, out, r, epoch + 1, 0)

    acc.release()  # the final evaluation runs the plain fp32 eager models
    # AutoAttack keeps its progress in the run folder, so an interrupted final evaluation resumes.
    aa_state = out / "autoattack.state" if d.is_main else None
    results = final_evaluation(r, student, teacher, xte, yte, device, log=log, dist=d, aa_state=aa_state,
                               progress=progress if d.is_main else None)
    if d.is_main:
        save_model(out / FINAL, student, {**ckpt_meta, "epoch": tr.epochs})
        atomic_write_json(out / RESULTS, results)
    d.barrier()
    return RunResult(out, r, metrics, results)


def json_line(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True) + "\n"


def _ensure_writable(out: Path) -> None:
    """Fail early if the run folder cannot be written — without creating it yet, so that a run stopped
    by bad data or a missing teacher leaves no empty folder behind (the first atomic write creates it)."""
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, "Not a directory")
        if existing == out:
            probe = out / ".write-test"
            probe.write_text("")
            probe.unlink()
        elif not os.access(existing, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as exc:
        raise IgdmKitError(f"output folder {str(out)!r} is not writable ({exc.strerror or exc})",
                           "choose another folder with --output") from None


def _raise_interrupted(signum: int, out: Path, r: Recipe, epoch: int, step: int) -> None:
    import signal

    name = signal.Signals(signum).name
    where = f"epoch {epoch}, step {step}" if step else f"the start of epoch {epoch}"
    # (a variant of a recipe family gets the family's own command from igdm_kit.sweep instead)
    command = recipe_mod.command_line(r, "--resume", "--output", str(out))
    raise Interrupted(f"{name}: training stopped and saved at {where} in {out}",
                      f"resume with: {command}", 128 + signum)


def clean_accuracy(model, x: torch.Tensor, y: torch.Tensor, device, batch_size: int = 512,
                   dist=None) -> float:
    """Clean accuracy (%); under torchrun each rank takes a disjoint shard and the counts are summed."""
    if dist is not None and dist.enabled:
        x, y = x[dist.rank::dist.world], y[dist.rank::dist.world]
    from .evaluation import eval_mode

    correct = 0
    with torch.no_grad(), eval_mode(model):
        for i in range(0, x.shape[0], batch_size):
            xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
            correct += int((model(xb).argmax(1) == yb).sum())
    total = x.shape[0]
    if dist is not None and dist.enabled:
        correct, total = (int(v) for v in dist.sum([float(correct), float(total)], device))
    return 100.0 * correct / max(1, total)


def _eval_progress(progress: Any, name: str):
    """Adapt a Rich ``Progress`` to evaluation's ``callback(task, done, total)``: a bar per attack."""
    if progress is None:
        return None
    tasks: dict[str, Any] = {}

    def callback(task: str, done: int, total: int) -> None:
        if task not in tasks:
            tasks[task] = progress.add_task(f"{name} eval {task}", total=total)
        progress.update(tasks[task], completed=done)

    return callback


def final_evaluation(r: Recipe, student, teacher, xte, yte, device, *, log, dist=None,
                     aa_state: Path | None = None, progress: Any = None) -> dict[str, Any]:
    """The recipe's ``[eval]``: the attacks of Section 4.1 and, with ``analysis = true``, GD/GC.

    Under torchrun each rank evaluates a disjoint shard of the test split (AutoAttack included) and the
    correct counts (and GD/GC sums) are added up.
    """
    from .evaluation import evaluate

    ev = r.model.eval
    x, y = (xte[: ev.limit], yte[: ev.limit]) if ev.limit else (xte, yte)
    n_total = int(x.shape[0])
    sharded = dist is not None and dist.enabled
    if sharded:
        x, y = x[dist.rank::dist.world], y[dist.rank::dist.world]
    report = evaluate(student, x, y, attacks=tuple(ev.attacks), batch_size=ev.batch_size, eps=ev.eps,
                      device=device, autoattack_state=aa_state, progress=_eval_progress(progress, r.name))
    for w in report.get("warnings", []):
        log(f"AutoAttack: {w}")
    if sharded:
        names = list(report["metrics"])
        counts = dist.sum([float(report["metrics"][k]["correct"]) for k in names], device)
        report["metrics"] = {k: {"accuracy": 100.0 * c / n_total, "correct": int(c), "total": n_total}
                             for k, c in zip(names, counts, strict=True)}
        report["n"] = n_total
        report.pop("autoattack", None)  # per-attack breakdown of one shard only: not the test split
    results: dict[str, Any] = {"recipe": r.name, "digest": r.digest(), **report}
    if ev.analysis and teacher is not None:
        from .analysis import gradient_alignment

        al = gradient_alignment(student, teacher, x, y, batch_size=ev.batch_size)
        gd, gc = float(al["distance"].sum()), float(al["cosine"].sum())
        if sharded:
            gd, gc = dist.sum([gd, gc], device)
        results["alignment"] = {"gd": gd / n_total, "gc": gc / n_total}
    return results
