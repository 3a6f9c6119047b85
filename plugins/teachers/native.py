"""Teacher loader for checkpoints written by igdm-kit (safetensors + metadata): the file alone suffices.

The file's recorded classes, channels and image size are checked against the dataset's (``build``) before
anything is built.
"""

from __future__ import annotations

from igdm_kit.interfaces import NoOptions, TeacherLoader


class NativeCheckpoint(TeacherLoader):
    description = "an igdm-kit checkpoint (.safetensors with metadata); the architecture comes from the file"
    Options = NoOptions

    @classmethod
    def load(cls, options, *, path: str, build=None):
        from igdm_kit import load_model

        expect = None if build is None else {"num_classes": build.num_classes, "in_channels": build.in_channels,
                                             "image_size": build.image_size}
        return load_model(path, expect=expect, dataset="the recipe's dataset")
