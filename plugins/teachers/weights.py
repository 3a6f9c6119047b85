"""Reading a weights file a user brings, without running its code, and fitting it into a built model.

Shared by the ``state-dict`` and ``robustbench`` teacher loaders (the paper's teachers are public
checkpoints: LTD, BDM-AT, IKL-AT from RobustBench, Section 4.1).

* ``read_weights`` loads ``.pt``/``.pth`` with ``torch.load(weights_only=True)`` — tensors, containers and
  numbers only, so a file whose unpickling would import a function or class is refused before anything
  runs — and ``.safetensors`` with safetensors. HTML pages (failed downloads), truncated and foreign files
  each give one CheckpointError line.
* ``find_state_dict`` unwraps the usual containers (``{"state_dict": ...}``, ``{"model": ...}``,
  ``{"model_state_dict": ...}``) and strips wrapper prefixes (``module.`` from DataParallel/DDP,
  ``_orig_mod.`` from ``torch.compile``).
* ``fit`` maps the keys into the built ``Classifier`` (``net.`` namespace; keys already in it are kept),
  takes normalization buffers the file carries at its top level (``mean``/``std`` as DeepMind-style
  WideResNets store them, ``mu``/``sigma`` as RobustBench's wrappers do), and loads strictly: a mismatch
  names the first missing and unexpected keys or the first shape that differs.
"""

from __future__ import annotations

import pickle
import pickletools
import re
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from igdm_kit.errors import CheckpointError
from igdm_kit.nn import Normalize

#: Top-level entries that hold the weights in common training-script checkpoints, tried in this order.
CONTAINER_KEYS = ("state_dict", "model_state_dict", "model")
#: Prefixes that wrappers add to every key (DataParallel/DDP, torch.compile).
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
#: Top-level normalization buffers some architectures keep in their state dict: (mean key, std key).
NORMALIZATION_KEYS = (("mean", "std"), ("mu", "sigma"))

_HINT_RESAVE = ("if you trust the file, re-save only its weights in the environment that made it: "
                "torch.save(model.state_dict(), 'weights.pt')")


def _numpy_safe_globals() -> list:
    """numpy scalars/arrays that training scripts store next to weights (e.g. a best accuracy).

    They rebuild data only (their contents go through the same restricted unpickler), so allowing them
    does not let a file run code.
    """
    import numpy as np

    try:
        from numpy._core import multiarray
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray
    found = [multiarray.scalar, multiarray._reconstruct, np.ndarray, np.dtype]
    found += list({type(np.dtype(c)) for c in "?bBhHiIlLqQefdgFDGUSO"})  # numpy.dtypes.*DType classes
    return found


def _looks_like_html(head: bytes) -> bool:
    text = head.lstrip().lower()
    return text.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")) or b"<html" in text[:512]


