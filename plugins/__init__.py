"""igdm-kit's built-in components, delivered as plugins through the same hooks a third party uses.

Each sub-package is one plugin listed in ``igdm_kit._plugins.manager.DEFAULT_PLUGINS``. Plugin modules import torch
only inside their hooks, so loading them for ``igdm-kit --help`` costs nothing.
"""
