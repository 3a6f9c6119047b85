"""Teacher loader for checkpoints written by igdm-kit (safetensors + metadata): the file alone suffices."""

from __future__ import annotations

from igdm_kit.interfaces import NoOptions


class NativeCheckpoint:
    description = "an igdm-kit checkpoint (.safetensors with metadata); the architecture comes from the file"
    Options = NoOptions

    @classmethod
    def load(cls, options, *, path: str, build=None):
        from igdm_kit.checkpoint import load_model

        return load_model(path)
