"""Training state for resume — optimizer, scheduler, RNG, epoch — saved without pickled code.

Tensors (momentum buffers, RNG states) go to a safetensors file, everything else to JSON inside its
metadata, written atomically. Loading never unpickles anything.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError
from .io import atomic_write


def save_train_state(path: str | os.PathLike, *, model, optimizer, scheduler, epoch: int,
                     extra: dict[str, Any] | None = None,
                     extra_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """``epoch``: the last complete epoch. ``extra``/``extra_tensors``: JSON values and tensors returned
    by ``load_train_state`` as ``meta["extra"]`` and ``meta["extra_tensors"]`` (e.g. a partial epoch)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        tensors[f"model.{k}"] = v.detach().cpu().contiguous().clone()
    opt = optimizer.state_dict()
    opt_state_keys: dict[str, list[str]] = {}
    for pid, st in opt["state"].items():
        opt_state_keys[str(pid)] = []
        for name, val in st.items():
            if torch.is_tensor(val):
                tensors[f"optim.{pid}.{name}"] = val.detach().cpu().contiguous().clone()
                opt_state_keys[str(pid)].append(name)
    for k, v in (extra_tensors or {}).items():
        tensors[f"extra.{k}"] = v.detach().cpu().contiguous().clone()
    tensors["rng.cpu"] = torch.get_rng_state()
    n_cuda = 0
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
            n_cuda += 1
    sched = scheduler.state_dict()
    sched["milestones"] = {str(k): v for k, v in dict(sched.get("milestones", {})).items()}
    meta = {"epoch": epoch, "param_groups": opt["param_groups"], "optim_keys": opt_state_keys,
            "scheduler": sched, "cuda_rng": n_cuda, "extra": extra or {}}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"train_state": json.dumps(meta)}))


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
    device = next(model.parameters()).device
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state = {int(pid): {n: tensors[f"optim.{pid}.{n}"].to(device) for n in names}
             for pid, names in meta["optim_keys"].items()}
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    sched = dict(meta["scheduler"])
    sched["milestones"] = Counter({int(k): v for k, v in sched["milestones"].items()})
    scheduler.load_state_dict(sched)
    torch.set_rng_state(tensors["rng.cpu"])
    if meta["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[f"rng.cuda.{i}"] for i in range(meta["cuda_rng"])])
    meta["extra_tensors"] = {k[6:]: v for k, v in tensors.items() if k.startswith("extra.")}
    return meta
