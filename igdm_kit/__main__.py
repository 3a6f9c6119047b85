"""``python -m igdm_kit`` is ``igdm-kit``."""

from .cli import main

main()
