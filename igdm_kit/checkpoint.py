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

from .errors import CheckpointError
from .io import atomic_write

FORMAT = "igdm-kit/1"
META_KEY = "igdm_kit"


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

    required = {"model", "model_options", "num_classes", "in_channels", "image_size", "mean", "std"}
    missing = required - meta.keys()
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
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist", "check the path")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for bad files
        raise CheckpointError(
            f"{str(path)!r} is not a readable safetensors checkpoint ({type(exc).__name__})",
            "pass a file written by igdm-kit, or load plain PyTorch weights with a teacher loader",
        ) from None
    if META_KEY not in meta:
        raise CheckpointError(f"{str(path)!r} has no igdm-kit metadata",
                              "it was not written by igdm-kit; load it with the 'state-dict' teacher loader")
    try:
        info = json.loads(meta[META_KEY])
    except json.JSONDecodeError:
        raise CheckpointError(f"{str(path)!r} has corrupt igdm-kit metadata", "re-create the checkpoint") \
            from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} has checkpoint format {info.get('format')!r}",
                              f"this igdm-kit reads {FORMAT!r}")
    return info


def load_model(path: str | os.PathLike, device: str = "cpu"):
    """Rebuild a model from an igdm-kit checkpoint alone; returned in ``eval()`` mode."""
    from safetensors.torch import load_file

    from .components import create_model

    info = read_metadata(path)
    model = create_model(info["model"], num_classes=info["num_classes"], in_channels=info["in_channels"],
                         image_size=info["image_size"], mean=info["mean"], std=info["std"],
                         **info.get("model_options", {}))
    state = load_file(str(path), device="cpu")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"{str(path)!r} does not fit model {info['model']!r}: {first}",
                              "the file's tensors and its metadata disagree; re-create it") from None
    model.to(device).eval()
    model.igdm_kit_meta = info  # type: ignore[attr-defined]
    return model
