"""astrid as a transcript ``SessionStore`` of the Claude Agent SDK.

``AstridTranscriptStore`` mirrors the SDK's session transcripts into an astrid ``SessionStore``
on any backend (memory, file, SQLite, the PostgreSQL plugin): one store shared by every pod,
listed by ``astrid sessions list``. A library only: it registers nothing with astrid's plugin
manager. See docs/claude-agent-sdk.md.
"""

from __future__ import annotations

from .store import KEY_PREFIX, AstridTranscriptStore, astrid_session_id

__all__ = ["KEY_PREFIX", "AstridTranscriptStore", "astrid_session_id"]
