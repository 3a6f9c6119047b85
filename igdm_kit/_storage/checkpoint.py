"""Self-describing model checkpoints in safetensors.

A checkpoint holds the model's tensors (no pickled code) and, in the safetensors metadata under the key
``igdm_kit``, a JSON object: the registered model name and its options, ``num_classes``/``in_channels``/
``image_size``, the normalization, the dataset (name, options) and its class names, the epoch, the recipe
digest and the toolkit version. So ``load_model(path)`` rebuilds the model from the file alone. Writes are
atomic.

A file is never trusted to say how much to allocate: its metadata is checked before anything is built (types
and bounds, the model's options against its ``Options``, the data shape against the dataset when the caller
knows it), and the tensors the metadata implies — the model built on torch's ``meta`` device, which holds no
memory — must be exactly the tensors in the file's header, read without loading them. Only then is the model
built and the file loaded, so a small file cannot make igdm-kit allocate more than the file holds.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from igdm_kit._storage.io import atomic_write
from igdm_kit.errors import CheckpointError, IgdmKitError

FORMAT = "igdm-kit/1"
META_KEY = "igdm_kit"
#: Metadata ``load_model`` needs to rebuild the model.
REQUIRED = frozenset({"model", "model_options", "num_classes", "in_channels", "image_size", "mean", "std"})
#: Bounds on the data a checkpoint may describe (far beyond any image classifier igdm-kit trains).
BOUNDS = {"num_classes": 1_000_000, "in_channels": 64, "image_size": 4096}


def toolkit_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("igdm-kit")
    except PackageNotFoundError:  # running from a source tree
        return "0+unknown"


def save_model(path: str | os.PathLike, model, meta: dict[str, Any]) -> Path:
    """Write ``model``'s state and ``meta`` (must include ``model``, ``model_options``, ``num_classes``,
    ``in_channels``, ``image_size``, ``mean``, ``std``) to a safetensors file, atomically."""
    from safetensors.torch import save_file

    missing = REQUIRED - meta.keys()
    if missing:
        raise ValueError(f"checkpoint metadata lacks {sorted(missing)}")
    full = {"format": FORMAT, "toolkit_version": toolkit_version(), **meta}
    # safetensors refuses shared storage; contiguous clones keep the file self-contained.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={META_KEY: json.dumps(full)}))


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``igdm_kit`` metadata of a checkpoint; a clear error for anything that is not one."""
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        inside = path / "model.safetensors"
        raise CheckpointError(f"checkpoint {str(path)!r} is a folder",
                              f"did you mean {str(inside)!r}?" if inside.is_file() else "name a .safetensors file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist", "check the path")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for bad files
        raise CheckpointError(
            f"{str(path)!r} is truncated or not a safetensors checkpoint ({type(exc).__name__})",
            "pass a file written by igdm-kit, or load plain PyTorch weights with a teacher loader",
        ) from None
    if "train_state" in meta:  # igdm-kit's own resume file: close, but not a model
        raise CheckpointError(f"{str(path)!r} is igdm-kit training state (for --resume), not a model",
                              "use model.safetensors (or last.safetensors) from the same run folder")
    if META_KEY not in meta:
        raise CheckpointError(f"{str(path)!r} has no igdm-kit metadata",
                              "it was not written by igdm-kit; load it with the 'state-dict' teacher loader")
    try:
        info = json.loads(meta[META_KEY])
    except (ValueError, RecursionError):  # not JSON, or nested deeper than a parser goes
        raise CheckpointError(f"{str(path)!r} has corrupt igdm-kit metadata", "re-create the checkpoint") \
            from None
    if not isinstance(info, dict):
        raise CheckpointError(f"{str(path)!r} has corrupt igdm-kit metadata (not a JSON object)",
                              "re-create the checkpoint")
    if info.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} has checkpoint format {info.get('format')!r}",
                              f"this igdm-kit reads {FORMAT!r}")
    lacking = sorted(REQUIRED - info.keys())
    if lacking:
        raise CheckpointError(f"{str(path)!r} has incomplete igdm-kit metadata (no {', '.join(lacking)})",
                              "re-create the checkpoint")
    check_metadata(path, info)
    return info


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_metadata(path: str | os.PathLike, info: dict[str, Any]) -> None:
    """Types and bounds of the metadata igdm-kit acts on; one ``CheckpointError`` line for the first wrong."""
    def bad(key: str, why: str) -> CheckpointError:
        return CheckpointError(f"{str(path)!r} has {key} = {_show(info.get(key))} in its igdm-kit metadata "
                               f"({why})", "re-create the checkpoint with igdm-kit")

    if not isinstance(info["model"], str):
        raise bad("model", "not a model name")
    if not isinstance(info["model_options"], dict | None):
        raise bad("model_options", "not a table of options")
    for key, top in BOUNDS.items():
        v = info[key]
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= top:
            raise bad(key, f"not a whole number from 1 to {top:,}")
    for key in ("mean", "std"):
        v = info[key]
        if v is not None and (not isinstance(v, list) or len(v) != info["in_channels"]
                              or not all(_number(x) for x in v) or (key == "std" and min(v) <= 0)):
            raise bad(key, f"not {info['in_channels']} finite numbers"
                      + (", all positive" if key == "std" else ""))
    if "eval_eps" in info and not (_number(info["eval_eps"]) and info["eval_eps"] >= 0):
        raise bad("eval_eps", "not a finite radius ≥ 0")
    if "eval_threat" in info and info["eval_threat"] not in ("Linf", "L2", "L1"):
        raise bad("eval_threat", "not Linf, L2 or L1")
    names = info.get("class_names")
    if names is not None and (not isinstance(names, list) or len(names) != info["num_classes"]
                              or not all(isinstance(c, str) for c in names)):
        raise bad("class_names", f"not {info['num_classes']} class names")
    if "epoch" in info and not (isinstance(info["epoch"], int) and not isinstance(info["epoch"], bool)
                                and info["epoch"] >= 0):
        raise bad("epoch", "not a whole number ≥ 0")


