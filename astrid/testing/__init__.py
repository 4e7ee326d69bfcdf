"""Test helpers for plugin authors: conformance suites and fake LLM servers.

``from astrid.testing import StorageConformance`` (or ``ProviderConformance``,
``ToolConformance``, ``TokenEstimatorConformance``) and subclass it
in a test module; the fake OpenAI / Anthropic servers are in ``astrid.testing.fake_llm``. See
``docs/plugin-authors.md``. Names load on first use, so the fake servers work without pytest
(the conformance suites need it); ``import astrid`` never imports this package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .conformance import HOSTILE_IDS, HOSTILE_TEXTS, StorageConformance, sample_messages
    from .fake_llm import (
        ErrorReply,
        FakeAnthropicServer,
        FakeOpenAIServer,
        Reply,
        Text,
        Thinking,
        Tokens,
        ToolArgs,
        ToolCallSpec,
    )
    from .processes import run_together
    from .provider_conformance import ProviderConformance, ProviderTarget
    from .tool_conformance import TokenEstimatorConformance, ToolConformance

_WHERE = {
    "HOSTILE_IDS": "conformance",
    "HOSTILE_TEXTS": "conformance",
    "StorageConformance": "conformance",
    "sample_messages": "conformance",
    "ErrorReply": "fake_llm",
    "FakeAnthropicServer": "fake_llm",
    "FakeOpenAIServer": "fake_llm",
    "Reply": "fake_llm",
    "Text": "fake_llm",
    "Thinking": "fake_llm",
    "Tokens": "fake_llm",
    "ToolArgs": "fake_llm",
    "ToolCallSpec": "fake_llm",
    "ProviderConformance": "provider_conformance",
    "ProviderTarget": "provider_conformance",
    "TokenEstimatorConformance": "tool_conformance",
    "ToolConformance": "tool_conformance",
    "run_together": "processes",
}

__all__ = [
    "HOSTILE_IDS",
    "HOSTILE_TEXTS",
    "ErrorReply",
    "FakeAnthropicServer",
    "FakeOpenAIServer",
    "ProviderConformance",
    "ProviderTarget",
    "Reply",
    "StorageConformance",
    "Text",
    "Thinking",
    "TokenEstimatorConformance",
    "Tokens",
    "ToolArgs",
    "ToolCallSpec",
    "ToolConformance",
    "run_together",
    "sample_messages",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'astrid.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
