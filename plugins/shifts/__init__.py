"""Built-in distribution and threat shifts (OODRobustBench's protocol, Li et al., ICML 2024; the paper's
Table 9): common corruptions computed from the test set, the published corruption files, natural variants
of the test set from their published layouts, and threat models the model was not trained for."""

from igdm_kit.hookspecs import hookimpl


@hookimpl
def register_shifts(register):
    from .corruptions import Corruptions
    from .files import CIFAR10_1, CINIC10, CorruptionFiles, Folder
    from .threats import Threat, Threats

    register("corruptions", Corruptions)
    register("corruption-files", CorruptionFiles)
    register("cifar10.1", CIFAR10_1)
    register("cinic10", CINIC10)
    register("folder", Folder)
    register("threat", Threat)
    register("threats", Threats)
