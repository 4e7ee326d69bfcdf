"""Fixtures: a loopback fake Anthropic server per test (real sockets, real SSE), stopped at the
end, and providers pointed at it. No test reaches a real endpoint or needs a real key."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from anthropic_testkit import TEST_KEY
from astrid.testing.fake_llm import FakeAnthropicServer
from pydantic import SecretStr

from astrid_anthropic.provider import AnthropicProvider


@pytest.fixture
def server() -> Iterator[FakeAnthropicServer]:
    """A started fake server that requires ``TEST_KEY``."""
    with FakeAnthropicServer(api_key=TEST_KEY, models=("claude-test",)) as fake:
        yield fake


@pytest.fixture
def make_provider(server: FakeAnthropicServer) -> Callable[..., AnthropicProvider]:
    """A provider for the fake server (keyword arguments override the defaults)."""

    def make(**kwargs: Any) -> AnthropicProvider:
        options: dict[str, Any] = {
            "model": "claude-test",
            "api_key": SecretStr(TEST_KEY),
            "base_url": server.base_url,
            "max_retries": 0,
            "timeout_s": 10.0,
        }
        options.update(kwargs)
        return AnthropicProvider(**options)

    return make
