"""WideResNets (Zagoruyko & Komodakis, 2016), the paper's teachers (Table 1): WRN-34-10 (LTD on CIFAR,
PGD-AT on SVHN, RiFT on Tiny-ImageNet) and WRN-28-10 (BDM-AT = Wang2023Better, IKL-AT = Cui2023Decoupled).

A WRN-d-k has a 3×3 stem of 16 channels, three groups of (d − 4)/6 pre-activation basic blocks with
16k, 32k, 64k channels (groups 2 and 3 stride 2), a final BN–activation, global average pooling and a
linear head. Two public layouts exist and both are built here, so that public checkpoints load as they are:

* ``trades`` — the TRADES / RobustBench ``WideResNet`` layout (LTD's checkpoints): ``conv1``,
  ``block1``…``block3`` (``.layer.<i>`` blocks with ``bn1``/``conv1``/``bn2``/``conv2``/``convShortcut``),
  ``bn1``, ``fc``; strided convolutions pad 1 on every side. ``sub_block1`` adds the unused extra first
  group some checkpoints carry (LTD's CIFAR-100 WRN-34-10), only so that their weights load.
* ``deepmind`` — DeepMind's layout (RobustBench's ``DMWideResNet``, used by Wang2023Better and
  Cui2023Decoupled): ``init_conv``, ``layer.<g>.block.<i>`` (``batchnorm_0``/``conv_0``/``batchnorm_1``/
  ``conv_1``/``shortcut``), ``batchnorm``, ``logits``; strided convolutions pad like TensorFlow's "SAME"
  (0 before, 1 after), which changes the numbers, so weights only reproduce their accuracy in this layout.

The activation is ReLU or SiLU (the "Swish" of the DeepMind-style WRN-28-10 teachers). With no layout
given, SiLU selects ``deepmind`` and ReLU ``trades``, as in every public checkpoint of those teachers.

For 64×64 inputs the AT codebases' convention is kept (RiFT's Tiny-ImageNet WRN-34-10, the paper's
Tiny-ImageNet teacher, is built this way): the same stem and 8×8 pooling window, which leaves a 2×2 grid,
so the head takes 640·(64/32)² = 2560 features (``common.pool_grid``); at 32×32 the pooling is global.
RiFT's WRN-34-10 also carries ``sub_block1``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from igdm_kit.interfaces import Options

from .common import make_activation, pool_grid

Activation = Literal["relu", "silu"]
Layout = Literal["trades", "deepmind"]


# -- TRADES / Zagoruyko layout -------------------------------------------------------------------------
class TradesBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, activation: str) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.act1 = make_activation(activation)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.act2 = make_activation(activation)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(
            in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.act1(self.bn1(x))
        out = self.conv2(self.act2(self.bn2(self.conv1(pre))))
        # The projection shortcut sees the pre-activated input, the identity shortcut the raw input.
        return out + (x if self.equal_in_out else self.convShortcut(pre))


class TradesGroup(nn.Module):
    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int, activation: str) -> None:
        super().__init__()
        self.layer = nn.Sequential(*[
            TradesBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, activation)
            for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class TradesWideResNet(nn.Module):
    def __init__(self, depth: int, width: int, num_classes: int, in_channels: int, activation: str,
                 sub_block1: bool = False, image_size: int = 32) -> None:
        super().__init__()
        self.grid = pool_grid(image_size)
        n = (depth - 4) // 6
        ch = (16, 16 * width, 32 * width, 64 * width)
        self.conv1 = nn.Conv2d(in_channels, ch[0], 3, stride=1, padding=1, bias=False)
        self.block1 = TradesGroup(n, ch[0], ch[1], 1, activation)
        if sub_block1:
            self.sub_block1 = TradesGroup(n, ch[0], ch[1], 1, activation)  # never used in forward
        self.block2 = TradesGroup(n, ch[1], ch[2], 2, activation)
        self.block3 = TradesGroup(n, ch[2], ch[3], 2, activation)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.act = make_activation(activation)
        self.fc = nn.Linear(ch[3] * self.grid ** 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.act(self.bn1(out))
        return self.fc(F.adaptive_avg_pool2d(out, self.grid).flatten(1))


# -- DeepMind layout -----------------------------------------------------------------------------------
class DeepMindBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, activation: str) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError("stride must be 1 or 2")
        self.stride = stride
        self.batchnorm_0 = nn.BatchNorm2d(in_planes)
        self.act_0 = make_activation(activation)
        self.conv_0 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(out_planes)
        self.act_1 = make_activation(activation)
        self.conv_1 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = None if in_planes == out_planes else nn.Conv2d(
            in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.act_0(self.batchnorm_0(x))
        # TensorFlow "SAME" padding: symmetric for stride 1, only bottom/right for stride 2.
        padded = F.pad(pre, (1, 1, 1, 1) if self.stride == 1 else (0, 1, 0, 1))
        out = self.conv_1(self.act_1(self.batchnorm_1(self.conv_0(padded))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class DeepMindGroup(nn.Module):
    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int, activation: str) -> None:
        super().__init__()
        self.block = nn.Sequential(*[
            DeepMindBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1,
                          activation)
            for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class DeepMindWideResNet(nn.Module):
    def __init__(self, depth: int, width: int, num_classes: int, in_channels: int, activation: str,
                 image_size: int = 32) -> None:
        super().__init__()
        self.grid = pool_grid(image_size)
        n = (depth - 4) // 6
        ch = (16, 16 * width, 32 * width, 64 * width)
        self.init_conv = nn.Conv2d(in_channels, ch[0], 3, stride=1, padding=1, bias=False)
        self.layer = nn.Sequential(DeepMindGroup(n, ch[0], ch[1], 1, activation),
                                   DeepMindGroup(n, ch[1], ch[2], 2, activation),
                                   DeepMindGroup(n, ch[2], ch[3], 2, activation))
        self.batchnorm = nn.BatchNorm2d(ch[3])
        self.act = make_activation(activation)
        self.logits = nn.Linear(ch[3] * self.grid ** 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.batchnorm(self.layer(self.init_conv(x))))
        return self.logits(F.adaptive_avg_pool2d(out, self.grid).flatten(1))


# -- registered factories --------------------------------------------------------------------------------
class WRNOptions(Options):
    activation: Activation = Field("relu", description="relu, or silu (the 'Swish' of DeepMind-style WRNs)")
    layout: Layout | None = Field(
        None, description="parameter layout: trades (TRADES/LTD) or deepmind (DMWideResNet); "
                          "default: deepmind for silu, trades for relu")
    sub_block1: bool = Field(
        False, description="add the unused extra first group some checkpoints carry (LTD's CIFAR-100 "
                           "WRN-34-10); trades layout only")

    @model_validator(mode="after")
    def _sub_block1_needs_trades(self):
        if self.sub_block1 and self.resolved_layout() != "trades":
            raise ValueError("sub_block1 exists only in the trades layout")
        return self

    def resolved_layout(self) -> str:
        if self.layout is not None:
            return self.layout
        return "deepmind" if self.activation == "silu" else "trades"

    def effective_defaults(self) -> dict[str, tuple[str, str]]:
        if self.layout is not None:
            return {}
        return {"layout": (self.resolved_layout(), f"the default for activation {self.activation}")}


def init_weights(net: nn.Module) -> None:
    """The WRN reference initialization (Zagoruyko's, kept by TRADES and DeepMind's PyTorch code):
    convolutions N(0, 2/(k²·out_channels)), BatchNorm γ = 1 and β = 0, linear biases 0."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)


