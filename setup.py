"""Only the package list, found rather than kept by hand (pyproject.toml has everything else).

``plugins/`` installs as ``igdm_kit_plugins`` (see ``package-dir`` in pyproject.toml), which
``[tool.setuptools.packages.find]`` cannot express: it finds packages by their folder's name.
"""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["igdm_kit", "igdm_kit.*"]),
                *(f"igdm_kit_plugins{p and '.' + p}" for p in ["", *find_packages("plugins")])])