def _pickle_globals(data: bytes) -> list[str]:
    """The ``module.name`` globals a pickle would import, found by reading its opcodes (nothing runs)."""
    names: list[str] = []
    strings: list[str] = []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("GLOBAL", "INST") and isinstance(arg, str):
                names.append(arg.replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
    except Exception:  # noqa: BLE001 - a broken pickle: report what was found before the break
        pass
    return list(dict.fromkeys(names))


def _refused_globals(path: Path, message: str) -> list[str]:
    """What made torch's weights-only unpickler refuse ``path``, without running anything."""
    if zipfile.is_zipfile(path):
        lister = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
        if lister is not None:
            try:
                with _safe_numpy():
                    found = lister(str(path))
                if found:
                    return list(found)
            except Exception:  # noqa: BLE001 - fall back to the error message
                pass
    named = re.findall(r"GLOBAL ([\w.]+)", message)
    if named:
        return list(dict.fromkeys(named))
    if not zipfile.is_zipfile(path):
        # A bare pickle (not torch.save's format): any import at all is something to refuse loudly.
        return _pickle_globals(path.read_bytes())
    return []


def _safe_numpy():
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if safe_globals is None:  # pragma: no cover - torch < 2.5
        import contextlib

        return contextlib.nullcontext()
    return safe_globals(_numpy_safe_globals())


def read_weights(path: str | Path) -> object:
    """Load a weights file safely; every failure is a CheckpointError with a one-line message."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {str(path)!r} does not exist", "check the teacher's path")
    with open(path, "rb") as fh:
        head = fh.read(1024)
    if not head:
        raise CheckpointError(f"{str(path)!r} is empty", "the download or copy failed; fetch the file again")
    if _looks_like_html(head):
        raise CheckpointError(f"{str(path)!r} is an HTML page, not weights",
                              "the download failed (e.g. a sign-in or 'virus scan' page was saved); "
                              "download the file again")
    # safetensors: an 8-byte little-endian header length, then the JSON header (whatever the file's suffix).
    if path.suffix == ".safetensors" or (len(head) > 9 and head[8:9] == b"{" and not head.startswith(b"PK")):
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # noqa: BLE001 - safetensors raises several types for bad files
            raise CheckpointError(f"{str(path)!r} is not a readable safetensors file "
                                  f"({type(exc).__name__})", "it is truncated or corrupt; fetch it again") \
                from None
    try:
        with _safe_numpy(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        unsafe = _refused_globals(path, str(exc))
        if unsafe:
            shown = ", ".join(unsafe[:3]) + (", ..." if len(unsafe) > 3 else "")
            raise CheckpointError(f"{str(path)!r} was refused: unpickling it would import {shown} (only "
                                  "tensors and plain containers are read, so no code from a file runs)",
                                  _HINT_RESAVE) from None
        raise CheckpointError(f"{str(path)!r} is not a PyTorch weights file (unreadable pickle data)",
                              "pass a .pt/.pth written by torch.save, or a .safetensors file") from None
    except Exception as exc:  # noqa: BLE001 - torch's unpickler raises many types on foreign bytes
        kind = "truncated or corrupt" if zipfile.is_zipfile(path) or head.startswith(b"PK") or \
            isinstance(exc, EOFError) else "not a PyTorch weights file"
        raise CheckpointError(f"{str(path)!r} is {kind} ({type(exc).__name__})",
                              "fetch the file again, or check that it is the weights file") from None


def _strip_wrappers(state: Mapping) -> dict[str, torch.Tensor]:
    """The state dict without wrapper prefixes, also nested ones (``module._orig_mod.``), via torch's own
    ``consume_prefix_in_state_dict_if_present``."""
    from collections import OrderedDict

    from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

    out = OrderedDict((str(k), v) for k, v in state.items())
    before = None
    while before != list(out):
        before = list(out)
        for prefix in WRAPPER_PREFIXES:
            consume_prefix_in_state_dict_if_present(out, prefix)
    return dict(out)


def find_state_dict(obj: object, path: str | Path, key: str | None = None) -> dict[str, torch.Tensor]:
    """The tensor dict inside a loaded file: ``obj[key]`` if given, else the first usual container."""
    where = str(path)
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            top = ", ".join(map(str, list(obj)[:8])) if isinstance(obj, Mapping) else type(obj).__name__
            raise CheckpointError(f"{where!r} has no entry {key!r} (it has: {top})",
                                  "set the loader's key option to one of those entries")
        obj = obj[key]
    while isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        top = ", ".join(map(str, list(obj)[:8])) if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"{where!r} holds no state dict of tensors (found: {top or 'nothing'})",
                              "save model.state_dict(), or a dict holding it under 'state_dict', "
                              "'model_state_dict' or 'model' (or name the entry with the key option)")
    return _strip_wrappers(obj)


def _first(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")


def _map_keys(state: dict[str, torch.Tensor], target: set[str]) -> dict[str, torch.Tensor]:
    """Keys into the model's namespace: kept when the model has them, else put under ``net.``.

    Some training scripts wrap the network as ``self.model``; when dropping a leading ``model.`` makes more
    keys fit, that mapping is used.
    """
    def mapped(strip_model: bool) -> dict[str, torch.Tensor]:
        out = {}
        for k, v in state.items():
            if strip_model and k.startswith("model."):
                k = k[len("model."):]
            out[k if k in target else f"net.{k}"] = v
        return out

    plain = mapped(False)
    if not any(k.startswith("model.") for k in state):
        return plain
    stripped = mapped(True)
    return stripped if len(stripped.keys() & target) > len(plain.keys() & target) else plain


def _take_normalization(state: dict[str, torch.Tensor], target: set[str]):
    """Pop top-level (mean, std) buffers the file carries, if the model has no such keys itself."""
    for mean_key, std_key in NORMALIZATION_KEYS:
        if mean_key in state and std_key in state and mean_key not in target:
            return state.pop(mean_key).reshape(-1).double(), state.pop(std_key).reshape(-1).double()
    return None


def _apply_normalization(model: nn.Module, file_norm, where: str, arch: str, adopt: bool) -> None:
    mean, std = file_norm
    current = model.normalize  # every model from igdm_kit.create_model is an igdm_kit.nn.Classifier
    if isinstance(current, Normalize):
        same = current.mean.numel() == mean.numel() and \
            torch.allclose(current.mean.reshape(-1).double(), mean, atol=1e-4) and \
            torch.allclose(current.std.reshape(-1).double(), std, atol=1e-4)
        if same or adopt:
            model.normalize = Normalize(mean.tolist(), std.tolist())
            return
        raise CheckpointError(
            f"{where!r} normalizes with mean {_fmt(mean)} / std {_fmt(std)} but {arch} was built with "
            f"mean {_fmt(current.mean)} / std {_fmt(current.std)}",
            "remove mean/std from the teacher's settings to use the file's, or fix them")
    if isinstance(current, nn.Identity):
        # The file knows how its network expects its inputs; keep that inside the model.
        model.normalize = Normalize(mean.tolist(), std.tolist())
        return
    raise CheckpointError(f"{where!r} carries mean/std buffers but {arch} has no normalization layer",
                          "build the teacher with an igdm-kit model")


def _fmt(t: torch.Tensor) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in t.reshape(-1).tolist()) + ")"


def fit(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path, *, arch: str,
        adopt_normalization: bool = False, hint: str | None = None) -> nn.Module:
    """Load ``state`` into ``model`` strictly, with clear errors; returns the model in eval mode."""
    where = str(path)
    current = model.state_dict()
    target = set(current)
    state = dict(state)
    file_norm = _take_normalization(state, target)
    mapped = _map_keys(state, target)
    # Files from PyTorch < 0.4.1 have no BatchNorm step counters; they do not affect eval outputs.
    for k in target - mapped.keys():
        if k.endswith("num_batches_tracked"):
            mapped[k] = current[k]
    missing = sorted(target - mapped.keys() - {k for k in target if k.startswith("normalize.")})
    unexpected = sorted(mapped.keys() - target)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) ({_first(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) ({_first(unexpected)})")
        default_hint = "the file holds another architecture than the one named for the teacher"
        if unexpected and all(k.startswith("net.sub_block1.") for k in unexpected):
            default_hint = "the file carries the unused sub_block1 group: set sub_block1 = true in the " \
                           "teacher model's options"
        raise CheckpointError(f"{where!r} does not fit {arch}: " + "; ".join(parts), hint or default_hint)
    for k, v in mapped.items():
        if v.shape != current[k].shape:
            raise CheckpointError(
                f"{where!r} does not fit {arch}: {k} has shape {list(v.shape)} in the file but "
                f"{list(current[k].shape)} in the model",
                hint or "check the architecture and num_classes (the dataset) named for the teacher")
    if file_norm is not None:
        _apply_normalization(model, file_norm, where, arch, adopt_normalization)
    # Buffers of the normalization layer come from the model unless the file carries them itself.
    full = model.state_dict()
    for k in full:
        if k.startswith("normalize.") and k not in mapped:
            mapped[k] = full[k]
    model.load_state_dict(mapped, strict=True)
    return model.eval()


def describe(model: nn.Module, name: str | None = None) -> str:
    """How error messages name the architecture a file was loaded into."""
    if name:
        return f"model {name!r}"
    return f"the teacher architecture ({type(model.net).__name__})"


def build_model(build: Callable[[], nn.Module] | None, loader: str) -> nn.Module:
    if build is None:
        raise CheckpointError(f"the {loader!r} teacher loader needs the teacher's architecture",
                              "name the teacher's model (and its options) in the recipe")
    return build()
