"""The LPIPS distance of perceptual-advex (Laidlaw, Singla & Feizi, "Perceptual adversarial robustness",
ICLR 2021): d(x, x') = ‖φ(x) − φ(x')‖₂ with φ the activations of AlexNet's five ReLU stages, each scaled to
unit norm over channels and by 1/√(H·W), concatenated (``normalize_flatten_features``); inputs normalized
with ImageNet's mean and std, grey images repeated to three channels.

The backbone is the user's weights file (no download): perceptual-advex's ``alexnet_cifar.pt`` (CIFAR
AlexNet, 3×3 first convolution; OODRobustBench's choice on CIFAR) or torchvision's AlexNet state dict
(11×11). Read with ``torch.load(weights_only=True)``: no code runs.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from igdm_kit.errors import CheckpointError

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TAPS = ((0, 2), (2, 5), (5, 8), (8, 10), (10, 12))  # features[a:b]: conv+ReLU stages (pools between)


def features_net(cifar: bool) -> nn.Sequential:
    """AlexNet's ``features`` (13 modules): CIFAR's (perceptual-advex ``CifarAlexNet``) or torchvision's."""
    if cifar:
        first, pool = [nn.Conv2d(3, 64, 3, stride=2, padding=1)], lambda: nn.MaxPool2d(2)
        second = nn.Conv2d(64, 192, 3, padding=1)
    else:
        first, pool = [nn.Conv2d(3, 64, 11, stride=4, padding=2)], lambda: nn.MaxPool2d(3, stride=2)
        second = nn.Conv2d(64, 192, 5, padding=2)
    return nn.Sequential(first[0], nn.ReLU(), pool(), second, nn.ReLU(), pool(),
                         nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(), nn.Conv2d(384, 256, 3, padding=1),
                         nn.ReLU(), nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), pool())


class LPIPS(nn.Module):
    def __init__(self, features: nn.Sequential) -> None:
        super().__init__()
        self.features = features.eval()
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))
        for p in self.parameters():
            p.requires_grad_(False)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """φ(x): the normalized, flattened activations (one row per image)."""
        h = ((x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x) - self.mean) / self.std
        out = []
        for a, b in TAPS:
            h = self.features[a:b](h)
            norm = h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10
            out.append((h / (norm * (h.shape[2] * h.shape[3]) ** 0.5)).flatten(1))
        return torch.cat(out, 1)


def load_lpips(path: str, device) -> LPIPS:
    """The backbone in ``path``; a one-line error when it is missing or not an AlexNet."""
    if not Path(path).is_file():
        raise CheckpointError(f"LPIPS backbone weights {path!r} do not exist",
                              "set lpips_weights to perceptual-advex's alexnet_cifar.pt or torchvision's "
                              "AlexNet weights file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file: one line
        raise CheckpointError(f"{path!r} is not a readable weights file ({type(exc).__name__})",
                              "pass a state dict saved with torch.save") from None
    state = state.get("model", state) if isinstance(state, dict) else state
    feats = {k.split("features.", 1)[1]: v for k, v in state.items() if "features." in k}
    w = feats.get("0.weight")
    if w is None or w.ndim != 4 or w.shape[:2] != (64, 3):
        raise CheckpointError(f"{path!r} holds no AlexNet features (features.0.weight of 64×3×k×k)",
                              "pass perceptual-advex's alexnet_cifar.pt or torchvision's alexnet weights")
    net = features_net(cifar=w.shape[-1] == 3)
    try:
        net.load_state_dict(feats)
    except RuntimeError as exc:
        raise CheckpointError(f"{path!r} does not fit AlexNet's features: {str(exc).splitlines()[0]}",
                              "pass an unmodified AlexNet state dict") from None
    return LPIPS(net).to(device)