def build_wide_resnet(depth: int, width: int, options: WRNOptions, *, num_classes: int, in_channels: int,
                      image_size: int) -> nn.Module:
    if options.resolved_layout() == "deepmind":
        net: nn.Module = DeepMindWideResNet(depth, width, num_classes, in_channels, options.activation,
                                            image_size=image_size)
    else:
        net = TradesWideResNet(depth, width, num_classes, in_channels, options.activation,
                               sub_block1=options.sub_block1, image_size=image_size)
    init_weights(net)
    return net


class WideResNet:
    description = "WideResNet of any depth and width (depth − 4 divisible by 6)"

    class Options(WRNOptions):
        depth: int = Field(28, ge=10, le=130, description="depth d; (d − 4) must be divisible by 6")
        widen_factor: int = Field(10, ge=1, le=32, description="width multiplier k")

        @model_validator(mode="after")
        def _depth_form(self):
            if (self.depth - 4) % 6:
                raise ValueError(f"depth {self.depth} is not of the form 6n + 4 (e.g. 16, 28, 34, 40, 70)")
            return self

    @classmethod
    def build(cls, options: Options, *, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
        return build_wide_resnet(options.depth, options.widen_factor, options, num_classes=num_classes,
                                 in_channels=in_channels, image_size=image_size)


class WRN34_10:
    description = "WideResNet-34-10 (LTD, SVHN and Tiny-ImageNet teachers)"
    Options = WRNOptions

    @classmethod
    def build(cls, options: WRNOptions, *, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
        return build_wide_resnet(34, 10, options, num_classes=num_classes, in_channels=in_channels,
                                 image_size=image_size)


class WRN28_10:
    description = "WideResNet-28-10 (BDM-AT and IKL-AT teachers use it with activation = 'silu')"
    Options = WRNOptions

    @classmethod
    def build(cls, options: WRNOptions, *, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
        return build_wide_resnet(28, 10, options, num_classes=num_classes, in_channels=in_channels,
                                 image_size=image_size)
