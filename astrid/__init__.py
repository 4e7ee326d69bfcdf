"""astrid: a session runtime for LLM agents."""

from __future__ import annotations

__version__ = "0.2.0.dev0"
