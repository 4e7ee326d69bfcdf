"""Fixtures: a loopback fake Chat Completions server (``astrid.testing.fake_llm``) per test.

It listens on 127.0.0.1 on a free port, checks the bearer key, and stops at the end of the
test even when it fails; nothing here reaches a real vendor.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from astrid.testing.fake_llm import FakeOpenAIServer
from pydantic import SecretStr

from astrid_openai import OpenAIOptions
from astrid_openai.provider import OpenAIProvider


@pytest.fixture
def api_key() -> str:
    """A fresh key that looks like a real one (so a leak of it is easy to grep for)."""
    return f"sk-test-{secrets.token_hex(16)}"


@pytest.fixture
def server(api_key: str) -> Iterator[FakeOpenAIServer]:
    """A started fake server that accepts only ``api_key``."""
    with FakeOpenAIServer(api_key=api_key, io_timeout_s=10.0) as fake:
        yield fake


@pytest.fixture
def make_provider(
    server: FakeOpenAIServer, api_key: str
) -> Callable[..., OpenAIProvider]:
    """An ``OpenAIProvider`` against ``server``; keyword arguments are options."""

    def make(**options: Any) -> OpenAIProvider:
        values: dict[str, Any] = {"model": "fake-model", "base_url": server.base_url}
        values["max_retries"] = 0
        values.update(options)
        return OpenAIProvider(OpenAIOptions(**values), api_key=SecretStr(api_key))

    return make

