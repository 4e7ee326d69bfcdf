"""``AstridTranscriptStore``: a Claude Agent SDK ``SessionStore`` over astrid's ``SessionStore``.

Each transcript (a ``SessionKey``: project, session and optional subagent ``subpath``) is one
astrid session with a stable uuid5 id; each entry is one message whose JSON is the entry itself
(kept verbatim: the SDK's entries have no astrid role). Appends are the backend's revision-free
append, so several processes or pods mirroring into one store lose nothing. Two key-value
namespaces index what the SDK lists: the sessions of a project (with their mtime) and the
subpaths of a session. Every call makes one hop to a worker thread (``astrid.offload``).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from astrid.errors import ConcurrencyError, InvalidKey, SessionNotFound
from astrid.ids import SessionId
from astrid.messages import Message
from astrid.offload import read_in_thread, write_in_thread
from astrid.session import AgentSession
from astrid.store import SessionStore
from claude_agent_sdk.types import (
    SessionKey,
    SessionListSubkeysKey,
    SessionStoreEntry,
    SessionStoreListEntry,
    SessionSummaryEntry,
)
from claude_agent_sdk.types import (
    SessionStore as ClaudeSessionStore,
)

__all__ = ["KEY_PREFIX", "AstridTranscriptStore", "astrid_session_id"]

NAMESPACE = uuid.UUID("0c7d4f7a-93b1-4c51-8f0e-1b7d2a6c5e34")
"""The uuid5 namespace of the astrid ids of transcripts."""

KEY_PREFIX = "claude_agent_sdk."
"""Prefix of the ``metadata.custom`` keys (``project_key``, ``session_id``, ``subpath``)."""

TITLE_CHARS = 80


def astrid_session_id(key: SessionKey | SessionListSubkeysKey) -> str:
    """The astrid session id of a transcript key (stable across processes and hosts)."""
    parts = [key["project_key"], key["session_id"], key.get("subpath") or ""]
    return str(uuid.uuid5(NAMESPACE, "claude-agent-sdk:" + json.dumps(parts)))


def _checked(key: SessionKey | SessionListSubkeysKey) -> None:
    """``InvalidKey`` naming the part of a key that is not a non-empty string."""
    for part in ("project_key", "session_id"):
        value = key.get(part)
        if not isinstance(value, str) or not value:
            raise InvalidKey(
                f"claude-agent-sdk session key {key!r}: {part} must be a non-empty string"
            )
    subpath = key.get("subpath")
    if subpath is not None and (not isinstance(subpath, str) or not subpath):
        raise InvalidKey(
            f"claude-agent-sdk session key {key!r}: subpath must be a non-empty string when given"
        )


def _project_namespace(project_key: str) -> str:
    return f"claude-agent-sdk.project:{project_key}"


def _subkeys_namespace(key: SessionKey | SessionListSubkeysKey) -> str:
    return "claude-agent-sdk.subkeys:" + json.dumps([key["project_key"], key["session_id"]])


def _title(key: SessionKey, entries: list[Any]) -> str:
    """A custom title or the first user prompt of the first batch, else the key."""
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        custom = entry.get("customTitle") or entry.get("summary")
        if isinstance(custom, str) and custom.strip():
            return _line(custom)
        message = entry.get("message")
        if entry.get("type") == "user" and isinstance(message, dict):
            content = message.get("content")
            if isinstance(content, str) and content.strip():
                return _line(content)
    where = key["session_id"] + (f" {key['subpath']}" if key.get("subpath") else "")
    return f"claude-agent-sdk {where}"


def _line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1] + "…"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class AstridTranscriptStore(ClaudeSessionStore):
    """Claude Agent SDK transcripts in an astrid store (memory, file, SQLite, PostgreSQL).

    Implements ``append`` and ``load`` and the optional ``list_sessions``,
    ``list_session_summaries``, ``delete`` and ``list_subkeys``. ``store`` is shared, not owned.
    """

    def __init__(self, store: SessionStore) -> None:
        self.store = store

    # -- required ----------------------------------------------------------------------------

    async def append(self, key: SessionKey, entries: list[SessionStoreEntry]) -> None:
        """Append a batch in order, in one atomic write (the session is created on first use)."""
        _checked(key)
        if not entries:
            return
        await write_in_thread(self._append, key, [Message.from_json(e) for e in entries])

    def _append(self, key: SessionKey, messages: list[Message]) -> None:
        sid = astrid_session_id(key)
        while True:
            try:
                self.store.append_messages(sid, messages)
                break
            except SessionNotFound:
                pass
            try:
                self.store.save(self._new_session(key, sid, messages))
                break
            except ConcurrencyError:
                continue  # another writer created it meanwhile: append to theirs
        stamp = json.dumps({"mtime": _now_ms()}).encode()
        subpath = key.get("subpath")
        if subpath is None:
            self.store.kv(_project_namespace(key["project_key"])).set(key["session_id"], stamp)
        else:
            self.store.kv(_subkeys_namespace(key)).set(subpath, stamp)

    def _new_session(self, key: SessionKey, sid: str, messages: list[Message]) -> AgentSession:
        session = self.store.new_session(session_id=sid)
        session.metadata.title = _title(key, [m.to_json() for m in messages])
        custom = session.metadata.custom
        custom[KEY_PREFIX + "project_key"] = key["project_key"]
        custom[KEY_PREFIX + "session_id"] = key["session_id"]
        subpath = key.get("subpath")
        if subpath is not None:
            custom[KEY_PREFIX + "subpath"] = subpath
            session.is_subagent = True
            main: SessionKey = {"project_key": key["project_key"], "session_id": key["session_id"]}
            session.parent_id = SessionId.parse(astrid_session_id(main))
        session.messages = messages
        return session

    async def load(self, key: SessionKey) -> list[SessionStoreEntry] | None:
        """Every entry appended under ``key``, in order; None if it was never written."""
        _checked(key)
        return await read_in_thread(self._load, key)

    def _load(self, key: SessionKey) -> list[SessionStoreEntry] | None:
        entries: list[SessionStoreEntry] | None = self.store.load_message_data(
            astrid_session_id(key)
        )
        return entries

    # -- optional ----------------------------------------------------------------------------

    async def list_sessions(self, project_key: str) -> list[SessionStoreListEntry]:
        """The main transcripts of a project with their last append time (epoch ms)."""
        return await read_in_thread(self._list_sessions, project_key)

    def _list_sessions(self, project_key: str) -> list[SessionStoreListEntry]:
        kv = self.store.kv(_project_namespace(project_key))
        listed: list[SessionStoreListEntry] = []
        for session_id in kv.list_keys():
            raw = kv.get(session_id)
            if raw is not None:
                listed.append({"session_id": session_id, "mtime": int(json.loads(raw)["mtime"])})
        return listed

    async def list_session_summaries(self, project_key: str) -> list[SessionSummaryEntry]:
        """Each main transcript's summary, folded from its stored entries when listed (so no
        sidecar can go stale or race between writers); ``mtime`` as ``list_sessions``."""
        return await read_in_thread(self._list_summaries, project_key)

    def _list_summaries(self, project_key: str) -> list[SessionSummaryEntry]:
        from claude_agent_sdk import fold_session_summary

        summaries: list[SessionSummaryEntry] = []
        for listed in self._list_sessions(project_key):
            key: SessionKey = {"project_key": project_key, "session_id": listed["session_id"]}
            entries = self._load(key)
            if entries is None:
                continue
            summary = fold_session_summary(None, key, entries)
            summary["mtime"] = listed["mtime"]
            summaries.append(summary)
        return summaries

    async def delete(self, key: SessionKey) -> None:
        """Delete a transcript; a main key takes its subagent transcripts with it."""
        _checked(key)
        await write_in_thread(self._delete, key)

    def _delete(self, key: SessionKey) -> None:
        subpath = key.get("subpath")
        subkeys = self.store.kv(_subkeys_namespace(key))
        if subpath is not None:
            self.store.delete(astrid_session_id(key))
            subkeys.delete(subpath)
            return
        for sub in subkeys.list_keys():
            self.store.delete(astrid_session_id({**key, "subpath": sub}))
            subkeys.delete(sub)
        self.store.delete(astrid_session_id(key))
        self.store.kv(_project_namespace(key["project_key"])).delete(key["session_id"])

    async def list_subkeys(self, key: SessionListSubkeysKey) -> list[str]:
        """The subpaths (subagent transcripts) appended under a session."""
        _checked(key)
        return await read_in_thread(self.store.kv(_subkeys_namespace(key)).list_keys)

    def __repr__(self) -> str:
        return f"AstridTranscriptStore(backend={self.store.backend_name!r})"
