"""``AstridSession``: the OpenAI Agents SDK's ``Session`` protocol over astrid's ``SessionStore``.

Each SDK item is one astrid message whose JSON is the item itself (``Message.from_json``): a
plain user or assistant text item reads as astrid text, every other item (function calls and
their outputs, reasoning, item types astrid does not know) is kept verbatim, so ``get_items``
returns what ``add_items`` was given. ``add_items`` is the backend's revision-free append, so
writers in several processes never lose each other's items; ``pop_item`` and
``clear_session`` are revision-checked saves, retried on a concurrent write, that keep the
session's budget and security state.
"""

from __future__ import annotations

import uuid
from typing import Any

from agents.items import TResponseInputItem
from agents.memory.session_settings import (
    SessionSettings,
    coerce_session_settings,
    resolve_session_limit,
)
from astrid.errors import ConcurrencyError, InvalidSessionId, SessionNotFound
from astrid.ids import SessionId
from astrid.messages import Message, MessageRole
from astrid.offload import write_in_thread
from astrid.session import AgentSession
from astrid.store import SessionStore

__all__ = ["SDK_ID_KEY", "AstridSession", "astrid_session_id"]

NAMESPACE = uuid.UUID("5b0e8f9e-6f1c-4d55-9a57-2f0c7e3a9d21")
"""The uuid5 namespace that maps an SDK session id that is not a UUID to an astrid id."""

SDK_ID_KEY = "openai_agents.session_id"
"""The ``metadata.custom`` key holding the SDK's session id."""

TITLE_CHARS = 80
"""A title is the first user text, cut to this many characters."""


def astrid_session_id(session_id: str) -> str:
    """The astrid session id of an SDK session id: the UUID itself when it is one (so an SDK
    run can continue an astrid session), else a uuid5 of it (stable across processes)."""
    try:
        return SessionId.parse(session_id).bare
    except InvalidSessionId:
        return str(uuid.uuid5(NAMESPACE, f"openai-agents:{session_id}"))


def _title(session_id: str, messages: list[Message]) -> str:
    """The first user text of the first batch, else ``openai-agents <sdk id>``."""
    for message in messages:
        text = message.text()
        if message.role == MessageRole.USER and text and text.strip():
            line = " ".join(text.split())
            return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1] + "…"
    return f"openai-agents {session_id}"


class AstridSession:
    """An Agents SDK session stored in an astrid ``SessionStore`` (any backend).

    ``store`` is shared, not owned: closing it is the caller's business. ``title`` overrides the
    title a new session gets; the session shows in ``astrid sessions list/show`` with it.
    """

    session_settings: SessionSettings | None = None

    def __init__(
        self,
        session_id: str,
        store: SessionStore,
        *,
        session_settings: SessionSettings | dict[str, Any] | None = None,
        title: str | None = None,
    ) -> None:
        self.session_id = session_id
        self.store = store
        self.astrid_id = astrid_session_id(session_id)
        self.session_settings = (
            coerce_session_settings(session_settings)
            if session_settings is not None
            else SessionSettings()
        )
        self._title = title

    # -- the Session protocol ----------------------------------------------------------------

    async def get_items(self, limit: int | None = None) -> list[TResponseInputItem]:
        """The latest ``limit`` items (default: the session settings' limit, else all), oldest
        first; as ``SQLiteSession``, a limit of 0 returns none and a negative one all."""
        wanted = resolve_session_limit(limit, self.session_settings)
        if wanted == 0:
            return []
        if wanted is not None and wanted < 0:
            wanted = None
        items: list[TResponseInputItem] | None = await self.store.aload_message_data(
            self.astrid_id, tail=wanted
        )
        return [] if items is None else items

    async def add_items(self, items: list[TResponseInputItem]) -> None:
        """Append ``items`` in one atomic write (creating the astrid session on first use)."""
        if not items:
            return
        messages = [Message.from_json(item) for item in items]
        while True:
            try:
                await write_in_thread(self.store.append_messages, self.astrid_id, messages)
                return
            except SessionNotFound:
                pass
            try:
                await self.store.asave(self.new_astrid_session(messages))
                return
            except ConcurrencyError:
                continue  # another writer created it meanwhile: append to theirs

    async def pop_item(self) -> TResponseInputItem | None:
        """Remove and return the newest item (None when there is none); the removed item stays
        in the session's history (``astrid sessions history``)."""
        while True:
            session = await self.store.aload(self.astrid_id)
            if session is None or not session.messages:
                return None
            last = session.messages.pop()
            try:
                await self.store.asave(session)
            except ConcurrencyError:
                continue
            item: TResponseInputItem = last.to_json()
            return item

    async def clear_session(self) -> None:
        """Drop every item; the astrid session itself (its budget spend, approvals and
        history) is kept, so clearing the conversation does not reset a budget."""
        while True:
            session = await self.store.aload(self.astrid_id)
            if session is None or not session.messages:
                return
            session.clear_messages()
            try:
                await self.store.asave(session)
                return
            except ConcurrencyError:
                continue

    # -- astrid's side -----------------------------------------------------------------------

    def new_astrid_session(self, messages: list[Message]) -> AgentSession:
        """The astrid session a first write creates: titled, with the SDK id in its metadata."""
        session = self.store.new_session(session_id=self.astrid_id)
        session.metadata.title = self._title or _title(self.session_id, messages)
        session.metadata.custom[SDK_ID_KEY] = self.session_id
        session.messages = messages
        return session

    async def astrid_session(self, *, tail: int | None = 0) -> AgentSession:
        """The stored astrid session (its last ``tail`` messages), created empty if missing."""
        while True:
            session = await self.store.aload(self.astrid_id, tail=tail)
            if session is not None:
                return session
            try:
                await self.store.asave(self.new_astrid_session([]))
            except ConcurrencyError:
                continue

    def __repr__(self) -> str:
        return f"AstridSession({self.session_id!r}, astrid_id={self.astrid_id!r})"