def judged_eps(info: dict[str, Any], threat: str) -> float | None:
    """The radius the checkpoint's run was evaluated at, when it was evaluated under ``threat`` (a checkpoint
    that does not say its threat was written when the final evaluation was L∞ only); else None: an L2
    run's ε of 0.5 is no L∞ radius."""
    eps = info.get("eval_eps")
    return float(eps) if _number(eps) and info.get("eval_threat", "Linf") == threat else None


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def check_data_shape(path: str | os.PathLike, info: dict[str, Any], expected: Mapping[str, int],
                     dataset: str = "the dataset") -> None:
    """The checkpoint's classes, channels and image size must be the dataset's (``expected``)."""
    for key in BOUNDS:
        if key in expected and info.get(key) != expected[key]:
            raise CheckpointError(f"checkpoint {str(path)!r} has {key}={info.get(key)} but {dataset} has "
                                  f"{expected[key]}", "use a checkpoint trained on this dataset")


def tensor_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Name → shape of every tensor in a safetensors file, from its header alone (nothing is loaded)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for bad files
        raise CheckpointError(f"{str(path)!r} is truncated or corrupt ({type(exc).__name__})",
                              "re-create or re-copy the checkpoint") from None


def _build(path: str | os.PathLike, info: dict[str, Any]):
    from igdm_kit.factories import create_model

    try:
        return create_model(info["model"], num_classes=info["num_classes"], in_channels=info["in_channels"],
                            image_size=info["image_size"], mean=info["mean"], std=info["std"],
                            where="model_options", **(info.get("model_options") or {}))
    except IgdmKitError as exc:
        raise CheckpointError(f"{str(path)!r} needs model {info['model']!r}: {exc.message}",
                              exc.hint or "install the plugin that provides it") from None
    except (TypeError, ValueError) as exc:  # metadata of the wrong type (e.g. a mean of the wrong length)
        raise CheckpointError(f"{str(path)!r} has metadata that cannot rebuild model {info['model']!r}: "
                              f"{exc}", "re-create the checkpoint") from None


def check_fits_file(path: str | os.PathLike, info: dict[str, Any]) -> None:
    """The tensors the metadata implies (the model built on the ``meta`` device: no memory) must be the
    file's, read from its header: a file cannot ask for more than it holds."""
    import torch

    try:
        with torch.device("meta"):
            skeleton = _build(path, info)
    except (NotImplementedError, RuntimeError):  # a plugin model that cannot be built on meta: the
        return  # strict load below still checks every tensor
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    found = tensor_shapes(path)
    if expected == found:
        return
    n_expected = sum(math.prod(s) for s in expected.values())
    n_found = sum(math.prod(s) for s in found.values())
    key = next((k for k in sorted(expected) if found.get(k) != expected[k]), None) or \
        sorted(found.keys() - expected.keys())[0]
    what = (f"{key} has shape {list(found[key])} in the file, {list(expected[key])} in the model"
            if key in found and key in expected else
            f"{'no' if key in expected else 'an unexpected'} tensor {key}")
    raise CheckpointError(f"{str(path)!r} does not fit model {info['model']!r} as its metadata describes it "
                          f"({n_expected:,} values; the file holds {n_found:,}): {what}",
                          "the file's tensors and its metadata disagree; re-create it")


def load_model(path: str | os.PathLike, device: str = "cpu", *, expect: Mapping[str, int] | None = None,
               dataset: str = "the dataset"):
    """Rebuild a model from an igdm-kit checkpoint alone; returned in ``eval()`` mode.

    ``expect``: the ``num_classes``/``in_channels``/``image_size`` of the data it will see (checked before
    anything is built). The metadata must describe exactly the file's tensors (``check_fits_file``)."""
    from safetensors.torch import load_file

    info = read_metadata(path)
    if expect is not None:
        check_data_shape(path, info, expect, dataset)
    check_fits_file(path, info)
    model = _build(path, info)
    try:
        state = load_file(str(path), device="cpu")
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for bad files
        raise CheckpointError(f"{str(path)!r} is truncated or corrupt ({type(exc).__name__})",
                              "re-create or re-copy the checkpoint") from None
    expected = model.state_dict()
    wrong = [k for k in sorted(expected.keys() & state.keys()) if expected[k].shape != state[k].shape]
    if wrong:
        raise CheckpointError(f"{str(path)!r} does not fit model {info['model']!r}: {wrong[0]} has shape "
                              f"{list(state[wrong[0]].shape)}, the model {list(expected[wrong[0]].shape)}",
                              "the file's tensors and its metadata disagree; re-create it")
    keys = model.load_state_dict(state, strict=False)  # torch's own account of the keys that do not fit
    if keys.missing_keys or keys.unexpected_keys:
        what = f"missing {sorted(keys.missing_keys)[0]}" if keys.missing_keys else \
            f"unexpected {sorted(keys.unexpected_keys)[0]}"
        raise CheckpointError(f"{str(path)!r} does not fit model {info['model']!r}: {what}",
                              "the file's tensors and its metadata disagree; re-create it")
    model.to(device).eval()
    model.igdm_kit_meta = info  # type: ignore[attr-defined]
    return model
