"""The CIFAR ResNets of He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", CVPR 2016
(Section 4.2): a 3×3 stem of 16 channels, three stages of n basic blocks at 16, 32 and 64 channels (the
second and third strided), global average pooling and a linear head; depth = 6n + 2 (20, 32, 44, 56, 110).
Shortcuts that change shape are a 1×1 convolution and BatchNorm (option B), and the parameter names are those
of chenyaofo/pytorch-cifar-models' ``CifarResNet`` (``conv1``, ``bn1``, ``layer1.0.conv1``, ...,
``layer2.0.downsample.0``, ``fc``), whose files MTARD's clean teacher (``cifar10_resnet56``, 93.18 %) uses: a
published state dict loads strictly (``[teachers.clean] loader = "state-dict"``, ``model = "resnet56"``).
"""

from __future__ import annotations

from pydantic import Field, field_validator
from torch import nn

from igdm_kit.interfaces import Options


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class _CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int, in_channels: int) -> None:
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        stages, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            stages.append(nn.Sequential(*[_Block(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                                          for i in range(n)]))
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


class CifarResNet:
    description = "CIFAR ResNet-(6n+2) of He et al. (2016), option-B shortcuts (e.g. MTARD's clean ResNet-56)"

    class Options(Options):
        depth: int = Field(56, ge=8, le=1202, description="6n + 2: 20, 32, 44, 56, 110")

        @field_validator("depth")
        @classmethod
        def _form(cls, v: int) -> int:
            if (v - 2) % 6:
                raise ValueError(f"depth {v} is not of the form 6n + 2 (20, 32, 44, 56, 110)")
            return v

    @classmethod
    def build(cls, options: Options, *, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
        return _CifarResNet(options.depth, num_classes, in_channels)


class ResNet56(CifarResNet):
    description = "CIFAR ResNet-56 of He et al. (2016): MTARD's clean teacher (chenyaofo's parameter names)"

    class Options(Options):
        pass

    @classmethod
    def build(cls, options: Options, *, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
        return _CifarResNet(56, num_classes, in_channels)
