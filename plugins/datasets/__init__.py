"""Built-in datasets."""

from igdm_kit.hookspecs import hookimpl


@hookimpl
def register_datasets(register):
    from .cifar import CIFAR10, CIFAR100
    from .digits import Digits
    from .image_folder import ImageFolder
    from .imagenet import ImageNet
    from .mnist import MNIST
    from .svhn import SVHN
    from .synthetic import Synthetic
    from .tiny_imagenet import TinyImageNet
    from .webdataset import WebDataset

    register("digits", Digits)
    register("cifar10", CIFAR10)
    register("cifar100", CIFAR100)
    register("svhn", SVHN)
    register("mnist", MNIST)
    register("tiny-imagenet", TinyImageNet)
    register("image-folder", ImageFolder)
    register("imagenet", ImageNet)
    register("webdataset", WebDataset)
    register("synthetic", Synthetic)
