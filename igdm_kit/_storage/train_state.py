"""Training state for resume — optimizer, scheduler, RNG, epoch — saved without pickled code.

Tensors (momentum buffers, RNG states) go to a safetensors file, everything else to JSON inside its
metadata, written atomically. Loading never unpickles anything. A scheduler's state (any of
``torch.optim.lr_scheduler``'s, nested ones such as ``SequentialLR`` included) and the optimizer's param
groups go through a tagged JSON encoding that keeps tuples, ``Counter``s and non-string keys.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from igdm_kit._storage.io import atomic_write
from igdm_kit.errors import CheckpointError


def save_train_state(path: str | os.PathLike, *, model, optimizer, scheduler, epoch: int,
                     extra: dict[str, Any] | None = None,
                     extra_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """``epoch``: the last complete epoch. ``extra``/``extra_tensors``: JSON values and tensors returned
    by ``load_train_state`` as ``meta["extra"]`` and ``meta["extra_tensors"]`` (e.g. a partial epoch)."""
    from safetensors.torch import save_file

    tensors, meta = model_state(model, optimizer, scheduler)
    for k, v in (extra_tensors or {}).items():
        tensors[f"extra.{k}"] = v.detach().cpu().contiguous().clone()
    tensors["rng.cpu"] = torch.get_rng_state()
    n_cuda = 0
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
            n_cuda += 1
    meta.update(epoch=epoch, cuda_rng=n_cuda, extra=extra or {})
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"train_state": json.dumps(meta)}))


def model_state(model, optimizer, scheduler) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, JSON values) of a model, its optimizer and its schedule: the weights as ``model.<name>``, the
    optimizer's tensors as ``optim.<param>.<name>``, the rest (param groups, other values, the scheduler) as
    JSON (``restore_model_state`` reads them back)."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    opt_state_keys: dict[str, list[str]] = {}
    opt_values: dict[str, dict[str, Any]] = {}
    for pid, st in opt["state"].items():
        opt_state_keys[str(pid)] = []
        for name, val in st.items():
            if torch.is_tensor(val):
                tensors[f"optim.{pid}.{name}"] = val.detach().cpu().contiguous().clone()
                opt_state_keys[str(pid)].append(name)
            else:
                opt_values.setdefault(str(pid), {})[name] = to_json(val)
    return tensors, {"param_groups": to_json(opt["param_groups"]), "optim_keys": opt_state_keys,
                     "optim_values": opt_values, "scheduler_state": to_json(scheduler.state_dict())}


def restore_model_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any], model, optimizer, scheduler) -> None:
    """What ``model_state`` returned, back into ``model``, ``optimizer`` and ``scheduler`` in place."""
    device = next(model.parameters()).device
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state = {int(pid): {n: tensors[f"optim.{pid}.{n}"].to(device) for n in names}
             for pid, names in meta["optim_keys"].items()}
    for pid, values in meta.get("optim_values", {}).items():
        state.setdefault(int(pid), {}).update({n: from_json(v) for n, v in values.items()})
    optimizer.load_state_dict({"state": state, "param_groups": from_json(meta["param_groups"])})
    scheduler.load_state_dict(from_json(meta["scheduler_state"]))


def load_train_state(path: str | os.PathLike, *, model, optimizer, scheduler) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and RNG in place; returns the metadata (``epoch``, ``extra``)."""
    from collections import Counter

    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {})["train_state"])
        tensors = load_file(str(path))
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"training state {str(path)!r} is unreadable ({type(exc).__name__})",
                              "start again with --overwrite") from None
    if "scheduler_state" in meta:
        restore_model_state(tensors, meta, model, optimizer, scheduler)
    else:  # written before schedules were components: a MultiStepLR with string milestone keys
        restore_model_state(tensors, {**meta, "scheduler_state": to_json(scheduler.state_dict())}, model,
                            optimizer, scheduler)
        sched = dict(meta["scheduler"])
        sched["milestones"] = Counter({int(k): v for k, v in sched["milestones"].items()})
        scheduler.load_state_dict(sched)
    torch.set_rng_state(tensors["rng.cpu"])
    if meta["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[f"rng.cuda.{i}"] for i in range(meta["cuda_rng"])])
    meta["extra_tensors"] = {k[6:]: v for k, v in tensors.items() if k.startswith("extra.")}
    return meta


def read_train_state_meta(path: str | os.PathLike) -> dict[str, Any] | None:
    """The JSON part of a training state (``epoch``, ``extra``, ...) without its tensors; None when the file is
    missing or unreadable (what resume trusts is checked by ``load_train_state``)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {})["train_state"])
    except Exception:  # noqa: BLE001 - missing, torn by hand or not a safetensors file: nothing to read
        return None
    return meta if isinstance(meta, dict) else None


_TAGS = ("__tuple__", "__counter__", "__items__")


def to_json(obj: Any) -> Any:
    """``obj`` as JSON values, with tuples, ``Counter``s and dicts with non-string keys tagged so that
    ``from_json`` gives them back (a scheduler's ``state_dict`` holds all three)."""
    from collections import Counter

    if isinstance(obj, Counter):
        return {"__counter__": [[to_json(k), v] for k, v in obj.items()]}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not any(t in obj for t in _TAGS):
            return {k: to_json(v) for k, v in obj.items()}
        return {"__items__": [[to_json(k), to_json(v)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [to_json(v) for v in obj]}
    if isinstance(obj, list):
        return [to_json(v) for v in obj]
    if torch.is_tensor(obj) and obj.numel() == 1:  # e.g. a learning rate given as a tensor
        return obj.item()
    return obj


def from_json(obj: Any) -> Any:
    from collections import Counter

    if isinstance(obj, list):
        return [from_json(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if set(obj) == {"__tuple__"}:
        return tuple(from_json(v) for v in obj["__tuple__"])
    if set(obj) == {"__counter__"}:
        return Counter({from_json(k): v for k, v in obj["__counter__"]})
    if set(obj) == {"__items__"}:
        return {from_json(k): from_json(v) for k, v in obj["__items__"]}
    return {k: from_json(v) for k, v in obj.items()}
