"""Any architecture of ``timm`` (Wightman, PyTorch Image Models — the model library RobustBench's ImageNet
zoo and ARES 2.0 are built on) as a student or a teacher: ``[student] model = "timm"`` with ``arch =
"resnet18"`` (or ``convnext_tiny``, ``mobilenetv3_large_100``, …: ``timm.list_models()``).

The network is built with the dataset's classes and channels (``num_classes``, ``in_chans``) and no pretrained
weights; like every igdm-kit model it takes [0, 1] images and the dataset's normalization is a layer in front
of it. ``checkpoint`` starts it from weights on disk — a ``.safetensors`` file, or a state dict read with
``torch.load(weights_only=True)`` (files that would run code are refused) — e.g. ImageNet-pretrained weights
you downloaded: igdm-kit never downloads (``hf-hub:`` names and ``pretrained`` are refused with the line that
says what to do instead). Needs ``pip install 'igdm-kit[timm]'``; ``recipe check`` says so before a run.
"""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import Field, field_validator

from igdm_kit.errors import CheckpointError
from igdm_kit.interfaces import Options, PathOption

INSTALL = "pip install 'igdm-kit[timm]'"


def _timm():
    try:
        import timm
    except Exception:  # noqa: BLE001 — absent or broken: the same one line
        raise ValueError(f"the timm model needs the timm package: {INSTALL}") from None
    return timm


class TimmModel:
    description = "any timm architecture (arch = timm.list_models() name), local weights only; needs the timm extra"

    class Options(Options):
        arch: str = Field(..., min_length=1, description="the timm architecture, e.g. resnet18, convnext_tiny "
                                                         "(timm.list_models())")
        checkpoint: PathOption | None = Field(None, description="initial weights on disk (.safetensors or a "
                                                                "state dict, read with weights_only)")
        drop_rate: float = Field(0.0, ge=0.0, lt=1.0, description="dropout before the classifier")

        @field_validator("arch")
        @classmethod
        def _known(cls, v: str) -> str:
            if v.startswith(("hf-hub:", "hf_hub:", "timm/")) or "." in v:
                raise ValueError(f"{v!r} names weights on the Hugging Face hub, which igdm-kit never downloads: "
                                 "give the architecture (e.g. 'resnet18') and the downloaded file as checkpoint")
            names = _timm().list_models()
            if v not in names:
                close = difflib.get_close_matches(v, names, n=3, cutoff=0.6)
                raise ValueError(f"timm has no architecture {v!r}"
                                 + (f"; did you mean {', '.join(map(repr, close))}?" if close else
                                    " (timm.list_models() lists them)"))
            return v

    @classmethod
    def build(cls, options: Options, *, num_classes: int, in_channels: int, image_size: int):
        net = _timm().create_model(options.arch, pretrained=False, num_classes=num_classes, in_chans=in_channels,
                                   drop_rate=options.drop_rate)
        if options.checkpoint is not None:
            _load_weights(net, str(options.checkpoint))
        return net


def _load_weights(net, path: str) -> None:
    """``path``'s tensors into ``net``, every key and shape matching (a one-line error naming the first that
    does not)."""
    import torch

    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state: Any = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"student.checkpoint {path!r} does not exist", "check the path") from None
    except Exception as exc:  # noqa: BLE001 — pickles that would run code, truncated files, ...
        raise CheckpointError(f"cannot read weights {path!r} ({type(exc).__name__})",
                              "give a .safetensors file or a plain state dict") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    bad = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or bad:
        k = (missing or bad)[0]
        raise CheckpointError(f"weights {path!r} do not fit this timm model: "
                              + (f"{k!r} is missing" if missing else
                                 f"{k!r} is {tuple(state[k].shape)}, the model's {tuple(own[k].shape)}"),
                              "the file is of another architecture or number of classes")
    net.load_state_dict({k: state[k] for k in own})
