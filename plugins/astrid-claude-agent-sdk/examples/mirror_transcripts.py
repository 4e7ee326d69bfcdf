"""Mirror Claude Agent SDK transcripts into astrid's SQLite store and read them back with the
SDK's own store helpers (no model call: the transcript is the one a short session writes).

Run: ``python examples/mirror_transcripts.py [DIRECTORY]``. In a real host the store is handed
to the SDK as ``ClaudeAgentOptions(session_store=store)`` and the SDK calls ``append`` itself.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import uuid
from pathlib import Path

from astrid.default_plugins.sqlite_storage import SqliteBackend
from astrid.store import SessionStore
from claude_agent_sdk import (
    ClaudeAgentOptions,
    get_session_messages_from_store,
    list_sessions_from_store,
    project_key_for_directory,
)

from astrid_claude_agent_sdk import AstridTranscriptStore


def transcript(session_id: str, cwd: str) -> list[dict[str, object]]:
    """A user prompt and the assistant's answer, as the SDK's transcript lines."""
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    common = {"sessionId": session_id, "cwd": cwd, "isSidechain": False, "version": "2.1.0"}
    return [
        {
            **common,
            "type": "user",
            "uuid": first,
            "parentUuid": None,
            "timestamp": "2026-12-02T03:00:00.000Z",
            "message": {"role": "user", "content": "List the files in this project"},
        },
        {
            **common,
            "type": "assistant",
            "uuid": second,
            "parentUuid": first,
            "timestamp": "2026-12-02T03:00:02.000Z",
            "message": {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-4-5",
                "content": [{"type": "text", "text": "README.md and src/."}],
            },
        },
    ]


async def main(directory: Path) -> None:
    with SessionStore(SqliteBackend(directory / "astrid.db")) as astrid_store:
        store = AstridTranscriptStore(astrid_store)
        options = ClaudeAgentOptions(cwd=str(directory), session_store=store)
        print("options carry the store:", options.session_store is store)

        session_id = str(uuid.uuid4())
        key = {"project_key": project_key_for_directory(str(directory)), "session_id": session_id}
        await store.append(key, transcript(session_id, str(directory)))  # what the SDK does

        for info in await list_sessions_from_store(store, directory=str(directory)):
            print("session:", info.session_id, "-", info.summary)
        for message in await get_session_messages_from_store(
            store, session_id, directory=str(directory)
        ):
            print(f"{message.type}:", message.message["content"])
        for row in astrid_store.list_sessions():
            print("astrid sessions list:", row.display_title(), f"({row.message_count} messages)")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        asyncio.run(main(Path(sys.argv[1])))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(main(Path(tmp)))
