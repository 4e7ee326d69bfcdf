"""Test helpers for plugin authors: the storage conformance suite (needs pytest).

``from astrid.testing import StorageConformance`` and subclass it in a test module; see
``docs/plugin-authors.md``. ``import astrid`` never imports this package.
"""

from __future__ import annotations

from .conformance import HOSTILE_IDS, HOSTILE_TEXTS, StorageConformance, sample_messages

__all__ = ["HOSTILE_IDS", "HOSTILE_TEXTS", "StorageConformance", "sample_messages"]
