"""``astrid.__version__``, read from the installed package metadata when first asked for (so
``import astrid`` does not look up distributions); pyproject.toml holds the version."""

from __future__ import annotations

from .plugins import package_version

DISTRIBUTION = "astrid-runtime"
"""The name astrid is installed under (``pip install astrid-runtime``)."""

__version__ = package_version(DISTRIBUTION)
