"""Self-describing model checkpoints in safetensors.

A checkpoint holds the model's tensors (no pickled code) and, in the safetensors metadata under the key
``igdm_kit``, a JSON object: the registered model name and its options, ``num_classes``/``in_channels``/
``image_size``, the normalization, the dataset, the epoch, the recipe digest and the toolkit version. So
``load_model(path)`` rebuilds the model from the file alone. Writes are atomic.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import CheckpointError, IgdmKitError
from .io import atomic_write

FORMAT = "igdm-kit/1"
META_KEY = "igdm_kit"
#: Metadata ``load_model`` needs to rebuild the model.
REQUIRED = frozenset({"model", "model_options", "num_classes", "in_channels", "image_size", "mean", "std"})


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
    except json.JSONDecodeError:
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
    return info


def load_model(path: str | os.PathLike, device: str = "cpu"):
    """Rebuild a model from an igdm-kit checkpoint alone; returned in ``eval()`` mode."""
    from safetensors.torch import load_file

    from .components import create_model

    info = read_metadata(path)
    try:
        model = create_model(info["model"], num_classes=info["num_classes"], in_channels=info["in_channels"],
                             image_size=info["image_size"], mean=info["mean"], std=info["std"],
                             **(info.get("model_options") or {}))
    except IgdmKitError as exc:
        raise CheckpointError(f"{str(path)!r} needs model {info['model']!r}: {exc.message}",
                              exc.hint or "install the plugin that provides it") from None
    except (TypeError, ValueError) as exc:  # metadata of the wrong type (e.g. a mean of the wrong length)
        raise CheckpointError(f"{str(path)!r} has metadata that cannot rebuild model {info['model']!r}: "
                              f"{exc}", "re-create the checkpoint") from None
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
