"""``python -m igdm_kit`` is ``igdm-kit``."""

from igdm_kit._cli import main

main()
