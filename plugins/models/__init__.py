"""Built-in model architectures. Every model takes [0,1] images; normalization is a layer inside it."""

from igdm_kit.hookspecs import hookimpl


@hookimpl
def register_models(register):
    from .cifar_resnet import CifarResNet, ResNet56
    from .mobilenet_v2 import MobileNetV2
    from .preact_resnet import PreActResNet18
    from .resnet import ResNet18
    from .small_cnn import SmallCNN
    from .timm_model import TimmModel
    from .wide_resnet import WRN28_10, WRN34_10, WideResNet

    register("small-cnn", SmallCNN)
    register("resnet18", ResNet18)
    register("preactresnet18", PreActResNet18)
    register("mobilenetv2", MobileNetV2)
    register("wrn-34-10", WRN34_10)
    register("wrn-28-10", WRN28_10)
    register("wideresnet", WideResNet)
    register("cifar-resnet", CifarResNet)
    register("resnet56", ResNet56)
    register("timm", TimmModel)
