"""Fixtures: astrid stores on real backends, and the loopback fake Chat Completions server.

The Agents SDK's tracing export is switched off for the whole run (it would post traces to the
vendor); every model call goes to ``FakeOpenAIServer`` on 127.0.0.1 through
``OpenAIChatCompletionsModel`` and an ``AsyncOpenAI`` client with a test key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from agents import OpenAIChatCompletionsModel, set_tracing_disabled
from agents_backends import BACKENDS, make_backend
from astrid.default_plugins.sqlite_storage import SqliteBackend
from astrid.security.budget import BudgetConfig
from astrid.store import SessionStore
from astrid.testing.fake_llm import FakeOpenAIServer
from openai import AsyncOpenAI

set_tracing_disabled(True)


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SessionStore]:
    """A store on each of astrid's built-in backends."""
    with SessionStore(make_backend(request.param, tmp_path)) as opened:
        yield opened


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    """Where the SQLite store of a test lives (reopened by some tests)."""
    return tmp_path / "astrid.db"


@pytest.fixture
def open_sqlite(sqlite_path: Path) -> Callable[..., SessionStore]:
    """Open (or reopen) the SQLite store at ``sqlite_path``; budget limits by keyword."""

    def open_store(*, session_max_usd: float = 100.0) -> SessionStore:
        return SessionStore(
            SqliteBackend(sqlite_path),
            budget=BudgetConfig.new(session_max_usd, session_max_usd),
        )

    return open_store


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    """A started fake OpenAI server that accepts only the key ``test``."""
    with FakeOpenAIServer(api_key="test", io_timeout_s=10.0) as fake:
        yield fake


@pytest.fixture
def model(server: FakeOpenAIServer) -> OpenAIChatCompletionsModel:
    """An Agents SDK model talking to the fake server."""
    client = AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0)
    return OpenAIChatCompletionsModel(model="gpt-4.1-mini", openai_client=client)
