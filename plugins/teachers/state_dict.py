"""Teacher loader for plain PyTorch weights (``.pt``/``.pth`` state dicts, or ``.safetensors``).

For the paper's setting where the teacher is a robust network trained elsewhere (Section 4.1): the recipe
names the architecture (``build()`` constructs it, with the recipe's normalization), and this file supplies
only its weights. The file is read with ``torch.load(weights_only=True)`` — a file whose unpickling would
import code is refused without running it — then unwrapped (``state_dict``/``model_state_dict``/``model``
entries), stripped of ``module.``/``_orig_mod.`` prefixes, mapped into the model's ``net.`` namespace (keys
already in it are kept) and loaded strictly. Top-level ``mean``/``std`` buffers in the file (DeepMind-style
WideResNets) become the model's normalization when the recipe gives none, and must agree with it otherwise.
"""

from __future__ import annotations

from pydantic import Field

from igdm_kit.interfaces import Options, TeacherLoader

from .weights import build_model, describe, find_state_dict, fit, read_weights


class StateDictLoader(TeacherLoader):
    description = "plain PyTorch weights (.pt/.pth/.safetensors) for the architecture the recipe names"

    class Options(Options):
        key: str | None = Field(
            None, description="entry of the file's top-level dict holding the weights (default: "
                              "'state_dict', 'model_state_dict' or 'model' if present, else the whole file)")

    @classmethod
    def load(cls, options: Options, *, path: str, build=None):
        model = build_model(build, "state-dict")
        state = find_state_dict(read_weights(path), path, options.key)
        return fit(model, state, path, arch=describe(model, build.model_name))
